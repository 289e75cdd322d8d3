"""Security properties of the server: loopback by default, bearer tokens compared in constant
time and never logged, TLS (with certificates made here), and no unpickling of files anywhere
in the project. Extends tests/test_serving_server.py's auth and TLS tests."""

from __future__ import annotations

import inspect
import ipaddress
import logging
import re
import signal
import urllib.request
from pathlib import Path

import grpc
import pytest
from reliability_util import ServeProcess, episode, replay, wait_until
from serving_util import health_status, running_server, self_signed_cert

from vidt.errors import ConfigError
from vidt.serving import server as server_mod
from vidt.serving.client import PolicyClient, ServerError
from vidt.serving.server import PolicyServer, ServerConfig
from vidt.v1 import policy_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-Zq81-very-secret-value"


def listening_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp{,6}."""
    out = []
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) != port or state != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            out.append(getattr(ip, "ipv4_mapped", None) or ip)
    return out


def test_defaults_bind_loopback_only(policy):
    from vidt.cli.serve import serve

    assert ServerConfig().host == "127.0.0.1"
    assert next(p for p in serve.params if p.name == "host").default == "127.0.0.1"
    with running_server(policy, metrics_port=0) as srv:
        addrs = listening_addresses(srv.port) + listening_addresses(srv.metrics_port)
        assert len(addrs) >= 2
        assert all(a.is_loopback for a in addrs), addrs  # never 0.0.0.0 or ::


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "10.1.2.3", "192.168.0.7",
                                  "example.org"])
def test_beyond_loopback_needs_tls_a_token_or_insecure(host):
    with pytest.raises(ConfigError, match="beyond loopback"):
        ServerConfig(host=host)
    ServerConfig(host=host, auth_token="t")
    ServerConfig(host=host, insecure=True)
    ServerConfig(host=host, tls_cert="c.pem", tls_key="k.pem")  # files are read at bind
    for loopback in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        ServerConfig(host=loopback)


def test_token_comparison_is_constant_time():
    source = inspect.getsource(server_mod.BearerAuth)
    assert "hmac.compare_digest(" in source
    # The expected value is used only through compare_digest: no ==, startswith, `in`.
    uses = [line.strip() for line in source.splitlines() if "_expected" in line]
    assert all("compare_digest" in u or u.startswith("self._expected =") for u in uses), uses


@pytest.fixture(scope="module")
def auth_server(policy):
    with running_server(policy, auth_token=TOKEN, metrics_port=0) as srv:
        yield srv


WRONG = [None, "", "x", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f" {TOKEN}", f"{TOKEN} "]


@pytest.mark.parametrize("token", WRONG, ids=[repr(t) for t in WRONG])
def test_every_method_refuses_a_wrong_token_and_creates_nothing(auth_server, token):
    created = auth_server.store.created_total
    with PolicyClient(auth_server.address, token=token, retries=0) as c:
        calls = [("GetPolicyInfo", pb.GetPolicyInfoRequest()),
                 ("CreateSession", pb.CreateSessionRequest()),
                 ("Act", pb.ActRequest(session_id="x", observation=[0.0] * 3)),
                 ("ActBatch", pb.ActBatchRequest(requests=[pb.ActRequest(session_id="x")])),
                 ("CloseSession", pb.CloseSessionRequest(session_id="x"))]
        for method, req in calls:
            with pytest.raises(ServerError) as e:
                c.call(method, req, retry=False)
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED, method
            assert TOKEN not in e.value.details
        with pytest.raises(grpc.RpcError) as e2:
            list(c.stub.ActStream(iter([pb.ActRequest(session_id="x")]), timeout=5,
                                  metadata=c.metadata))
        assert e2.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert auth_server.store.created_total == created


@pytest.mark.parametrize("header", [f"bearer {TOKEN}", TOKEN, f"Basic {TOKEN}",
                                    f"Bearer  {TOKEN}", f"Bearer {TOKEN}x"])
def test_only_the_exact_bearer_header_passes(auth_server, header):
    from vidt.v1.policy_pb2_grpc import PolicyServiceStub

    with grpc.insecure_channel(auth_server.address) as ch:
        stub = PolicyServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetPolicyInfo(pb.GetPolicyInfoRequest(), timeout=5,
                               metadata=(("authorization", header),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_needs_the_token_health_does_not(auth_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    assert health_status(auth_server.address) == "SERVING"
    with grpc.insecure_channel(auth_server.address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ProtoReflectionDescriptorDatabase(ch).get_services()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_never_in_logs_or_metrics_in_process(tiny_model):
    """Every log record of every logger, at DEBUG, from loading the model to stopping the
    server, while clients fail and succeed and sessions and streams expire: no token. (A
    wrong token that contains the real one, TOKEN + 'x', would leak it if logged.)"""
    from vidt.serving.runtime import OnnxPolicy

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))
            if record.exc_info:
                records.append(logging.Formatter().formatException(record.exc_info))

    handler, root = Keep(level=logging.DEBUG), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        policy = OnnxPolicy(tiny_model, provider="cpu", intra_op_threads=1)
        with running_server(policy, auth_token=TOKEN, idle_timeout_s=0.3,
                            metrics_port=0) as srv:
            for token in WRONG:
                with PolicyClient(srv.address, token=token, retries=0) as c:
                    with pytest.raises(ServerError):
                        c.info()
            obs, rew = episode(2)
            with PolicyClient(srv.address, token=TOKEN) as c:
                with c.session() as s:
                    got = [s.act(obs[t], rew[t]) for t in range(3)]
                    with pytest.raises(ServerError):
                        s.act([float("nan")] * 3)  # refused with a good token
                c.session().act(obs[0])  # left to expire: the sweeper logs it
                held = c.stream()  # left open and idle: the server ends it and logs it
                held.act(obs[0])
                assert wait_until(lambda: any("stream(s) idle" in r for r in records), 10)
            text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics",
                                          timeout=5).read().decode()
        assert abs(got[-1] - replay(policy, 2, 3)[-1]).max() < 1e-5
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert any("idle session(s)" in r for r in records), records
    assert not [r for r in records if TOKEN in r]
    assert TOKEN not in text and "UNAUTHENTICATED" in text
    assert TOKEN not in repr(srv.config) and TOKEN not in repr(c)


def test_token_never_in_the_log_of_vidt_serve(tiny_model, tmp_path):
    """The real command with grpc's own logging at debug verbosity, failures and successes."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    import os

    os.environ["GRPC_VERBOSITY"] = "debug"  # inherited by the server process only
    try:
        srv = ServeProcess(tiny_model, tmp_path, "--auth-token-file", str(token_file))
    finally:
        del os.environ["GRPC_VERBOSITY"]
    with srv:
        srv.wait_serving()
        for token in WRONG:
            with PolicyClient(srv.address, token=token, retries=0) as c:
                with pytest.raises(ServerError):
                    c.session()
        with PolicyClient(srv.address, token=TOKEN) as c, c.session() as s:
            s.act([0.1, 0.2, 0.3])
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        log = srv.log()
    assert "serving tiny-test-actor" in log and "auth=token" in log
    assert TOKEN not in log


