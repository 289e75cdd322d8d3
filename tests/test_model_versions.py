"""Several model versions in one real gRPC server (on each transport), from a real model
repository: every session runs its whole episode on the version it began on, new sessions go
where the pointer says (or to the canary for a share of route keys), older versions load on
resume or pin and leave when their last session ends, and a file that cannot serve is refused
while serving goes on."""

from __future__ import annotations

import logging
import random
import re
import time
import urllib.request

import grpc
import numpy as np
import pytest
import serving_util
from serving_util import episode, make_policy_onnx, running_server

from vidt.serving.client import ROUTE_KEY, PolicyClient, ServerError
from vidt.serving.repository import ModelRepository
from vidt.serving.runtime import OnnxPolicy
from vidt.serving.server import ServerConfig
from vidt.serving.sessions import route_fraction
from vidt.v1 import policy_pb2 as pb
from vidt.v1 import policy_pb2_grpc as pb_grpc

C = grpc.StatusCode
FAST = dict(model_poll_s=0.05, unload_after_s=0.2)  # a test need not wait seconds


@pytest.fixture(scope="module", autouse=True, params=ServerConfig.TRANSPORTS)
def transport(request):
    serving_util.TRANSPORT["name"] = request.param
    yield request.param
    serving_util.TRANSPORT["name"] = "threads"


@pytest.fixture
def repo(tmp_path):
    """v1 current; v2 (other weights) and v3 in the directory, not yet named."""
    for i in (1, 2, 3):
        make_policy_onnx(tmp_path / f"v{i}.onnx", seed=i, env_id="vidt/Tiny-v0")
    r = ModelRepository(tmp_path)
    r.promote("v1.onnx")
    return r


def version(repo, name: str) -> str:
    return repo.resolve(name).version


def policy(repo, name: str) -> OnnxPolicy:
    return OnnxPolicy(repo.root / name, provider="cpu", intra_op_threads=1)


def local(repo, name: str, obs, rew) -> np.ndarray:
    """What a server on one version answers for this episode."""
    p = policy(repo, name)
    p.reset()
    return np.stack([p.act(o, r if t else 0.0) for t, (o, r) in enumerate(zip(obs, rew))])


def steps(session, obs, rew, start: int = 0, stop: int | None = None) -> np.ndarray:
    return np.stack([session.act(obs[t], rew[t] if t else 0.0)
                     for t in range(start, len(obs) if stop is None else stop)])


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_promotion_sends_new_sessions_to_the_new_version_and_old_ones_finish(repo):
    v1, v2 = version(repo, "v1.onnx"), version(repo, "v2.onnx")
    obs, rew = episode(n=9)
    with running_server(policy(repo, "v1.onnx"), repo=repo, follow_pointer=True, **FAST) as srv, \
            PolicyClient(srv.address) as c:
        old = c.session()
        assert old.model_version == v1
        first = steps(old, obs, rew, stop=4)
        repo.promote("v2.onnx")
        srv.reread()  # SIGHUP's effect (vidt serve wires the signal to it)
        wait_for(lambda: c.info(refresh=True).model_version == v2, "the promotion")
        assert sorted(c.info().loaded_versions) == sorted([v1, v2])
        new = c.session()
        assert new.model_version == v2
        rest = steps(old, obs, rew, start=4)  # the old episode goes on, on v1
        np.testing.assert_array_equal(np.concatenate([first, rest]),
                                      local(repo, "v1.onnx", obs, rew))
        np.testing.assert_array_equal(steps(new, obs, rew), local(repo, "v2.onnx", obs, rew))
        assert not np.allclose(local(repo, "v1.onnx", obs, rew), local(repo, "v2.onnx", obs, rew))
        old.close()
        # v1's last session ended: it leaves memory.
        wait_for(lambda: list(c.info(refresh=True).loaded_versions) == [v2], "v1's unload")
        new.close()


