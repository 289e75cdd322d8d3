"""The gRPC server and client against real servers on loopback ports, with a real ONNX file
loaded by OnnxPolicy: every RPC and every status code of proto/vidt/v1/policy.proto, on each
transport (threads, asyncio)."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import serving_util
from serving_util import (
    episode,
    free_port,
    health_status,
    make_policy_onnx,
    running_server,
    self_signed_cert,
)

from vidt.errors import ConfigError
from vidt.serving.client import PolicyClient, ServerError
from vidt.serving.runtime import OnnxPolicy
from vidt.serving.server import PolicyServer, ServerConfig, message_limits
from vidt.v1 import policy_pb2 as pb

C = grpc.StatusCode


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = make_policy_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx", obs_dim=3,
                            act_dim=2, K=4, eval_len=3, default_target_return=10.0)
    return OnnxPolicy(path, provider="cpu", intra_op_threads=1)


@pytest.fixture(scope="module", autouse=True, params=ServerConfig.TRANSPORTS)
def transport(request):
    serving_util.TRANSPORT["name"] = request.param
    yield request.param
    serving_util.TRANSPORT["name"] = "threads"


@pytest.fixture(scope="module")
def server(policy, transport):
    with running_server(policy, idle_timeout_s=60, metrics_port=0) as srv:
        yield srv


@pytest.fixture
def client(server):
    with PolicyClient(server.address, timeout_s=5) as c:
        yield c


def local_actions(policy, obs, rew, target_return=None):
    policy.reset(target_return)
    return np.stack([policy.act(o, r) for o, r in zip(obs, rew)])


def ready_status(srv) -> tuple[int, str]:
    """GET /ready on the server's metrics port: (HTTP status, body)."""
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/ready",
                                    timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


def code_of(excinfo) -> grpc.StatusCode:
    return excinfo.value.code


# ---- info, health, reflection ---------------------------------------------------------------


def test_policy_info(client, policy):
    info = client.info()
    m = policy.metadata
    assert info.model_name == m.model_name and info.model_version == m.model_version
    assert (info.observation_dim, info.action_dim, info.context_length) == (3, 2, 4)
    assert list(info.action_low) == [-1.0, -1.0] and list(info.action_high) == [1.0, 1.0]
    assert info.default_target_return == 10.0 and info.max_episode_steps == 0
    assert info.execution_provider == "CPUExecutionProvider"
    assert list(info.loaded_versions) == [m.model_version]
    assert (info.canary_version, info.canary_fraction) == ("", 0.0)


def test_a_session_names_its_model_and_a_pinned_one_must_be_held(client, policy):
    r = client.call("CreateSession", pb.CreateSessionRequest())
    assert r.model_version == policy.metadata.model_version
    pinned = client.call("CreateSession", pb.CreateSessionRequest(
        model_version=policy.metadata.model_version))
    assert pinned.model_version == policy.metadata.model_version
    with pytest.raises(ServerError, match="model_version 'v-elsewhere' is not held") as e:
        client.call("CreateSession", pb.CreateSessionRequest(model_version="v-elsewhere"))
    assert code_of(e) == C.FAILED_PRECONDITION
    s = client.session()  # the client keeps the version its server named
    assert s.model_version == policy.metadata.model_version
    s.close()
    for sid in (r.session_id, pinned.session_id):
        client.call("CloseSession", pb.CloseSessionRequest(session_id=sid))


def test_health_for_both_names_and_reflection(server):
    for name in ("", "vidt.v1.PolicyService"):
        assert health_status(server.address, name) == "SERVING"
    with pytest.raises(grpc.RpcError) as e:
        health_status(server.address, "no.such.Service")
    assert e.value.code() == C.NOT_FOUND
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.address) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = db.get_services()
        assert "vidt.v1.PolicyService" in services and "grpc.health.v1.Health" in services
        assert db.FindFileContainingSymbol("vidt.v1.PolicyService").name == "vidt/v1/policy.proto"


def test_health_is_not_serving_before_start(policy, transport):
    srv = PolicyServer(policy, ServerConfig(port=0, transport=transport))
    try:
        srv._transport.start()  # transport up, model not yet warmed up and declared
        assert health_status(srv.address, "") == "NOT_SERVING"
        assert health_status(srv.address, "vidt.v1.PolicyService") == "NOT_SERVING"
    finally:
        srv.stop()


# ---- the three ways to step an episode ---------------------------------------------------------


