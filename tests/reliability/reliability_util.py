"""Shared by the reliability tests: the request fuzzer's strategies, the contract as an oracle
(what status each request must get), and one interface over the two ways to reach the server
(the plain-Python SessionStore and the real gRPC server). Not a test module.

A fuzz case is a world of a few sessions, each at a known step of a known episode, plus one
request (or batch, or stream) drawn from the strategies below. The oracle predicts the status
from the contract alone; the test compares, then checks that the sessions a refused request
named did not move and that an untouched canary session still acts as a local replay says.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import serving_util
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from serving_util import Clock, free_port

__all__ = ["Clock", "free_port"]  # re-exported for the reliability tests

F32_MAX = float(np.finfo(np.float32).max)
S, A, K, EVAL_LEN, T = 3, 2, 4, 3, 8  # the tiny test model's sizes; episodes of T steps
IDLE_S = 60.0
KINDS = ("victim", "unknown", "closed", "expired", "empty", "long", "text")


def episode(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed-th fixed episode of these tests: observations (T, S) float32, rewards (T,)."""
    return serving_util.episode(T, S, 1000 + seed)


def replay(policy, seed: int, steps: int, target_return: float | None = None) -> np.ndarray:
    """Actions (steps, A) of `episode(seed)` through one local ContextWindow and
    `policy.predict`: what a server must answer for the same inputs."""
    obs, rew = episode(seed)
    w = policy.new_window(target_return)
    out = []
    for t in range(steps):
        a = policy.predict(w.observe(obs[t], rew[t]))[0]
        w.record_action(a)
        out.append(a)
    return np.stack(out) if out else np.zeros((0, A), np.float32)


def fuzz(n: int) -> settings:
    """n cases, the same ones on every run (derandomized: a CI failure reproduces), no
    per-case deadline (shared CI cores stall), no example database written into the repo."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- strategies ---------------------------------------------------------------------------

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
extreme = st.sampled_from([F32_MAX, -F32_MAX, 3.0e38, -3.0e38, 1e38, 1e-45, -1e-45, 0.0, -0.0,
                           3.5e38, -3.5e38, 1e300])  # the last three overflow float32
nonfinite = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def bad_observations(draw):
    """An explicit list of floats: odd values, or a wrong length."""
    kind = draw(st.sampled_from(["finite", "extreme", "nonfinite", "length", "length"]))
    if kind == "finite":
        return draw(st.lists(finite32, min_size=S, max_size=S))
    if kind == "extreme":
        return draw(st.lists(st.one_of(extreme, finite32), min_size=S, max_size=S))
    if kind == "nonfinite":
        values = draw(st.lists(st.one_of(finite32, extreme), min_size=S, max_size=S))
        values[draw(st.integers(0, S - 1))] = draw(nonfinite)
        return values
    n = draw(st.one_of(st.sampled_from([0, S - 1, S + 1, 2 * S, 40_000]),
                       st.integers(0, 64)).filter(lambda n: n != S))
    return [0.5] * n  # 40,000 floats: over the gRPC message limit of the tiny model


bad_rewards = st.one_of(st.floats(), extreme, nonfinite)


@st.composite
def bad_steps(draw):
    """Offsets from the step the session expects next, or absolute indexes."""
    return draw(st.one_of(
        st.sampled_from([("rel", -1), ("rel", 1), ("rel", -2), ("rel", 2)]),
        st.tuples(st.just("abs"), st.sampled_from([0, 2**32, 2**63, 2**64 - 1])),
        st.tuples(st.just("abs"), st.integers(0, 2**64 - 1))))


@st.composite
def bad_targets(draw):
    """A session id other than a live session's: one of KINDS[1:], with its argument."""
    kind = draw(st.sampled_from(KINDS[1:]))
    if kind == "long":
        return kind, draw(st.sampled_from([65, 1000, 9000, 20_000, 200_000]))
    if kind == "text":
        return kind, draw(st.text(max_size=40))
    return kind, None


@dataclass
class Req:
    target: tuple  # ('victim', None) or a bad target
    victim: int  # which victim session, when target is ('victim', _)
    step: tuple  # ('rel', offset from the expected step) or ('abs', index)
    obs: list | None  # None: the episode's observation for that step
    reward: float | None  # None: the episode's reward for that step
    focus: str = ""  # the field drawn to be odd (the case's category)