def test_an_episode_begun_on_an_older_version_resumes_from_the_repository(repo):
    v1 = version(repo, "v1.onnx")
    obs, rew = episode(n=9)
    repo.promote("v2.onnx")
    with running_server(policy(repo, "v1.onnx"), **FAST) as a, \
            running_server(policy(repo, "v2.onnx"), repo=repo, follow_pointer=True,
                           **FAST) as b, \
            PolicyClient(a.address) as ca, PolicyClient(b.address) as cb:
        s = ca.session()
        first = steps(s, obs, rew, stop=5)
        # Its server is gone: the episode goes on at b, whose current version is v2.
        s.client = cb
        s.resume()
        assert s.model_version == v1
        rest = steps(s, obs, rew, start=5)
        np.testing.assert_array_equal(np.concatenate([first, rest]),
                                      local(repo, "v1.onnx", obs, rew))
        assert v1 in cb.info(refresh=True).loaded_versions
        s.close()


def test_a_pinned_session_loads_its_version_and_an_unknown_one_is_refused(repo):
    v3 = version(repo, "v3.onnx")
    obs, rew = episode(n=5)
    with running_server(policy(repo, "v1.onnx"), repo=repo, follow_pointer=True, **FAST) as srv, \
            PolicyClient(srv.address, retries=0) as c:
        s = c.session(model_version=v3)
        assert s.model_version == v3
        np.testing.assert_array_equal(steps(s, obs, rew), local(repo, "v3.onnx", obs, rew))
        before = srv.store.created_total
        with pytest.raises(ServerError, match="'0123456789abcdef' is neither held by this "
                                              "server nor in its model repository") as e:
            c.session(model_version="0123456789abcdef")
        assert e.value.code == C.FAILED_PRECONDITION
        assert srv.store.created_total == before  # nothing created


def test_versions_beyond_the_bound_are_refused_never_evicted(repo):
    v2, v3 = version(repo, "v2.onnx"), version(repo, "v3.onnx")
    with running_server(policy(repo, "v1.onnx"), repo=repo, follow_pointer=True, max_versions=2,
                        **FAST) as srv, PolicyClient(srv.address, retries=0) as c:
        on_v2 = c.session(model_version=v2)
        with pytest.raises(ServerError, match="--max-versions 2") as e:
            c.session(model_version=v3)
        assert e.value.code == C.RESOURCE_EXHAUSTED
        assert v2 in c.info(refresh=True).loaded_versions  # in use: kept
        on_v2.close()
        assert c.session(model_version=v3).model_version == v3  # the idle v2 made room


def test_a_batch_across_versions_runs_each_on_its_own(repo):
    v2 = version(repo, "v2.onnx")
    obs, rew = episode(n=6)
    with running_server(policy(repo, "v1.onnx"), repo=repo, follow_pointer=True, **FAST) as srv, \
            PolicyClient(srv.address) as c:
        a, b = c.session(), c.session(model_version=v2)
        stub = pb_grpc.PolicyServiceStub(c.channel)
        got = []
        for t in range(len(obs)):
            reqs = [pb.ActRequest(session_id=s.id, step=t, observation=obs[t].tolist(),
                                  reward=float(rew[t]) if t else 0.0) for s in (a, b)]
            got.append([r.action for r in stub.ActBatch(
                pb.ActBatchRequest(requests=reqs), metadata=c.metadata).responses])
        got = np.asarray(got, np.float32)  # (T, 2, A)
        np.testing.assert_array_equal(got[:, 0], local(repo, "v1.onnx", obs, rew))
        np.testing.assert_array_equal(got[:, 1], local(repo, "v2.onnx", obs, rew))


