"""Three `vidt serve` replicas of an exported Decision Transformer behind a real HAProxy on
loopback (deploy/haproxy/): episodes survive a replica's SIGKILL and a rolling restart with
exactly the actions an uninterrupted server gives, sessions that moved stay moved, the route
key keeps a vector env together, and bad resumes create nothing.

Skipped where `haproxy` is not on the PATH (.ci/run installs it, so CI always runs these)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serving_util import make_dt_onnx, running_server

from vidt.serving.client import PolicyClient, ServerError
from vidt.serving.runtime import OnnxPolicy
from vidt.v1 import policy_pb2 as pb

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None,
    reason="haproxy is not on the PATH (apt-get install haproxy; .ci/run installs it)")

ROOT = Path(__file__).resolve().parents[2]
T = 48  # steps per episode
N_ACT, N_BATCH_CLIENTS, BATCH, N_STREAM = 12, 3, 4, 8  # 12 + 3 * 4 + 8 = 32 episodes
SERVE_ARGS = ("--ort-threads", "1", "--grace", "1", "--threads", "48")


def _replicas_module():
    spec = importlib.util.spec_from_file_location("replicas", ROOT / "deploy/haproxy/replicas.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REPLICAS = _replicas_module()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_dt_onnx(tmp_path_factory.mktemp("dt") / "dt.onnx", obs_dim=3, act_dim=2, K=4,
                        eval_len=4)


def inputs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode k's observations (T, 3) and rewards (T,)."""
    rng = np.random.default_rng(1000 + k)
    return rng.normal(size=(T, 3)).astype(np.float32), rng.normal(size=T)


N = N_ACT + N_BATCH_CLIENTS * BATCH + N_STREAM


@pytest.fixture(scope="module")
def reference(model) -> np.ndarray:
    """Actions (N, T, 2) of every episode from one uninterrupted server."""
    policy = OnnxPolicy(model, provider="cpu", intra_op_threads=1)
    eps = [inputs(k) for k in range(N)]
    with running_server(policy) as srv, PolicyClient(srv.address) as c, c.sessions(N) as b:
        steps = [b.act(np.stack([o[t] for o, _ in eps]), np.array([r[t] for _, r in eps]))
                 for t in range(T)]
    return np.stack(steps, axis=1)


class Fleet:
    """32 episodes on threads through the proxy: unary, ActBatch and ActStream clients, each
    client with its own route key. `steps` counts answered steps; `pause` (cleared) holds
    every episode between two steps."""

    def __init__(self, address: str, rounds_until: threading.Event | None = None):
        self.address, self.until = address, rounds_until
        self.steps = 0
        self.lock = threading.Lock()
        self.actions = np.full((N, T, 2), np.nan, np.float32)
        self.errors: list[str] = []
        self.episodes = 0
        self.clients: list[PolicyClient] = []
        self.go = threading.Event()
        self.go.set()

    def _tick(self, n=1):
        with self.lock:
            self.steps += n
        self.go.wait()
        time.sleep(0.002)  # a controller's step: episodes overlap whatever the machine

    def _client(self) -> PolicyClient:
        c = PolicyClient(self.address, timeout_s=10)
        with self.lock:
            self.clients.append(c)
        return c

    def _loop(self, run_one):
        """One episode, or episodes until `until` is set (a rolling restart), each checked."""
        try:
            while True:
                run_one()
                with self.lock:
                    self.episodes += 1
                if self.until is None or self.until.is_set():
                    return
        except Exception as e:  # recorded: the test fails on any
            self.errors.append(f"{type(e).__name__}: {e}")

    def _unary(self, k, stream=False):
        c = self._client()

        def one():
            obs, rew = inputs(k)
            with (c.stream() if stream else c.session()) as s:
                began = time.monotonic()
                acts = []
                for t in range(T):
                    acts.append(s.act(obs[t], rew[t]))
                    self._tick()
            self._record([k], [s.model_version], began, np.stack(acts)[None])
        return lambda: self._loop(one)

    def _batch(self, ks):
        c = self._client()

        def one():
            eps = [inputs(k) for k in ks]
            with c.sessions(len(ks)) as b:
                began = time.monotonic()
                acts = []
                for t in range(T):
                    acts.append(b.act(np.stack([o[t] for o, _ in eps]),
                                      np.array([r[t] for _, r in eps])))
                    self._tick(len(ks))
                versions = [s.model_version for s in b.sessions]
            self._record(ks, versions, began, np.stack(acts, axis=1))
        return lambda: self._loop(one)

    def _record(self, ks, versions, began, acts):
        """A finished episode per k in `ks`: its actions (len(ks), T, 2), the version it ran
        on and when it began."""
        self.actions[ks] = acts

    def start(self) -> list[threading.Thread]:
        jobs = [self._unary(k) for k in range(N_ACT)]
        k = N_ACT
        for _ in range(N_BATCH_CLIENTS):
            jobs.append(self._batch(list(range(k, k + BATCH))))
            k += BATCH
        jobs += [self._unary(k + i, stream=True) for i in range(N_STREAM)]
        self.threads = [threading.Thread(target=j, daemon=True) for j in jobs]
        for th in self.threads:
            th.start()
        return self.threads

    def wait_steps(self, n, timeout=120):
        deadline = time.monotonic() + timeout
        while self.steps < n:
            assert time.monotonic() < deadline, f"only {self.steps} steps after {timeout} s"
            assert not self.errors, self.errors
            time.sleep(0.01)

    def join(self, timeout=180):
        for th in self.threads:
            th.join(timeout)
            assert not th.is_alive(), "an episode hung"
        for c in self.clients:
            c.close()

    @property
    def failovers(self) -> int:
        return sum(c.failovers for c in self.clients)