def test_act_stream_and_batch_equal_local_onnxruntime(client, policy):
    obs, rew = episode(n=8)
    want = local_actions(policy, obs, rew, target_return=7.0)
    with client.session(target_return=7.0) as s:
        assert s.target_return == 7.0 and s.context_length == 4 and s.idle_timeout_s == 60
        got = np.stack([s.act(o, r) for o, r in zip(obs, rew)])
        assert s.return_to_go == pytest.approx(7.0 - rew[1:].sum(), rel=1e-6)
        steps, total = s.close()
    assert (steps, total) == (8, pytest.approx(rew[1:].sum()))
    np.testing.assert_allclose(got, want, atol=1e-6)

    with client.stream(target_return=7.0) as s:
        got = np.stack([s.act(o, r) for o, r in zip(obs, rew)])
    np.testing.assert_allclose(got, want, atol=1e-6)

    # Three sessions in one ActBatch, each its own episode: batched = unbatched within 1e-5.
    eps = [episode(n=8, seed=k) for k in range(3)]
    wants = [local_actions(policy, o, r, target_return=7.0) for o, r in eps]
    with client.sessions(3, target_return=7.0) as b:
        got = np.stack([b.act([e[0][t] for e in eps], [e[1][t] for e in eps])
                        for t in range(8)], axis=1)  # (3, T, A)
    np.testing.assert_allclose(got, np.stack(wants), atol=1e-5)


class SlowerPolicy:
    """The real onnxruntime policy plus 3 ms per call, as a larger model would take: calls of
    concurrent sessions then overlap on any machine, however loaded, so batches must form."""

    def __init__(self, policy):
        self._policy = policy

    def predict(self, inputs):
        time.sleep(0.003)
        return self._policy.predict(inputs)

    def __getattr__(self, name):
        return getattr(self._policy, name)


def test_concurrent_sessions_are_batched_and_equal_unbatched(policy):
    n, T = 12, 6
    eps = [episode(n=T, seed=10 + k) for k in range(n)]
    wants = [local_actions(policy, o, r) for o, r in eps]
    with running_server(SlowerPolicy(policy), max_batch=64, batch_window_us=2000) as srv:
        results, errors = [None] * n, []
        barrier = threading.Barrier(n)

        def run(k):
            try:
                with PolicyClient(srv.address, timeout_s=10) as c, c.session() as s:
                    barrier.wait(10)
                    results[k] = np.stack([s.act(o, r) for o, r in zip(*eps[k])])
            except Exception as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert srv.batcher.rows == n * T  # (the warm-up call bypasses the batcher)
        assert srv.batcher.batches < n * T  # some steps of different sessions shared a call
    for got, want in zip(results, wants):
        np.testing.assert_allclose(got, want, atol=1e-5)


# ---- status codes ----------------------------------------------------------------------------


def test_repeated_step_gets_the_same_answer(client, policy):
    obs, rew = episode(n=4)
    with client.session() as s:
        a0 = s.act(obs[0])
        raw = client.call("Act", pb.ActRequest(session_id=s.id, step=0, observation=obs[0]))
        np.testing.assert_array_equal(np.asarray(raw.action, np.float32), a0)
        rest = [s.act(o, r) for o, r in zip(obs[1:], rew[1:])]
        assert s.close()[0] == 4  # nothing appended twice
    np.testing.assert_allclose(np.stack([a0, *rest]), local_actions(policy, obs, rew), atol=1e-6)


def test_invalid_argument(client):
    with client.session() as s:
        for bad, match in [([1.0, 2.0], "observation has 2 values, expected 3"),
                           ([1.0, float("nan"), 0.0], "NaN or infinite"),
                           ([float("inf"), 0.0, 0.0], "NaN or infinite")]:
            with pytest.raises(ServerError, match=match) as e:
                s.act(bad)
            assert code_of(e) == C.INVALID_ARGUMENT
        assert s.step == 0
    with pytest.raises(ServerError, match="target_return must be finite") as e:
        client.session(target_return=float("nan"))
    assert code_of(e) == C.INVALID_ARGUMENT
    with pytest.raises(ServerError, match="empty batch") as e:
        client.call("ActBatch", pb.ActBatchRequest())
    assert code_of(e) == C.INVALID_ARGUMENT