FIELDS = ("none", "observation", "reward", "step", "session id")


@st.composite
def one_request(draw, victims: int):
    """Mostly valid, with one field (sometimes two) drawn odd; 'none' is a valid step."""
    odd = {draw(st.sampled_from(FIELDS))}
    if draw(st.integers(0, 4)) == 0:
        odd.add(draw(st.sampled_from(FIELDS[1:])))
    odd.discard("none") if len(odd) > 1 else None
    return Req(
        target=draw(bad_targets()) if "session id" in odd else ("victim", None),
        victim=draw(st.integers(0, victims - 1)),
        step=draw(bad_steps()) if "step" in odd else ("rel", 0),
        obs=draw(bad_observations()) if "observation" in odd else None,
        reward=draw(bad_rewards) if "reward" in odd else None,
        focus="+".join(sorted(odd)))


def requests(victims: int):
    return one_request(victims)


target_returns = st.one_of(st.none(), st.floats(), extreme, nonfinite)


# ---- the world of one case ------------------------------------------------------------------

@dataclass
class Victim:
    id: str
    seed: int
    k: int  # steps answered so far along episode(seed)
    moved: bool = False  # took a step the episode does not have: no replay to compare with


@dataclass
class World:
    victims: list[Victim]
    ids: dict  # kind -> id for 'closed', 'expired', 'unknown'
    canary: Victim | None = None
    extra: list = field(default_factory=list)


def concrete(world: World, r: Req) -> tuple[str, int, list[float], float, Victim | None]:
    """(session_id, step, observation, reward, victim or None) of a drawn request."""
    kind, arg = r.target
    v = world.victims[r.victim] if kind == "victim" else None
    if kind == "victim":
        sid = v.id
    elif kind == "empty":
        sid = ""
    elif kind == "long":
        sid = "s" * arg
    elif kind == "text":
        sid = arg
    else:
        sid = world.ids[kind]
    base = v.k if v is not None else 0
    how, n = r.step
    step = max(0, base + n) if how == "rel" else n
    obs_seed_step = min(step, T - 1) if v is None else min(max(step, 0), T - 1)
    seed = v.seed if v is not None else 0
    eobs, erew = episode(seed)
    obs = eobs[obs_seed_step].tolist() if r.obs is None else r.obs
    reward = float(erew[obs_seed_step]) if r.reward is None else r.reward
    return sid, step, obs, reward, v


def validation_error(obs, reward) -> bool:
    """The checks that need no session: length, float32-finite values, finite reward."""
    if len(obs) != S:
        return True
    o = np.asarray(obs, dtype=np.float64)
    with np.errstate(over="ignore"):
        if not np.isfinite(o.astype(np.float32)).all():
            return True
    return not math.isfinite(reward)


def expect_one(world: World, r: Req, policy) -> tuple[str, object]:
    """The contract's answer to one request in `world` (ignoring message size):
    ('INVALID_ARGUMENT'|'NOT_FOUND'|'FAILED_PRECONDITION', message part) or ('OK', detail) with
    detail 'stored' (the answer already given), 'replay' (equals the episode's replay),
    'new' (a step with inputs outside the episode: finite and in bounds, or refused as
    INVALID_ARGUMENT when the actor's output is not finite)."""
    sid, step, obs, reward, v = concrete(world, r)
    if validation_error(obs, reward):
        return "INVALID_ARGUMENT", None
    return expect_lookup(world, r, sid, step, obs, reward, v)


def expect_lookup(world, r, sid, step, obs, reward, v):
    kind = r.target[0]
    if v is None:
        why = {"closed": "was closed", "expired": "expired"}.get(kind, "unknown session")
        return "NOT_FOUND", why
    if v.k > 0 and step == v.k - 1:
        return "OK", "stored"
    if step != v.k:
        return "FAILED_PRECONDITION", f"expected step {v.k}"
    if v.k > 0 and not abs(world_rtg(v) - reward) <= F32_MAX:
        return "INVALID_ARGUMENT", "return-to-go"
    eobs, erew = episode(v.seed)
    same = (not v.moved and v.k < T and np.array_equal(np.float32(obs), eobs[v.k])
            and (v.k == 0 or reward == erew[v.k]))
    return "OK", "replay" if same else "new"