def busiest(cluster) -> int:
    counts = [r.metric("vidt_active_sessions") for r in cluster.replicas]
    return int(np.argmax(counts))


def test_sigkill_mid_episode_loses_no_episode_and_no_action_changes(model, reference, tmp_path):
    with REPLICAS.Replicas(model, 3, serve_args=SERVE_ARGS, workdir=tmp_path) as cluster:
        fleet = Fleet(cluster.address)
        fleet.start()
        fleet.wait_steps(N * T // 3)
        fleet.go.clear()  # every episode between two steps: the kill lands mid-episode
        time.sleep(0.2)
        victim = busiest(cluster)
        held = cluster.replicas[victim].metric("vidt_active_sessions")
        moved_keys = {k for k, name in cluster.stuck().items()
                      if name == cluster.replicas[victim].name}
        cluster.replicas[victim].signal(signal.SIGKILL)
        cluster.replicas[victim].wait_exit()
        fleet.go.set()
        fleet.wait_steps(N * T * 2 // 3)
        # The killed replica comes back while the episodes go on: none of theirs returns.
        r = cluster.restart(victim)
        fleet.join()
        assert not fleet.errors, fleet.errors
        assert fleet.episodes == N_ACT + N_BATCH_CLIENTS + N_STREAM
        np.testing.assert_array_equal(fleet.actions, reference)
        assert held > 0 and fleet.failovers >= held
        resumed = sum(x.metric("vidt_sessions_resumed_total") for i, x in
                      enumerate(cluster.replicas) if i != victim)
        assert resumed == fleet.failovers
        assert r.metric("vidt_sessions_created_total") == 0
        stuck = cluster.stuck()
        assert moved_keys and all(stuck[k] != r.name for k in moved_keys)


def test_rolling_restart_of_every_replica_fails_no_episode(model, reference, tmp_path):
    with REPLICAS.Replicas(model, 3, serve_args=SERVE_ARGS, workdir=tmp_path) as cluster:
        done = threading.Event()
        fleet = Fleet(cluster.address, rounds_until=done)
        fleet.start()
        fleet.wait_steps(N * T // 4)
        for i, r in enumerate(cluster.replicas):
            r.signal(signal.SIGTERM)  # drains: readiness 503, HAProxy moves the keys away
            assert r.wait_exit(30) == 0
            cluster.restart(i)
            fleet.wait_steps(fleet.steps + N * 8)  # traffic on the new set before the next
        done.set()
        fleet.join()
        assert not fleet.errors, fleet.errors
        # Every client ran episodes until all three replicas had been restarted. (Episodes on a
        # draining replica may finish there within its grace, or resume elsewhere: how many
        # did which depends on timing, so fleet.failovers is not asserted.)
        assert all(r.starts == 2 for r in cluster.replicas)
        assert fleet.episodes >= N_ACT + N_BATCH_CLIENTS + N_STREAM
        # The last round of every episode (earlier rounds were overwritten the same way).
        np.testing.assert_array_equal(fleet.actions, reference)


@pytest.fixture(scope="module")
def cluster(model, tmp_path_factory):
    with REPLICAS.Replicas(model, 3, serve_args=SERVE_ARGS,
                           workdir=tmp_path_factory.mktemp("replicas")) as c:
        yield c


def test_route_key_keeps_a_vector_envs_act_batch_on_one_replica(cluster):
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    for route in ("robot-7", "robot-8", "robot-9"):
        with PolicyClient(cluster.address, route=route) as c, c.sessions(6) as b:
            b.act(obs)
            counts = [r.metric("vidt_active_sessions") for r in cluster.replicas]
            assert sorted(counts) == [0, 0, 6], (route, counts)
            assert cluster.stuck()[route] == cluster.replicas[int(np.argmax(counts))].name


def test_bad_resumes_through_the_proxy_are_refused_and_create_nothing(cluster, model):
    version = OnnxPolicy(model, provider="cpu").metadata.model_version
    ok = pb.StepRecord(observation=[0.1, 0.2, 0.3], action=[0.0, 0.0], return_to_go=9.0)
    cases = [
        (pb.ResumeState(model_version="0123456789abcdef", next_step=1, history=[ok]),
         "FAILED_PRECONDITION", "resume.model_version"),
        (pb.ResumeState(model_version=version, next_step=2, history=[ok]),
         "INVALID_ARGUMENT", "resume.history has 1 records"),
        (pb.ResumeState(model_version=version, next_step=1,
                        history=[pb.StepRecord(observation=[0.1], action=[0.0, 0.0])]),
         "INVALID_ARGUMENT", r"resume.history\[0\].observation has 1 values"),
        (pb.ResumeState(model_version=version, next_step=1,
                        history=[pb.StepRecord(observation=[0.1, 0.2, float("nan")],
                                               action=[0.0, 0.0])]),
         "INVALID_ARGUMENT", r"resume.history\[0\]: observation or action has NaN"),
    ]

    def created():
        return sum(r.metric("vidt_sessions_created_total") for r in cluster.replicas)

    before = created()
    with PolicyClient(cluster.address, route="bad-resumes") as c:
        for state, code, match in cases:
            with pytest.raises(ServerError, match=match) as e:
                c.call("CreateSession", pb.CreateSessionRequest(resume=state))
            assert e.value.code.name == code
    assert created() == before


def test_eval_through_the_proxy_with_a_replica_killed_reports_the_same_returns(tmp_path):
    pendulum = make_dt_onnx(tmp_path / "pendulum.onnx", obs_dim=3, act_dim=1, K=4, eval_len=4,
                            env_id="Pendulum-v1", act_bound=2.0, default_target_return=-150.0)
    args = ["--episodes", "5", "--seed", "5", "--json", "--no-progress"]
    with REPLICAS.Replicas(pendulum, 3, serve_args=SERVE_ARGS,
                           workdir=tmp_path / "c") as cluster:
        cmd = [sys.executable, "-m", "vidt.cli.main", "eval", "--server", cluster.address, *args]
        clean = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                          timeout=300).stdout)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        victim = None
        while victim is None:  # the replica the run's first episode landed on
            assert time.monotonic() < deadline and proc.poll() is None
            victim = next((r for r in cluster.replicas
                           if r.metric("vidt_active_sessions") > 0), None)
            time.sleep(0.01)
        time.sleep(0.2)  # into the first episode
        victim.signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        killed = json.loads(out)
    assert killed["failovers"] >= 1 and clean["failovers"] == 0
    assert killed["returns"] == clean["returns"] and killed["lengths"] == clean["lengths"]


def test_haproxy_admin_drain_sends_new_keys_elsewhere_while_old_episodes_finish(cluster):
    obs = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    with PolicyClient(cluster.address, route="old-robot") as old:
        s = old.session()
        s.act(obs[0])
        home = cluster.stuck()["old-robot"]
        cluster.admin(f"set server vidt/{home} state drain")
        try:
            cluster.wait_state(home, "DRAIN")
            for k in range(6):  # new keys: never the drained replica
                with PolicyClient(cluster.address, route=f"new-robot-{k}") as c, \
                        c.session() as s2:
                    s2.act(obs[0])
                    assert cluster.stuck()[f"new-robot-{k}"] != home
            for t in range(1, 8):  # the old key's episode goes on where it was
                s.act(obs[t])
            assert old.failovers == 0 and cluster.stuck()["old-robot"] == home
            s.close()
        finally:
            cluster.admin(f"set server vidt/{home} state ready")
            cluster.wait_up([home])


def test_a_drained_replica_takes_no_episode_even_from_a_sticky_key_and_says_when_empty(
        cluster):
    """HAProxy's drain alone keeps sending a key that sticks to the replica there, so a robot
    that keeps starting episodes would keep it busy for ever. With the replica itself told
    (SIGUSR1), its open episode finishes there and the robot's next ones go elsewhere."""
    obs = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
    with PolicyClient(cluster.address, route="sticky-robot") as robot:
        s = robot.session()
        s.act(obs[0])
        home = cluster.stuck()["sticky-robot"]
        i, r = next((i, r) for i, r in enumerate(cluster.replicas) if r.name == home)
        try:
            cluster.admin(f"set server vidt/{home} state drain")
            r.signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while r.metric("vidt_draining") != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for t in range(1, 8):  # the open episode goes on where it is
                s.act(obs[t])
            s.close()
            assert robot.failovers == 0
            for _ in range(3):  # the same robot's next episodes: elsewhere
                with robot.session() as s2:
                    s2.act(obs[0])
                    assert r.metric("vidt_active_sessions") == 0
            assert robot.route != "sticky-robot" and cluster.stuck()[robot.route] != home
            log = r.log_dir / f"{r.name}-{r.starts}.log"
            while "drained: no session open" not in log.read_text():
                assert time.monotonic() < deadline + 10, log.read_text()[-2000:]
                time.sleep(0.05)
        finally:
            cluster.restart(i)


def test_a_drained_replica_restarted_comes_back_in_rotation(cluster):
    """HAProxy keeps a state set through its admin socket (drain) across the process's
    restart: restart() puts the new process back in rotation instead of waiting for ever."""
    r = cluster.replicas[1]
    cluster.admin(f"set server vidt/{r.name} state drain")
    cluster.wait_state(r.name, "DRAIN")
    cluster.restart(1, timeout=30)
    assert cluster.states()[r.name] == "UP"


def test_a_replica_that_will_not_start_leaves_the_others_serving(cluster, tmp_path):
    """The launcher's supervision: a replica that fails to come back (here, restarted onto a
    broken file) is reported and retried, and the others go on serving through the proxy."""
    r = cluster.replicas[2]
    good = r.model
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    r.model = str(broken)
    r.signal(signal.SIGKILL)
    r.proc.wait(10)
    said = []
    try:
        assert cluster.supervise_once(said.append) == [r.name]
        assert any("did not come back" in s for s in said), said
        assert cluster.haproxy.poll() is None
        assert all(o.proc.poll() is None for o in cluster.replicas if o is not r)
        obs = np.zeros(3, np.float32)
        for k in range(4):  # new episodes still served, by the replicas that are up
            with PolicyClient(cluster.address, route=f"after-{k}") as c, c.session() as s:
                s.act(obs)
    finally:
        r.model = good
        assert cluster.supervise_once(said.append) == []
    assert cluster.states()[r.name] == "UP"


def test_the_admin_command_reaches_haproxy_without_socat(cluster):
    script = Path(REPLICAS.__file__)
    p = subprocess.run([sys.executable, str(script), "admin", cluster.admin_socket,
                        "show stat"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert all(f"vidt,{r.name}," in p.stdout for r in cluster.replicas)
    p = subprocess.run([sys.executable, str(script), "admin", "/nonexistent.sock", "show stat"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stderr.startswith("error: /nonexistent.sock")


class VersionFleet(Fleet):
    """Fleet whose every episode is kept: (episode k, the version it began on, when it
    began, its actions), for checking each against a single server on that version."""

    def __init__(self, address: str, rounds_until: threading.Event):
        super().__init__(address, rounds_until)
        self.done: list[tuple[int, str, float, np.ndarray]] = []

    def _record(self, ks, versions, began, acts):
        with self.lock:
            self.done += [(k, v, began, a) for k, v, a in zip(ks, versions, acts)]


def _events(replica, event: str, version: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics",
                                timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^vidt_model_events_total{{event="{event}",version="{version}"}} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def _current(replica) -> tuple[str, list[str]]:
    with PolicyClient(replica.address, retries=0, failover=False) as c:
        info = c.info()
        return info.model_version, list(info.loaded_versions)


def test_promotion_restarts_and_rollback_of_a_fleet_fail_no_episode(tmp_path):
    """3 replicas following one model repository; 32 episodes run while (a) v2 is promoted,
    (b) every replica is restarted in turn, (c) v1 is rolled back to. No episode fails, each
    one's actions equal a single server's on the version it began on, episodes begun after
    the promotion run v2, and the replicas end up holding v1 alone."""
    from vidt.serving.repository import ModelRepository

    (tmp_path / "models").mkdir()
    repo = ModelRepository(tmp_path / "models")
    files = [make_dt_onnx(tmp_path / f"dt{seed}.onnx", obs_dim=3, act_dim=2, K=4, eval_len=4,
                          seed=seed) for seed in (0, 1)]
    v1, v2 = (repo.add(f).version for f in files)
    repo.promote(v1)
    ref = {}
    for v, f in zip((v1, v2), files):  # every episode on one uninterrupted server
        eps = [inputs(k) for k in range(N)]
        with running_server(OnnxPolicy(f, provider="cpu", intra_op_threads=1)) as srv, \
                PolicyClient(srv.address) as c, c.sessions(N) as b:
            ref[v] = np.stack([b.act(np.stack([o[t] for o, _ in eps]),
                                     np.array([r[t] for _, r in eps])) for t in range(T)],
                              axis=1)
    assert not np.allclose(ref[v1], ref[v2])

    def switch(to: str) -> float:
        """Every replica told (SIGHUP) and answering with `to`; returns when."""
        for r in cluster.replicas:
            r.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while any(_current(r)[0] != to for r in cluster.replicas):
            assert time.monotonic() < deadline, "a replica did not switch"
            time.sleep(0.05)
        return time.monotonic()

    # A CreateSession whose answer the proxy reset during a restart is sent again, which can
    # leave an unused session on v2 behind (serving/client.py, RETRY_CODES; the test makes one
    # before the rollback): it holds v2 until it is freed as idle, so this cluster frees idle
    # sessions after 20 s, not 300. Episodes pause for far less (the promotion, one restart).
    idle_s = 20
    with REPLICAS.Replicas(None, 3, serve_args=(*SERVE_ARGS, "--idle-timeout", str(idle_s)),
                           workdir=tmp_path / "c", model_repo=repo.root) as cluster:
        done = threading.Event()
        fleet = VersionFleet(cluster.address, rounds_until=done)
        fleet.start()
        fleet.wait_steps(N * T // 3)
        fleet.go.clear()  # every episode between two steps, on v1
        time.sleep(0.2)
        repo.promote(v2)  # (a)
        promoted = switch(v2)
        for i, r in enumerate(cluster.replicas):  # (b)
            r.signal(signal.SIGTERM)
            assert r.wait_exit(30) == 0
            cluster.restart(i)
            assert _current(r) == (v2, [v2])  # back on the same repository's pointer
            if i == 0:
                # The first one's v1 episodes were cut mid-way: their keys still lead to it,
                # and it must load v1 from the repository to resume them.
                fleet.go.set()
                fleet.wait_steps(fleet.steps + N * 8)
                assert _events(r, "loaded", v1) >= 1
            fleet.wait_steps(fleet.steps + N * 8)
        # What a lost CreateSession answer leaves behind: a session on v2 nobody steps.
        with PolicyClient(cluster.replicas[0].address, retries=0, failover=False) as c:
            c.session(model_version=v2)
        rolling_back = time.monotonic()
        repo.rollback()  # (c)
        switch(v1)
        fleet.wait_steps(fleet.steps + N * T // 2)
        done.set()
        fleet.join()
        assert not fleet.errors, fleet.errors
        versions = {v for _, v, _, _ in fleet.done}
        assert versions == {v1, v2}
        for k, v, began, acts in fleet.done:
            np.testing.assert_array_equal(acts, ref[v][k], err_msg=f"episode {k} on {v}")
            if promoted < began < rolling_back:
                assert v == v2, f"episode {k} began after the promotion on {v}"
        # The last sessions on v2 ended (an unused one freed as idle): every replica goes back
        # to holding v1 alone.
        deadline = time.monotonic() + idle_s + 30
        while any(_current(r)[1] != [v1] for r in cluster.replicas):
            assert time.monotonic() < deadline, [_current(r) for r in cluster.replicas]
            time.sleep(0.2)