def test_act_batch_is_all_or_nothing(client):
    obs, _ = episode(n=2)
    with client.sessions(3) as b:
        ids = [s.id for s in b.sessions]
        reqs = [pb.ActRequest(session_id=i, step=0, observation=obs[0]) for i in ids]
        reqs[2].step = 5
        with pytest.raises(ServerError, match=r"requests\[2\].*expected step 0") as e:
            client.call("ActBatch", pb.ActBatchRequest(requests=reqs))
        assert code_of(e) == C.FAILED_PRECONDITION
        dup = [reqs[0], reqs[1], reqs[0]]
        with pytest.raises(ServerError, match=r"requests\[2\].*repeats requests\[0\]") as e:
            client.call("ActBatch", pb.ActBatchRequest(requests=dup))
        assert code_of(e) == C.INVALID_ARGUMENT
        # No session moved: all three still take step 0.
        assert b.act([obs[0]] * 3).shape == (3, 2)
        assert [s.step for s in b.sessions] == [1, 1, 1]


def test_not_found_unknown_and_closed(client):
    obs, _ = episode(n=1)
    with pytest.raises(ServerError, match="unknown session 'nope'") as e:
        client.call("Act", pb.ActRequest(session_id="nope", step=0, observation=obs[0]))
    assert code_of(e) == C.NOT_FOUND
    s = client.session()
    s.close()
    with pytest.raises(ServerError, match="was closed") as e:
        s.act(obs[0])
    assert code_of(e) == C.NOT_FOUND
    with pytest.raises(ServerError, match="was closed") as e:
        client.call("CloseSession", pb.CloseSessionRequest(session_id=s.id))
    assert code_of(e) == C.NOT_FOUND


def test_resume_over_grpc_goes_on_exactly_or_is_refused_with_nothing_created(policy):
    obs, rew = episode(n=7)
    with running_server(policy) as a, running_server(policy) as b, \
            PolicyClient(a.address, timeout_s=5) as ca, PolicyClient(b.address) as cb:
        s = ca.session()
        want = [s.act(obs[t], rew[t]) for t in range(7)]
        s2 = ca.session()
        for t in range(5):
            s2.act(obs[t], rew[t])
        history = [pb.StepRecord(observation=o, action=a_, return_to_go=g)
                   for o, a_, g in s2._history]
        state = pb.ResumeState(model_version=policy.metadata.model_version, next_step=5,
                               history=history, total_reward=s2.total_reward)
        r = cb.call("CreateSession", pb.CreateSessionRequest(resume=state))
        got = [cb.call("Act", pb.ActRequest(session_id=r.session_id, step=t,
                                            observation=obs[t].tolist(), reward=rew[t]))
               for t in (5, 6)]
        for g, w in zip(got, want[5:]):  # same model, same machine: the same bits
            np.testing.assert_array_equal(np.asarray(g.action, np.float32), w)
        assert b.store.resumed_total == 1 and b.store.active == 1
        bad = [(pb.ResumeState(model_version="another", next_step=5, history=history),
                C.FAILED_PRECONDITION, "resume.model_version 'another'"),
               (pb.ResumeState(model_version=state.model_version, next_step=5,
                               history=history[1:]), C.INVALID_ARGUMENT, "resume.history has 3"),
               (pb.ResumeState(model_version=state.model_version, next_step=5,
                               history=history[:3] + [pb.StepRecord(observation=[1.0],
                                                                    action=[0.0, 0.0])]),
                C.INVALID_ARGUMENT, r"resume.history\[3\].observation has 1 values")]
        for state_, code, match in bad:
            with pytest.raises(ServerError, match=match) as e:
                cb.call("CreateSession", pb.CreateSessionRequest(resume=state_))
            assert code_of(e) == code
        assert (b.store.resumed_total, b.store.created_total, b.store.active) == (1, 1, 1)


def test_failover_at_every_step_goes_on_exactly_and_closes_with_the_same_summary(server):
    """A client whose server lost its session (as a restarted or replaced server has: NOT_FOUND,
    unknown session) resumes it and goes on. Lost before each step from 1 to past the context
    (K 4, 3 steps acted on), the episode's actions, and the summary CloseSession gives, equal
    those of an episode nothing disturbed."""
    n = 8
    obs, rew = episode(n=n)
    with PolicyClient(server.address, timeout_s=5) as c:
        s = c.session()
        want = [s.act(obs[t], rew[t]) for t in range(n)]
        want_summary = s.close()
        for lost_at in range(1, n):
            s = c.session()
            got = []
            for t in range(n):
                if t == lost_at:
                    s.id = f"lost-{s.id}"  # the server no longer knows this session
                got.append(s.act(obs[t], rew[t]))
            for t, (g, w) in enumerate(zip(got, want)):  # same model, same machine: same bits
                np.testing.assert_array_equal(g, w, err_msg=f"lost before step {lost_at}, "
                                                            f"step {t}")
            assert s.close() == want_summary, f"lost before step {lost_at}"
        assert c.failovers == n - 1