def world_rtg(v: Victim) -> float:
    _, erew = episode(v.seed)
    return 10.0 - float(erew[1:v.k].sum())


def expect_batch(world: World, reqs: list[Req]) -> tuple[str, object]:
    """ActBatch: validation of every index, then duplicates, then per index in order."""
    if not reqs:
        return "INVALID_ARGUMENT", "empty batch"
    cs = [concrete(world, r) for r in reqs]
    for i, (_sid, _step, obs, reward, _v) in enumerate(cs):
        if validation_error(obs, reward):
            return "INVALID_ARGUMENT", f"requests[{i}]"
    seen = {}
    for i, c in enumerate(cs):
        if c[0] in seen:
            return "INVALID_ARGUMENT", f"requests[{i}]"
        seen[c[0]] = i
    details = []
    for i, (r, (sid, step, obs, reward, v)) in enumerate(zip(reqs, cs)):
        code, d = expect_lookup(world, r, sid, step, obs, reward, v)
        if code != "OK":
            return code, f"requests[{i}]"
        details.append(d)
    return "OK", details


# ---- two ways to reach the server ---------------------------------------------------------------

class CoreTarget:
    """SessionStore in this process: ServingError.code is the status."""

    def __init__(self, store):
        from vidt.serving import sessions

        self.store, self.sessions = store, sessions

    def create(self, target_return=None):
        try:
            return "OK", self.store.create(target_return).session_id
        except self.sessions.ServingError as e:
            return e.code, str(e)

    def act(self, sid, step, obs, reward):
        try:
            r = self.store.act(self.sessions.StepRequest(sid, step, obs, reward))
            return "OK", [(r.step, np.asarray(r.action), r.return_to_go)]
        except self.sessions.ServingError as e:
            return e.code, str(e)

    def act_batch(self, items):
        try:
            rs = self.store.act_batch([self.sessions.StepRequest(*it) for it in items])
            return "OK", [(r.step, np.asarray(r.action), r.return_to_go) for r in rs]
        except self.sessions.ServingError as e:
            return e.code, str(e)

    def close(self, sid):
        try:
            self.store.close(sid)
            return "OK", None
        except self.sessions.ServingError as e:
            return e.code, str(e)

    def alive(self) -> bool:
        return True

    def size_ok(self, items) -> bool:
        return True


class GrpcTarget:
    """The real server over one loopback channel, raw protobuf requests, no client retries."""

    def __init__(self, address: str, recv_limit: int):
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from vidt.v1 import policy_pb2 as pb
        from vidt.v1 import policy_pb2_grpc as pb_grpc

        self.grpc, self.pb, self.recv_limit = grpc, pb, recv_limit
        self.health_pb2 = health_pb2
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.PolicyServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def _call(self, fn, req):
        try:
            return "OK", fn(req, timeout=10)
        except self.grpc.RpcError as e:
            return e.code().name, e.details() or ""

    def _req(self, sid, step, obs, reward):
        return self.pb.ActRequest(session_id=sid, step=step, observation=obs, reward=reward)

    def create(self, target_return=None):
        req = self.pb.CreateSessionRequest()
        if target_return is not None:
            req.target_return = target_return
        code, r = self._call(self.stub.CreateSession, req)
        return (code, r.session_id) if code == "OK" else (code, r)

    def act(self, sid, step, obs, reward):
        code, r = self._call(self.stub.Act, self._req(sid, step, obs, reward))
        if code != "OK":
            return code, r
        return code, [(r.step, np.asarray(r.action, np.float32), r.return_to_go)]

    def act_batch(self, items):
        req = self.pb.ActBatchRequest(requests=[self._req(*it) for it in items])
        code, r = self._call(self.stub.ActBatch, req)
        if code != "OK":
            return code, r
        return code, [(a.step, np.asarray(a.action, np.float32), a.return_to_go)
                      for a in r.responses]

    def act_stream(self, items):
        """Each item on one stream; returns the answers before the first error, and the code."""
        out = []
        try:
            for a in self.stub.ActStream(iter([self._req(*it) for it in items]), timeout=10):
                out.append((a.step, np.asarray(a.action, np.float32), a.return_to_go))
            return "OK", out
        except self.grpc.RpcError as e:
            return e.code().name, (out, e.details() or "")

    def close(self, sid):
        code, r = self._call(self.stub.CloseSession, self.pb.CloseSessionRequest(session_id=sid))
        return code, r

    def alive(self) -> bool:
        for name in ("", "vidt.v1.PolicyService"):
            r = self.health.Check(self.health_pb2.HealthCheckRequest(service=name), timeout=5)
            if r.status != self.health_pb2.HealthCheckResponse.SERVING:
                return False
        return True

    def size_ok(self, items) -> bool:
        """Whether the request fits the server's receive limit (else grpc answers
        RESOURCE_EXHAUSTED before vidt sees it)."""
        req = self.pb.ActBatchRequest(requests=[self._req(*it) for it in items])
        size = req.ByteSize() if len(items) != 1 else self._req(*items[0]).ByteSize()
        return size <= self.recv_limit - 64


