"""The serving image, run as a user runs it (scripts/image_smoke.py, what `make image-smoke`
runs): healthy through its own HEALTHCHECK, `vidt eval` through it with the token,
UNAUTHENTICATED without, SIGTERM drains and exits 0. Needs a container engine and the image
(`make image`); skips with the reason otherwise. VIDT_IMAGE, VIDT_IMAGE_ENGINE and
VIDT_IMAGE_RUN_FLAGS choose the image, the engine and extra `run` flags (docs/deploy.md)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("image_smoke", ROOT / "scripts" / "image_smoke.py")
smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke)

ENGINE = os.environ.get("VIDT_IMAGE_ENGINE") or ("podman" if shutil.which("podman") else "docker")
IMAGE = os.environ.get("VIDT_IMAGE", "vidt-serve:cpu")


def _run_flags() -> list[str]:
    """VIDT_IMAGE_RUN_FLAGS, once this machine's engine starts the image with them; else skip."""
    flags = shlex.split(os.environ.get("VIDT_IMAGE_RUN_FLAGS", ""))
    why = smoke.cannot_run(ENGINE, IMAGE, flags)
    if why:
        pytest.skip(f"{ENGINE} cannot start {IMAGE} here ({why}): set VIDT_IMAGE_RUN_FLAGS")
    return flags


def test_the_image_serves_refuses_without_the_token_and_drains():
    why = smoke.engine_usable(ENGINE)
    if why:
        pytest.skip(f"no container engine: {why}")
    if not smoke.image_present(ENGINE, IMAGE):
        pytest.skip(f"no image {IMAGE}: build it with `make image`")
    flags = _run_flags()
    said = []
    smoke.smoke(ENGINE, IMAGE, flags, log=said.append)
    assert [s.split(":")[0] for s in said] == ["ok"] * 4, said


# ---- the Kubernetes manifests (deploy/kubernetes/) and their local play ------------------------
# scripts/fleet_smoke.py (`make image-fleet-smoke`) plays them with `podman kube play`; the
# checks below need no engine: the manifests parse, their serve arguments are `vidt serve`'s,
# HAProxy accepts both configurations (where haproxy is installed, as .ci/run does), and the
# Kubernetes one keeps deploy/haproxy/haproxy.cfg's routing lines.
_fspec = importlib.util.spec_from_file_location("fleet_smoke", ROOT / "scripts" / "fleet_smoke.py")
fleet = importlib.util.module_from_spec(_fspec)
_fspec.loader.exec_module(fleet)
HAPROXY_IMAGE = os.environ.get("VIDT_HAPROXY_IMAGE", "vidt-haproxy:bookworm")


def _manifest(name: str, kind: str, obj: str) -> dict:
    return fleet._one(fleet._docs(name), kind, obj)


def test_the_deployment_serves_the_repository_and_outlives_its_drain():
    from vidt.cli.serve import serve

    spec = _manifest("vidt-serve.yaml", "Deployment", "vidt-serve")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    p = serve.make_context("serve", list(c["args"]), resilient_parsing=True).params
    assert p["model_repo"] is not None and str(p["model_repo"]) == "/models"
    assert p["host"] == "0.0.0.0" and p["auth_token_file"] == "/run/secrets/vidt_token"
    assert spec["terminationGracePeriodSeconds"] > p["grace"]
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > spec["terminationGracePeriodSeconds"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    metrics = {x["name"]: x["containerPort"] for x in c["ports"]}["metrics"]
    assert p["metrics_port"] == metrics
    assert spec["securityContext"]["runAsUser"] == 10001
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"]["readOnly"] and mounts["models"]["mountPath"] == "/models"
    svc = _manifest("vidt-serve.yaml", "Service", "vidt-serve")["spec"]
    assert svc["clusterIP"] == "None"


def _haproxy_lines(cfg: str) -> set[str]:
    return {ln.split("#")[0].strip() for ln in cfg.splitlines()} - {""}


def test_the_kubernetes_haproxy_config_routes_as_the_local_one():
    k8s = _manifest("haproxy.yaml", "ConfigMap", "vidt-haproxy")["data"]["haproxy.cfg"]
    local = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    # The same lines but the servers, addresses and the check's request: on Kubernetes the
    # check's port and HTTP/1 are set for the whole backend (server-template in HAProxy 2.6
    # gives `check-proto` to its first server only).
    same = {ln for ln in _haproxy_lines(local)
            if not ln.startswith(("server ", "bind ", "stats socket", "option httpchk"))}
    k8s_lines = _haproxy_lines(k8s)
    assert same <= k8s_lines, same - k8s_lines
    assert {"option httpchk", "http-check connect port 9090 proto h1",
            "http-check send meth GET uri /ready"} <= k8s_lines
    template = [ln for ln in k8s_lines if ln.startswith("server-template ")]
    assert len(template) == 1 and f"{fleet.SERVICE_NAME}:50051" in template[0]
    assert "resolvers cluster" in template[0] and "proto h2" in template[0]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not on the PATH")
def test_haproxy_accepts_the_kubernetes_config_and_its_local_play(tmp_path):
    import subprocess

    docs = fleet.local_fleet(hosts=["127.0.0.1"], grpc_port=1, metrics_port=2,
                             models=tmp_path, secrets_dir=tmp_path, dns_port=3,
                             proxy="127.0.0.1:4", monitor="127.0.0.1:5")
    local = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["haproxy.cfg"]
    k8s = _manifest("haproxy.yaml", "ConfigMap", "vidt-haproxy")["data"]["haproxy.cfg"]
    for name, cfg in (("k8s", k8s), ("local", local)):
        (tmp_path / f"{name}.cfg").write_text(cfg)
        p = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / f"{name}.cfg")],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (name, p.stdout + p.stderr)
    assert "nameserver local 127.0.0.1:3" in local and "parse-resolv-conf" not in local