def test_an_episode_never_resumes_onto_another_model(policy, tmp_path):
    """One address, its server replaced twice (v1, then v2, then v1 again), one long-lived
    client: the v2 episode's resume on the v1 server is refused, never continued on v1."""
    v2 = OnnxPolicy(make_policy_onnx(tmp_path / "v2.onnx", obs_dim=3, act_dim=2, K=4,
                                     eval_len=3, seed=1), provider="cpu", intra_op_threads=1)
    assert v2.metadata.model_version != policy.metadata.model_version
    obs, rew = episode(n=4)
    port = free_port()
    with PolicyClient(f"127.0.0.1:{port}", timeout_s=5, retries=0,
                      failover_timeout_s=1.0) as c:
        with running_server(policy, port=port):
            c.session().act(obs[0])  # the client has seen v1
        with running_server(v2, port=port):
            s = c.session()  # a new episode, on v2
            assert s.model_version == v2.metadata.model_version
            s.act(obs[0], rew[0])
        with running_server(policy, port=port), \
                pytest.raises(ServerError, match="is not held by this server") as e:
            s.act(obs[1], rew[1])  # v2's session is unknown here: the resume must be refused
        assert code_of(e) == C.FAILED_PRECONDITION


def test_failed_precondition_names_expected_step(client):
    obs, _ = episode(n=3)
    with client.session() as s:
        s.act(obs[0])
        with pytest.raises(ServerError, match="expected step 1") as e:
            client.call("Act", pb.ActRequest(session_id=s.id, step=2, observation=obs[1]))
        assert code_of(e) == C.FAILED_PRECONDITION


def test_stream_answers_in_order_and_fails_with_the_status(client):
    obs, rew = episode(n=5)
    with client.session() as s:
        reqs = [pb.ActRequest(session_id=s.id, step=t, observation=obs[t], reward=rew[t])
                for t in range(5)]
        answers = list(client.stub.ActStream(iter(reqs), timeout=5))
        assert [a.step for a in answers] == [0, 1, 2, 3, 4]
        bad = [pb.ActRequest(session_id=s.id, step=5, observation=obs[0]),
               pb.ActRequest(session_id=s.id, step=9, observation=obs[0])]
        it = client.stub.ActStream(iter(bad), timeout=5)
        assert next(it).step == 5
        with pytest.raises(grpc.RpcError) as e:
            next(it)
        assert e.value.code() == C.FAILED_PRECONDITION and "expected step 6" in e.value.details()


def test_resource_exhausted_and_message_size(policy):
    with running_server(policy, max_sessions=2) as srv, PolicyClient(srv.address) as c:
        c.session()
        c.session()
        with pytest.raises(ServerError, match="session limit reached") as e:
            c.session()
        assert code_of(e) == C.RESOURCE_EXHAUSTED
        recv, _ = message_limits(3, 2, 1024)
        huge = pb.ActRequest(session_id="x", step=0, observation=[0.0] * (recv // 4 + 10))
        with pytest.raises(ServerError) as e:
            c.call("Act", huge, retry=False)
        assert code_of(e) == C.RESOURCE_EXHAUSTED


def test_idle_sessions_expire_and_are_counted(policy):
    obs, _ = episode(n=2)
    with running_server(policy, idle_timeout_s=0.3, metrics_port=0) as srv, \
            PolicyClient(srv.address) as c:
        s = c.session()
        s.act(obs[0])
        time.sleep(0.8)  # the sweeper runs every 75 ms here
        assert srv.store.active == 0 and srv.store.expired_total == 1
        with pytest.raises(ServerError, match=r"expired \(idle for more than 0.3 s\)") as e:
            s.act(obs[1])
        assert code_of(e) == C.NOT_FOUND
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics",
                                      timeout=5).read().decode()
        assert "vidt_sessions_expired_total 1.0" in text
        assert 'vidt_errors_total{code="NOT_FOUND",method="Act"} 1.0' in text


def test_metrics(server, client):
    obs, _ = episode(n=2)
    with client.session() as s:
        s.act(obs[0])
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                      timeout=5).read().decode()
    assert 'vidt_requests_total{code="OK",method="Act"}' in text
    assert 'vidt_requests_total{code="OK",method="CreateSession"}' in text
    assert 'vidt_act_latency_seconds_count{method="Act"}' in text
    assert "vidt_batch_size_count" in text
    assert "vidt_active_sessions" in text