class Harness:
    """Runs fuzz cases against a target (CoreTarget or GrpcTarget) and checks every answer
    against the oracle, the victims and the canary against local replays."""

    def __init__(self, target, policy, expired_id: str, counts):
        self.t, self.policy, self.expired_id, self.counts = target, policy, expired_id, counts
        self.refs = {seed: replay(policy, seed, T) for seed in range(8)}

    def world(self, ks) -> World:
        victims = []
        for j, k in enumerate(ks):
            code, sid = self.t.create()
            assert code == "OK", sid
            v = Victim(sid, j, 0)
            self.advance(v, k)
            victims.append(v)
        code, closed = self.t.create()
        assert code == "OK" and self.t.close(closed)[0] == "OK"
        code, sid = self.t.create()
        canary = Victim(sid, 7, 0)
        self.advance(canary, 1)
        unknown = "u" + secrets.token_urlsafe(12)
        return World(victims, {"closed": closed, "expired": self.expired_id,
                               "unknown": unknown}, canary)

    def advance(self, v: Victim, n: int) -> None:
        eobs, erew = episode(v.seed)
        for _ in range(n):
            code, out = self.t.act(v.id, v.k, eobs[v.k].tolist(), float(erew[v.k]))
            assert code == "OK", out
            np.testing.assert_allclose(out[0][1], self.refs[v.seed][v.k], atol=1e-5)
            v.k += 1

    @contextlib.contextmanager
    def case(self, ks):
        """A fresh world of len(ks) victims at steps ks; on exit the canary and every victim
        a request did not legitimately move take their next step exactly as a replay says,
        health is SERVING, and everything opened is closed (also when the case failed, so
        that hypothesis' shrinking starts from a clean server)."""
        world = self.world(ks)
        ok = False
        try:
            yield world
            for v in [world.canary, *world.victims]:
                if not v.moved:
                    self.advance(v, 1)
            assert self.t.alive()
            ok = True
        finally:
            for v in [world.canary, *world.victims]:
                code, msg = self.t.close(v.id)
                assert code == "OK" or not ok, msg

    def category(self, r: Req) -> str:
        if r.focus == "observation" and r.obs is not None and len(r.obs) != S:
            return "observation length"
        if r.focus == "session id":
            return f"session id: {r.target[0]}"
        return {"none": "valid step"}.get(r.focus, r.focus)

    def _check(self, code, out, expected, items):
        """items: [(victim or None, step, obs, reward)] of the request, in order."""
        exp, detail = expected
        if exp != "OK":
            assert code == exp, (code, out, expected)
            if isinstance(detail, str) and isinstance(out, str):
                assert detail in out, (out, detail)
            return
        if any(d == "new" for d in detail) and code == "INVALID_ARGUMENT":
            assert "not finite" in out, out  # extreme inputs overflowed the actor
            return
        assert code == "OK", (code, out, expected)
        assert len(out) == len(items)
        for (v, step, _obs, _rew), d, (got_step, action, _rtg) in zip(items, detail, out):
            assert got_step == step and action.shape == (A,)
            assert np.isfinite(action).all() and (np.abs(action) <= 1.0).all(), action
            if d == "stored":
                np.testing.assert_allclose(action, self.refs[v.seed][v.k - 1], atol=1e-5)
            elif d == "replay":
                np.testing.assert_allclose(action, self.refs[v.seed][v.k], atol=1e-5)
                v.k += 1
            else:
                v.moved = True

    def _expected(self, world, reqs, batch: bool):
        if batch:
            exp = expect_batch(world, reqs)
        else:
            code, d = expect_one(world, reqs[0], self.policy)
            exp = (code, [d] if code == "OK" else d)
        items = [concrete(world, r) for r in reqs]
        if not self.t.size_ok([it[:4] for it in items]):
            exp = ("RESOURCE_EXHAUSTED", None)
        return exp, items

    def act(self, world: World, r: Req) -> None:
        exp, items = self._expected(world, [r], batch=False)
        self.counts[self.category(r)] += 1
        code, out = self.t.act(*items[0][:4])
        self._check(code, out, exp, [(it[4], *it[1:4]) for it in items])

    def stream(self, world: World, r: Req) -> None:
        exp, items = self._expected(world, [r], batch=False)
        self.counts["stream: " + self.category(r)] += 1
        code, out = self.t.act_stream([items[0][:4]])
        if code != "OK":
            out = out[1]
        self._check(code, out, exp, [(it[4], *it[1:4]) for it in items])

    def batch(self, world: World, reqs: list[Req], dup: int | None) -> None:
        if dup is not None and reqs:
            reqs = [*reqs, reqs[dup % len(reqs)]]
        exp, items = self._expected(world, reqs, batch=True)
        self.counts["batch" + (" with a duplicate" if dup is not None and reqs else "")] += 1
        code, out = self.t.act_batch([it[:4] for it in items])
        self._check(code, out, exp, [(it[4], *it[1:4]) for it in items])

    def create(self, target_return) -> None:
        self.counts["target return"] += 1
        ok = target_return is None or (math.isfinite(target_return)
                                       and abs(target_return) <= F32_MAX)
        code, sid = self.t.create(target_return)
        if not ok:
            assert code == "INVALID_ARGUMENT", (code, sid)
            return
        assert code == "OK", sid
        eobs, _ = episode(0)
        want = replay(self.policy, 0, 1, target_return)[0]
        code, out = self.t.act(sid, 0, eobs[0].tolist(), 0.0)
        if np.isfinite(want).all():
            assert code == "OK", out
            np.testing.assert_allclose(out[0][1], want, atol=1e-5)
        else:
            assert code == "INVALID_ARGUMENT" and "not finite" in out, (code, out)
        assert self.t.close(sid)[0] == "OK"
        assert self.t.alive()