def test_tls_with_token_and_a_wrong_ca(policy, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    made, other = self_signed_cert(tmp_path / "a"), self_signed_cert(tmp_path / "b")
    if made is None or other is None:
        pytest.skip("no `cryptography` package or `openssl` command to make certificates")
    cert, key = made
    with running_server(policy, tls_cert=str(cert), tls_key=str(key), auth_token=TOKEN) as srv:
        address = f"localhost:{srv.port}"
        with PolicyClient(address, tls=other[0], retries=0) as c:  # a CA that did not sign it
            with pytest.raises(ServerError) as e:
                c.info()
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
        with PolicyClient(address, tls=cert, retries=0) as c:  # right CA, no token
            with pytest.raises(ServerError) as e:
                c.info()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with PolicyClient(address, tls=cert, token=TOKEN) as c, c.session() as s:
            assert s.act([0.0, 0.0, 0.0]).shape == (2,)


def test_bad_tls_files_fail_clearly(policy, tmp_path):
    made = self_signed_cert(tmp_path)
    if made is None:
        pytest.skip("no `cryptography` package or `openssl` command to make certificates")
    cert, key = made
    (tmp_path / "junk.pem").write_text("not a pem\n")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        PolicyServer(policy, ServerConfig(port=0, tls_cert=str(tmp_path / "junk.pem"),
                                          tls_key=str(key)))
    with pytest.raises(ConfigError, match="not a PEM private key"):
        PolicyServer(policy, ServerConfig(port=0, tls_cert=str(cert), tls_key=str(cert)))
    with pytest.raises(ConfigError, match="cannot read the TLS files"):
        PolicyServer(policy, ServerConfig(port=0, tls_cert=str(cert),
                                          tls_key=str(tmp_path / "missing.key")))


# ---- no unpickling of files, anywhere ------------------------------------------------------------

UNSAFE = [
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"\b(cloudpickle|dill|joblib)\.loads?\("), "a pickle-based loader"),
    (re.compile(r"\bnp\.load\([^)]*allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"\byaml\.load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
    (re.compile(r"\bpd\.read_pickle\("), "pandas.read_pickle"),
]


def _sources():
    skip = {".venv", ".git", "build", "dist", "node_modules", "__pycache__", ".hypothesis"}
    for path in sorted(ROOT.rglob("*.py")):
        if skip.isdisjoint(path.relative_to(ROOT).parts) and path != Path(__file__).resolve():
            yield path


def test_no_pickle_of_files_anywhere():
    """torch.load only with weights_only=True; no pickle, allow_pickle, unsafe yaml."""
    found = []
    n = 0
    for path in _sources():
        text = path.read_text(errors="replace")
        n += 1
        for rx, what in UNSAFE:
            found += [f"{path.relative_to(ROOT)}: {what}" for _ in rx.finditer(text)]
        for m in re.finditer(r"\btorch\.load\(", text):
            call = text[m.end():m.end() + 400]
            depth, args = 1, ""
            for ch in call:  # the call's arguments, up to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0:
                    break
                args += ch
            if not re.search(r"weights_only\s*=\s*True", args):
                found.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
    assert n > 30, f"only {n} source files found under {ROOT}"
    assert not found, found