def test_draining_refuses_new_sessions_and_lets_open_ones_finish(policy):
    obs, _ = episode(n=3)
    with running_server(policy, metrics_port=0) as srv, \
            PolicyClient(srv.address, retries=0, failover=False) as c:
        assert ready_status(srv) == (200, "SERVING")
        s = c.session()
        s.act(obs[0])
        done = threading.Event()
        t = threading.Thread(target=lambda: (srv.drain(grace_s=10), done.set()))
        t.start()
        deadline = time.monotonic() + 5
        while not srv.store.draining and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health_status(srv.address, "") == "NOT_SERVING"
        assert health_status(srv.address, "vidt.v1.PolicyService") == "NOT_SERVING"
        assert ready_status(srv) == (503, "NOT_SERVING")  # proxies move new sessions away
        with pytest.raises(ServerError, match="draining") as e:
            c.session()
        assert code_of(e) == C.UNAVAILABLE
        s.act(obs[1])  # the open episode goes on
        assert not done.is_set()
        s.close()  # the last session closed: the drain ends without waiting out the grace
        t.join(5)
        assert done.is_set()


# ---- retries ---------------------------------------------------------------------------------


class SlowOnce:
    """The real policy, slower than the client's deadline on its first `predict` after
    arming (a stalled accelerator): the client's retry must not append the step twice."""

    def __init__(self, policy, delay_s):
        self.policy, self.delay_s, self.armed = policy, delay_s, False
        self.metadata, self.provider = policy.metadata, policy.provider

    def predict(self, inputs):
        if self.armed:
            self.armed = False
            time.sleep(self.delay_s)
        return self.policy.predict(inputs)


def test_retry_on_deadline_exceeded_keeps_the_step(policy):
    obs, rew = episode(n=3)
    slow = SlowOnce(policy, delay_s=0.6)
    with running_server(slow) as srv, PolicyClient(srv.address, timeout_s=0.25) as c:
        with c.session() as s:
            a = [s.act(obs[0])]
            slow.armed = True
            a.append(s.act(obs[1], rew[1]))  # first attempt times out, a retry gets it
            a.append(s.act(obs[2], rew[2]))
            assert s.step == 3
            assert s.close()[0] == 3
        assert c.retried >= 1  # the deadline really passed at least once
        assert srv.store.steps_total == 3  # and the retried step ran once
    np.testing.assert_allclose(np.stack(a), local_actions(policy, obs, rew), atol=1e-6)


def test_retry_on_unavailable_until_the_server_is_up(policy, transport):
    port = free_port()
    holder = {}

    def start_later():
        time.sleep(0.3)
        holder["srv"] = PolicyServer(policy, ServerConfig(port=port, transport=transport))
        holder["srv"].start()

    t = threading.Thread(target=start_later)
    t.start()
    try:
        with PolicyClient(f"127.0.0.1:{port}", timeout_s=2) as c:
            assert c.info().observation_dim == 3  # refused at first, then answered
            assert c.retried >= 1
    finally:
        t.join(10)
        holder["srv"].stop()
    with PolicyClient(f"127.0.0.1:{free_port()}", retries=1, backoff_s=0.01) as c:
        with pytest.raises(ServerError) as e:
            c.info()
        assert code_of(e) == C.UNAVAILABLE


# ---- security and binding ----------------------------------------------------------------------


def test_bearer_token_guards_unary_and_streaming_calls(policy):
    token = "s3cret-token"
    obs, _ = episode(n=2)
    with running_server(policy, auth_token=token, metrics_port=0) as srv:
        with PolicyClient(srv.address, retries=0) as anon:
            with pytest.raises(ServerError, match="bearer token") as e:
                anon.info()
            assert code_of(e) == C.UNAUTHENTICATED
            with pytest.raises(ServerError) as e:
                anon.session()
            assert code_of(e) == C.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e2:
                next(anon.stub.ActStream(iter([pb.ActRequest(session_id="x")]), timeout=5))
            assert e2.value.code() == C.UNAUTHENTICATED
            assert token not in e2.value.details()
        with PolicyClient(srv.address, token="wrong", retries=0) as bad:
            with pytest.raises(ServerError) as e:
                bad.info()
            assert code_of(e) == C.UNAUTHENTICATED
        with PolicyClient(srv.address, token=token) as ok:
            assert ok.info().action_dim == 2
            with ok.stream() as s:
                assert s.act(obs[0]).shape == (2,)
        assert health_status(srv.address) == "SERVING"  # probes need no token
        assert token not in repr(srv.config)
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics",
                                      timeout=5).read().decode()
        # anon.info() and bad.info(); anon.session(), which asks CreateSession only
        assert 'vidt_errors_total{code="UNAUTHENTICATED",method="GetPolicyInfo"} 2.0' in text
        assert 'vidt_errors_total{code="UNAUTHENTICATED",method="CreateSession"} 1.0' in text


