"""A non-finite action never reaches a client. Finite but extreme observations overflow inside
a real transformer (an exported DT answers NaN for observations near 3e38); np.minimum/maximum
would pass a NaN through the action bounds. Here a model that answers NaN whenever an
observation exceeds ~3e8 in magnitude stands in for it: the server refuses the step
(INVALID_ARGUMENT), and the session's window is untouched, so its next valid step is the
replay's."""

from __future__ import annotations

import numpy as np
import pytest
from reliability_util import episode, replay
from serving_util import health_status, running_server

from vidt.serving.client import PolicyClient, ServerError
from vidt.serving.sessions import InvalidArgument, SessionStore, StepRequest
from vidt.v1 import policy_pb2 as pb

HUGE = [1e9, 0.0, 0.0]  # finite, valid by the contract, beyond what the model handles


@pytest.fixture(scope="module")
def nan_policy(tiny_model, tmp_path_factory):
    """The tiny model plus sum(obs * 1e30 - obs * 1e30): 0 for ordinary observations, NaN
    (inf - inf) once |obs| * 1e30 overflows float32."""
    import onnx
    from onnx import helper, numpy_helper

    from vidt.serving.runtime import OnnxPolicy

    m = onnx.load(str(tiny_model))
    g = m.graph
    for node in g.node:
        node.output[:] = ["action_core" if o == "action" else o for o in node.output]
    g.initializer.extend([numpy_helper.from_array(np.array(1e30, np.float32), "big"),
                          numpy_helper.from_array(np.array([1, 2], np.int64), "ax12")])
    g.node.extend([
        helper.make_node("Mul", ["observations", "big"], ["ob"]),  # (B, K, S)
        helper.make_node("Sub", ["ob", "ob"], ["zero_or_nan"]),
        helper.make_node("ReduceSum", ["zero_or_nan", "ax12"], ["z1"], keepdims=0),  # (B,)
        helper.make_node("Unsqueeze", ["z1", "ax1"], ["z2"]),  # (B, 1)
        helper.make_node("Add", ["action_core", "z2"], ["action"]),  # (B, A)
    ])
    path = tmp_path_factory.mktemp("nan") / "nan.onnx"
    onnx.save(m, str(path))
    p = OnnxPolicy(path, provider="cpu", intra_op_threads=1)
    w = p.new_window()
    assert np.isnan(p.predict(w.observe(HUGE))).all()  # the stand-in really overflows
    return p


def test_core_refuses_a_non_finite_action_and_keeps_the_window(nan_policy, policy):
    store = SessionStore(nan_policy.metadata, nan_policy.act_batch)
    obs, rew = episode(4)
    a, b = store.create().session_id, store.create().session_id
    store.act(StepRequest(a, 0, obs[0], rew[0]))
    with pytest.raises(InvalidArgument, match="not finite"):
        store.act(StepRequest(a, 1, HUGE, rew[1]))
    with pytest.raises(InvalidArgument, match=r"requests\[1\]: the policy's action is not"):
        store.act_batch([StepRequest(b, 0, obs[0], rew[0]), StepRequest(a, 1, HUGE, rew[1])])
    # Neither session moved: a at step 1, b at step 0, both as the replay says.
    got_a = [store.act(StepRequest(a, t, obs[t], rew[t])).action for t in (1, 2)]
    got_b = store.act(StepRequest(b, 0, obs[0], rew[0])).action
    want = replay(policy, 4, 3)  # the same function as the tiny model for these inputs
    np.testing.assert_allclose(np.stack(got_a), want[1:3], atol=1e-6)
    np.testing.assert_allclose(got_b, want[0], atol=1e-6)


def test_server_answers_invalid_argument_never_nan(nan_policy, policy):
    obs, rew = episode(4)
    want = replay(policy, 4, 3)
    with running_server(nan_policy) as srv, PolicyClient(srv.address, retries=0) as c:
        with c.session() as s:
            s.act(obs[0], rew[0])
            with pytest.raises(ServerError, match="not finite") as e:
                s.act(HUGE, rew[1])
            assert e.value.code.name == "INVALID_ARGUMENT"
            got = [s.act(obs[t], rew[t]) for t in (1, 2)]
        np.testing.assert_allclose(np.stack(got), want[1:3], atol=1e-6)
        with c.stream() as s:
            with pytest.raises(ServerError, match="not finite"):
                s.act(HUGE)
        with c.sessions(2) as b:
            reqs = [b.sessions[0].request(obs[0]), b.sessions[1].request(HUGE)]
            with pytest.raises(ServerError, match=r"requests\[1\]"):
                c.call("ActBatch", pb.ActBatchRequest(requests=reqs))
            np.testing.assert_allclose(b.act([obs[0], obs[0]])[0], want[0], atol=1e-6)
        assert health_status(srv.address) == "SERVING"