def session_when_free(client, deadline_s: float, on_refused, pause: float = 0.01):
    """client.session(), retried while the server answers RESOURCE_EXHAUSTED (session limit
    reached) until `deadline_s` seconds have passed; on_refused() counts each refusal."""
    from vidt.serving.client import ServerError

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client.session()
        except ServerError as e:
            if e.code.name != "RESOURCE_EXHAUSTED" or time.monotonic() > deadline:
                raise
            on_refused()
            time.sleep(pause)


def wait_until(pred, timeout: float = 10.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return pred()


# ---- a `vidt serve` subprocess -----------------------------------------------------------------



class ServeProcess:
    """`vidt serve` in its own process, as in production, on free loopback ports, with
    metrics on. Stderr goes to a file (`log()`), so a chatty server can never block on a
    full pipe."""

    def __init__(self, model, tmp: Path, *args: str, port: int | None = None):
        import os
        import subprocess

        self.port = port or free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = Path(tmp) / f"serve-{self.port}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        cmd = [sys.executable, "-m", "vidt.cli.main", "serve", "--model", str(model),
               "--port", str(self.port), "--metrics-port", str(self.metrics_port),
               "--ort-threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_serving(self, timeout: float = 60.0) -> ServeProcess:
        from serving_util import health_status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if health_status(self.address, "vidt.v1.PolicyService") == "SERVING":
                    return self
            except Exception:
                pass
            time.sleep(0.1)
        self.stop()  # never leave a server behind, whatever the caller does with the error
        raise AssertionError(f"server did not become SERVING:\n{self.log_path.read_text()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics, e.g. 'vidt_active_sessions'."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise KeyError("VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- load ---------------------------------------------------------------------------------------

def load_inputs(meta, k: int, steps: int, seed0: int = 0):
    rng = np.random.default_rng(seed0 * 100_003 + k)
    return (rng.normal(size=(steps, meta.obs_dim)).astype(np.float32),
            rng.normal(size=steps))


def drive(address: str, policy, sessions: int, steps: int, *, channels: int = 8,
          abandon_every: int = 0, stream_every: int = 0, seed0: int = 0,
          timeout_s: float = 600.0, token: str | None = None) -> dict:
    """`sessions` episodes of `steps` steps at once, one thread each, through PolicyClient
    (`channels` channels shared round-robin). Every `stream_every`-th session uses ActStream,
    every `abandon_every`-th is left open (its client "vanishes"; the server must expire it).
    Every episode's actions are compared with a local single-session replay of the same
    inputs. Returns counts: errors, mismatches, largest difference, wall time."""
    import threading

    from vidt.serving.client import PolicyClient

    meta = policy.metadata
    clients = [PolicyClient(address, token=token, timeout_s=30) for _ in range(channels)]
    got: list = [None] * sessions
    errors: list[str] = []
    barrier = threading.Barrier(sessions)
    stop_at = time.monotonic() + timeout_s

    def run(k: int) -> None:
        c = clients[k % channels]
        obs, rew = load_inputs(meta, k, steps, seed0)
        s = None
        try:
            s = c.stream() if stream_every and k % stream_every == 0 else c.session()
            barrier.wait(60)
            out = []
            for t in range(steps):
                if time.monotonic() > stop_at:
                    raise TimeoutError("load ran past its time limit")
                out.append(s.act(obs[t], rew[t]))
            got[k] = np.stack(out)
            if not (abandon_every and k % abandon_every == 0):
                s.close()  # an abandoned stream ends when its channel closes, below
        except Exception as e:  # counted and reported by the caller
            errors.append(f"session {k}: {type(e).__name__}: {e}")
            try:
                barrier.abort()
            except Exception:
                pass

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, stop_at - time.monotonic() + 30))
    wall = time.monotonic() - t0
    for c in clients:
        c.close()
    mismatches, worst = 0, 0.0
    for k in range(sessions):
        if got[k] is None:
            continue
        obs, rew = load_inputs(meta, k, steps, seed0)
        w = policy.new_window()
        for t in range(steps):
            a = policy.predict(w.observe(obs[t], rew[t]))[0]
            w.record_action(a)
            d = float(np.abs(a - got[k][t]).max())
            worst = max(worst, d)
            mismatches += d > 1e-5
    done = sum(g is not None for g in got)
    return {"sessions": sessions, "steps": steps, "completed": done, "errors": len(errors),
            "first_errors": errors[:5], "mismatches": mismatches, "max_abs_diff": worst,
            "wall_s": round(wall, 2), "acts_per_s": round(done * steps / wall, 1),
            "alive_threads": sum(t.is_alive() for t in threads)}


# ---- a client that vanishes ---------------------------------------------------------------------

# A client process that opens sessions (ActStream and Act) mid-episode, says so, and waits to
# be killed: the server only sees its sockets die.
VANISHING_CLIENT = """
import sys, time
from vidt.serving.client import PolicyClient
streams, unary, S = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = PolicyClient(sys.argv[1], retries=0)
# Act sessions first: once the streams hold every server thread, a unary call would queue.
for s in [c.session() for _ in range(unary)]:
    for t in range(3):
        s.act([0.1 * t] + [0.2] * (S - 1), 1.0)
for _ in range(streams):
    s = c.stream()
    for t in range(3):
        s.act([0.1 * t] + [0.2] * (S - 1), 1.0)
print("ready", flush=True)
time.sleep(120)
"""


def vanish(address: str, streams: int, unary: int, obs_dim: int = S) -> None:
    """Run VANISHING_CLIENT until it holds its sessions, then SIGKILL it."""
    import signal
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", VANISHING_CLIENT, address, str(streams),
                              str(unary), str(obs_dim)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