def test_the_local_play_is_the_deployment_on_loopback(tmp_path):
    hosts = ["127.9.9.1", "127.9.9.2", "127.9.9.3"]
    docs = fleet.local_fleet(hosts=hosts, grpc_port=41000, metrics_port=41001, models=tmp_path,
                             secrets_dir=tmp_path, dns_port=5353, proxy="127.0.0.1:41002",
                             monitor="127.0.0.1:41003")
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods] == [
        "vidt-serve-1", "vidt-serve-2", "vidt-serve-3", "vidt-haproxy"]
    for pod, host in zip(pods, hosts):
        c = pod["spec"]["containers"][0]
        assert pod["spec"]["hostNetwork"] and f"--host={host}" in c["args"]
        assert "--metrics-port=41001" in c["args"] and "--model-repo=/models" in c["args"]
        assert {"name": "VIDT_PORT", "value": "41000"} in c["env"]
        paths = {v["name"]: v.get("hostPath", {}).get("path") for v in pod["spec"]["volumes"]}
        assert paths["models"] == str(tmp_path) and paths["token"] == str(tmp_path)


def test_the_dns_stand_in_answers_the_services_name():
    import socket
    import struct

    dns = fleet.DnsStandIn(fleet.SERVICE_NAME, ["127.9.9.1", "127.9.9.2"])
    dns.start()
    try:
        def ask(name: str) -> bytes:
            q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"".join(
                bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(q, ("127.0.0.1", dns.port))
                return s.recv(4096)

        r = ask(fleet.SERVICE_NAME)
        qid, flags, _, answers = struct.unpack(">HHHH", r[:8])
        assert (qid, flags & 0xF, answers) == (7, 0, 2)
        assert socket.inet_aton("127.9.9.1") in r and socket.inet_aton("127.9.9.2") in r
        assert struct.unpack(">HHHH", ask("other.example")[:8])[1] & 0xF == 3  # NXDOMAIN
    finally:
        dns.stop()


def test_run_flags_become_a_containers_conf():
    conf = fleet.containers_conf(["--runtime", "runc", "--ulimit", "nofile=20000:20000",
                                  "--ulimit=nproc=32768:32768"])
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' in conf
    assert 'runtime = "runc"' in conf
    with pytest.raises(fleet.Failed, match="--network"):
        fleet.containers_conf(["--network", "host"])


def test_the_fleet_plays_promotes_and_drains():
    """scripts/fleet_smoke.py: skips without podman, the two images, or run flags this
    machine's engine accepts (VIDT_IMAGE_RUN_FLAGS, also given to kube play)."""
    why = smoke.engine_usable(ENGINE) or fleet.cannot_play(ENGINE)
    if why:
        pytest.skip(f"no engine with kube play: {why}")
    for img, make in ((IMAGE, "make image"), (HAPROXY_IMAGE, "make image-haproxy")):
        if not smoke.image_present(ENGINE, img):
            pytest.skip(f"no image {img}: build it with `{make}`")
    flags = _run_flags()
    said = []
    figures = fleet.smoke(ENGINE, IMAGE, HAPROXY_IMAGE, flags, log=said.append)
    assert [s.split(":")[0] for s in said] == ["ok"] * 7, said
    assert figures["switch"] < 10