def test_tls_with_a_certificate_made_here(policy, tmp_path):
    made = self_signed_cert(tmp_path)
    if made is None:
        pytest.skip("neither the `cryptography` package nor the `openssl` command is available "
                    "to make a test certificate")
    cert, key = made
    obs, _ = episode(n=2)
    with running_server(policy, tls_cert=str(cert), tls_key=str(key)) as srv:
        address = f"localhost:{srv.port}"
        with PolicyClient(address, tls=cert) as c, c.session() as s:
            assert s.act(obs[0]).shape == (2,)
        with PolicyClient(address, retries=0) as plain:  # plaintext to a TLS port fails
            with pytest.raises(ServerError) as e:
                plain.info()
            assert code_of(e) == C.UNAVAILABLE
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        assert health_status(address, "", credentials=creds) == "SERVING"


def _server_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(("vidt-aio", "vidt-onnxruntime"))}


def test_second_server_on_the_same_port_fails(server, policy, transport):
    before = _server_threads()
    for _ in range(2):
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
            PolicyServer(policy, ServerConfig(port=server.port, transport=transport))
        # The TLS check fails after the transport exists (on asyncio, its loop's thread).
        with pytest.raises(ConfigError, match="not a PEM certificate"):
            PolicyServer(policy, ServerConfig(port=0, transport=transport, tls_cert=__file__,
                                              tls_key=__file__))
    deadline = time.monotonic() + 5
    # Compared as sets: an earlier test's server may still be ending its threads meanwhile.
    while _server_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _server_threads() - before  # a failed start leaves no thread behind


def test_an_idle_stream_is_ended_with_a_status(policy):
    """A stream that sends nothing for the idle timeout is ended (CANCELLED), not left open:
    a client blocked on it hears, and its session expires."""
    import queue

    from vidt.v1 import policy_pb2_grpc as pb_grpc

    obs, _ = episode(n=2)
    with running_server(policy, idle_timeout_s=0.3) as srv, \
            PolicyClient(srv.address, retries=0, failover=False) as c, \
            grpc.insecure_channel(srv.address) as channel:
        sid = c.session().id
        requests: queue.SimpleQueue = queue.SimpleQueue()
        answers = pb_grpc.PolicyServiceStub(channel).ActStream(iter(requests.get, None),
                                                               timeout=10)
        requests.put(pb.ActRequest(session_id=sid, step=0, observation=obs[0].tolist()))
        assert next(answers).step == 0
        with pytest.raises(grpc.RpcError) as e:
            next(answers)  # nothing sent: the server ends the stream (not our 10 s deadline)
        assert e.value.code() == C.CANCELLED
        with pytest.raises(grpc.RpcError) as e:
            c.stub.Act(pb.ActRequest(session_id=sid, step=1, observation=obs[1].tolist()),
                       timeout=5)
        assert e.value.code() == C.NOT_FOUND and "expired" in e.value.details()
        requests.put(None)


def test_stop_from_two_threads_at_once(policy, transport):
    srv = PolicyServer(policy, ServerConfig(port=0, transport=transport))
    srv.start()
    errors = []

    def stop(grace):
        try:
            srv.stop(grace)
        except Exception as e:  # noqa: BLE001  (what the test looks for)
            errors.append(e)

    with PolicyClient(srv.address, retries=0, failover=False) as c:
        c.stream().act(episode(n=1)[0][0])  # a call open while both stop
        threads = [threading.Thread(target=stop, args=(g,)) for g in (0.3, 0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert not errors and not any(t.is_alive() for t in threads)
    assert srv.wait(1) is False  # stopped: no timeout


def test_config_refuses_non_loopback_without_tls_or_token():
    with pytest.raises(ConfigError, match="beyond loopback"):
        ServerConfig(host="0.0.0.0")
    ServerConfig(host="0.0.0.0", insecure=True)
    ServerConfig(host="0.0.0.0", auth_token="t")
    ServerConfig(host="::1")
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        ServerConfig(tls_cert="a.pem")