def test_a_canary_takes_its_share_of_route_keys_and_each_key_stays_on_one_side(repo):
    v1, v2 = version(repo, "v1.onnx"), version(repo, "v2.onnx")
    repo.set_canary("v2.onnx", 0.2)
    with running_server(policy(repo, "v1.onnx"), repo=repo, follow_pointer=True,
                        max_sessions=2000, **FAST) as srv, \
            grpc.insecure_channel(srv.address) as channel:
        info = pb_grpc.PolicyServiceStub(channel).GetPolicyInfo(pb.GetPolicyInfoRequest())
        assert (info.model_version, info.canary_version) == (v1, v2)
        assert info.canary_fraction == pytest.approx(0.2)
        create = pb_grpc.PolicyServiceStub(channel).CreateSession
        # 200 robots with keys like PolicyClient's own default (64 random bits, in hex), 5
        # episodes each. A share over 200 keys spreads as a binomial's (sd 0.028 at 0.2):
        # test_route_keys_split_as_fair_coins checks that spread over many key sets.
        rng = random.Random(0)
        keys = [f"{rng.getrandbits(64):016x}" for _ in range(200)]
        sides: dict[str, set[str]] = {}
        for i in range(1000):
            key = keys[i % 200]
            r = create(pb.CreateSessionRequest(), metadata=((ROUTE_KEY, key),))
            sides.setdefault(key, set()).add(r.model_version)
        assert all(len(s) == 1 for s in sides.values())  # no robot flips between versions
        share = sum(s == {v2} for s in sides.values()) / len(sides)
        assert abs(share - 0.2) <= 0.05, share


def test_route_keys_split_as_fair_coins():
    """Over 1,000 sets of 200 keys, the canary's share at 0.2 has the mean and spread of 200
    fair draws: no key set is favoured, and a fleet of N robots sees a share within about
    2 * sqrt(0.16 / N) of the fraction asked."""
    shares = []
    for seed in range(1000):
        rng = random.Random(seed + 1)
        shares.append(np.mean([route_fraction(f"{rng.getrandbits(64):016x}") < 0.2
                               for _ in range(200)]))
    assert abs(np.mean(shares) - 0.2) < 0.003
    assert np.std(shares) == pytest.approx(np.sqrt(0.2 * 0.8 / 200), rel=0.1)


def _refusals(srv) -> float:
    port = srv.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(
        r'^vidt_model_events_total\{event="refused"[^}]*\} (\S+)$', text, re.M))


@pytest.mark.parametrize("bad", ["corrupt", "other env", "missing file"])
def test_a_pointer_to_something_that_cannot_serve_is_refused_and_serving_goes_on(
        repo, bad, caplog):
    v1 = version(repo, "v1.onnx")
    obs, rew = episode(n=4)
    pointer = repo.root / "pointer.toml"
    with running_server(policy(repo, "v1.onnx"), repo=repo, follow_pointer=True, metrics_port=0,
                        **FAST) as srv, PolicyClient(srv.address) as c:
        s = c.session()
        steps(s, obs, rew, stop=2)
        if bad == "corrupt":
            data = bytearray((repo.root / "v2.onnx").read_bytes())
            data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
            (repo.root / "bad.onnx").write_bytes(bytes(data))
        elif bad == "other env":
            make_policy_onnx(repo.root / "bad.onnx", seed=5, env_id="Hopper-v5")
        with caplog.at_level(logging.ERROR, logger="vidt.serving"):
            pointer.write_text(f'current = "bad.onnx"\nprevious = "{v1}"\n')
            srv.reread()
            wait_for(lambda: _refusals(srv) >= 1, "the refusal")
            time.sleep(0.3)  # several more polls of the same pointer
        assert _refusals(srv) == 1  # counted once, however often it is reread
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "\n" not in errors[0].getMessage()
        assert c.info(refresh=True).model_version == v1  # still serving what it had
        steps(s, obs, rew, start=2)  # the open episode goes on
        assert c.session().model_version == v1


def test_per_version_metrics(repo):
    v1, v2 = version(repo, "v1.onnx"), version(repo, "v2.onnx")
    obs, rew = episode(n=3)
    with running_server(policy(repo, "v1.onnx"), repo=repo, follow_pointer=True, metrics_port=0,
                        **FAST) as srv, PolicyClient(srv.address) as c:
        s = c.session(model_version=v2)
        steps(s, obs, rew)
        c.session()
        s.close()
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics",
                                      timeout=5).read().decode()
    assert f'vidt_version_sessions{{role="current",version="{v1}"}} 1.0' in text
    assert f'vidt_version_steps_total{{version="{v2}"}} 3.0' in text
    assert f'vidt_episode_return_count{{version="{v2}"}} 1.0' in text
    assert f'vidt_model_events_total{{event="loaded",version="{v2}"}} 1.0' in text
