"""The onnxruntime policy: loading checks, providers, batches, and episodes step by step
equal to the PyTorch actor in real Gymnasium envs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vidt.envs import make_env
from vidt.errors import ConfigError, ModelFileError
from vidt.export import export_actor, random_windows
from vidt.model import Actor, DecisionTransformer, ModelConfig, ModelSpec
from vidt.policy_file import _gpu_visible
from vidt.serving import OnnxPolicy
from vidt.window import ContextWindow


def make_actor(obs_dim: int, act_dim: int, low, high, seed: int = 0) -> Actor:
    """Random weights, made-up state statistics: parity does not need a trained actor."""
    torch.manual_seed(seed)
    cfg = ModelConfig(context_len=8, d_model=32, n_layer=2, n_head=2)
    rng = np.random.default_rng(seed)
    return Actor(DecisionTransformer(ModelSpec(obs_dim, act_dim), cfg),
                 state_mean=rng.normal(0, 0.5, obs_dim), state_std=rng.uniform(0.5, 2, obs_dim),
                 reward_scale=0.001, act_low=low, act_high=high).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime")
    out = {}
    for env_id, obs, act, low, high, rtg, steps in [
            ("Pendulum-v1", 3, 1, [-2.0], [2.0], -150.0, 200),
            ("Hopper-v5", 11, 3, [-1.0] * 3, [1.0] * 3, 3600.0, 1000)]:
        actor = make_actor(obs, act, low, high)
        meta = dict(env_id=env_id, algo="vidt", eval_context_len=5, eval_target_return=rtg,
                    max_episode_steps=steps)
        path = d / f"{env_id}.onnx"
        export_actor(actor, meta, path, n_windows=128)
        out[env_id] = (actor, path)
    return out


def torch_act(actor: Actor, window: ContextWindow, obs, reward) -> np.ndarray:
    inputs = window.observe(obs, reward)
    with torch.inference_mode():
        action = actor(*(torch.from_numpy(v) for v in inputs.as_feed().values()))[0].numpy()
    window.record_action(action)
    return action


@pytest.fixture
def one_torch_thread():
    # Batch-1 steps of a tiny model: a second intra-op thread only adds synchronisation, and
    # on a busy 2-core machine it made this test 40x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("env_id,max_steps", [("Pendulum-v1", 200), ("Hopper-v5", 150)])
def test_episode_matches_torch_actor_step_by_step(files, env_id, max_steps, one_torch_thread):
    actor, path = files[env_id]
    policy = OnnxPolicy(path, provider="cpu", intra_op_threads=1)
    env = make_env(env_id)
    obs, _ = env.reset(seed=7)
    policy.reset()
    reference = ContextWindow(obs_dim=env.observation_space.shape[0],
                              act_dim=env.action_space.shape[0], context_len=8, eval_len=5,
                              target_return=policy.metadata.default_target_return)
    reward, rewards, steps = 0.0, [], 0
    for _ in range(max_steps):
        a_ort = policy.act(obs, reward)
        a_torch = torch_act(actor, reference, obs, reward)
        assert a_ort.shape == env.action_space.shape
        np.testing.assert_allclose(a_ort, a_torch, atol=1e-5, rtol=0, err_msg=f"step {steps}")
        assert env.action_space.contains(a_ort.astype(env.action_space.dtype))
        obs, reward, term, trunc, _ = env.step(a_ort)
        rewards.append(float(reward))
        steps += 1
        if term or trunc:
            break
    env.close()
    assert steps >= 10
    w = policy.window
    assert w.step == steps and len(w) == 5  # only T_eval steps are kept
    # the last reward has not been reported yet: the RTG counts the ones before it
    np.testing.assert_allclose(w.return_to_go, policy.metadata.default_target_return
                               - sum(rewards[:-1]), rtol=1e-9)


def test_act_batch_equals_single_windows(files):
    actor, path = files["Hopper-v5"]
    policy = OnnxPolicy(path, provider="cpu")
    rng = np.random.default_rng(0)
    windows = []
    for i in range(5):  # windows of different lengths and targets
        w = policy.new_window(target_return=1000.0 * i)
        for t in range(i + 1):
            w.observe(rng.normal(size=11), reward=1.0)
            if t < i:
                w.record_action(rng.uniform(-1, 1, 3))
        windows.append(w.inputs())
    batch = policy.act_batch(windows)
    assert batch.shape == (5, 3)
    for i, w in enumerate(windows):
        np.testing.assert_allclose(batch[i], policy.predict(w)[0], atol=1e-6)
    assert policy.act_batch([]).shape == (0, 3)


def test_new_window_uses_the_files_settings(files):
    _, path = files["Pendulum-v1"]
    policy = OnnxPolicy(path, provider="cpu")
    w = policy.new_window()
    assert (w.context_len, w.eval_len, w.return_to_go) == (8, 5, -150.0)
    assert policy.new_window(target_return=-10).return_to_go == -10.0
    policy.reset(target_return=-20.0)
    policy.act([1.0, 0.0, 0.0])
    policy.act([1.0, 0.0, 0.0], reward=-3.0)
    assert policy.window.return_to_go == -17.0


def test_predict_rejects_wrong_shapes(files):
    actor, path = files["Pendulum-v1"]
    policy = OnnxPolicy(path, provider="cpu")
    w = random_windows(actor, 2, np.random.default_rng(0), -150.0)
    bad = type(w)(w.observations[:, :, :2], w.actions, w.returns_to_go, w.mask, w.timesteps)
    with pytest.raises(ValueError, match=r"observations has shape \(2, 8, 2\), expected \(2, 8, 3\)"):
        policy.predict(bad)
    with pytest.raises(ValueError, match="observation has 4 values"):
        policy.act(np.zeros(4))


def test_providers_and_threads(files):
    _, path = files["Pendulum-v1"]
    policy = OnnxPolicy(path, provider="cpu", intra_op_threads=1, inter_op_threads=1)
    assert policy.provider == "CPUExecutionProvider"
    assert policy.session.get_session_options().intra_op_num_threads == 1
    auto = OnnxPolicy(path)
    assert auto.provider == auto.session.get_providers()[0]
    gpu = "CUDAExecutionProvider" in ort.get_available_providers() and _gpu_visible()
    assert auto.provider == ("CUDAExecutionProvider" if gpu else "CPUExecutionProvider")
    with pytest.raises(ConfigError, match="provider must be"):
        OnnxPolicy(path, provider="tpu")
    if not gpu:
        with pytest.raises(ConfigError, match="cuda"):
            OnnxPolicy(path, provider="cuda")


# ---- bad files --------------------------------------------------------------------------------
def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        OnnxPolicy(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="not a file"):
        OnnxPolicy(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty file"):
        OnnxPolicy(tmp_path / "empty.onnx")


def test_corrupt_and_truncated_files(files, tmp_path):
    _, path = files["Pendulum-v1"]
    data = path.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    for name in ("trunc.onnx", "junk.onnx", "text.onnx"):
        with pytest.raises(ModelFileError, match=rf"{name}: not a loadable ONNX model \(corrupt or truncated"):
            OnnxPolicy(tmp_path / name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_foreign_onnx_without_vidt_metadata(tmp_path):
    out = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(3, 1), (torch.zeros(1, 3),), str(out), dynamo=False,
                      input_names=["x"], output_names=["y"])
    with pytest.raises(ModelFileError, match="without vidt metadata"):
        OnnxPolicy(out)


def _edited(path, tmp_path, name, **changes):
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    for k, v in changes.items():
        if v is None:
            props.pop("vidt." + k)
        else:
            props["vidt." + k] = v
    onnx.helper.set_model_props(model, props)
    out = tmp_path / name
    onnx.save(model, str(out))
    return out


def test_metadata_that_does_not_fit(files, tmp_path):
    _, path = files["Pendulum-v1"]
    cases = [
        (dict(obs_dim="4"), r"input 'observations' has shape \['batch', 8, 3\], expected \[batch, 8, 4\]"),
        (dict(context_len="10", eval_context_len="5"), "input 'observations' has shape"),
        (dict(act_dim="2", action_low="[-2, -2]", action_high="[2, 2]"), "input 'actions'"),
        (dict(format_version="2"), "vidt file format '2'"),
        (dict(context_len=None), "lacks vidt.context_len"),
        (dict(obs_dim="three"), r"vidt.obs_dim='three' is invalid"),
        (dict(action_low="[3.0]"), "low < high"),
        (dict(eval_context_len="9"), "eval_context_len"),
    ]
    for i, (changes, msg) in enumerate(cases):
        with pytest.raises(ModelFileError, match=msg):
            OnnxPolicy(_edited(path, tmp_path, f"m{i}.onnx", **changes))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_wrong_graph_signature(tmp_path, files):
    """A model with vidt metadata whose graph is not an actor (wrong names, dtypes)."""
    _, path = files["Pendulum-v1"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}

    class Other(torch.nn.Module):
        def forward(self, observations, actions, returns_to_go, mask):
            x = observations[:, -1, :1] + actions[:, -1] + (returns_to_go * mask)[:, -1:]
            return x.double()

    K = 8
    args = (torch.zeros(1, K, 3), torch.zeros(1, K, 1), torch.zeros(1, K), torch.ones(1, K))
    names = ["observations", "actions", "returns_to_go", "mask"]
    for name, out_name, dynamic in (("renamed.onnx", "act", True),
                                    ("double.onnx", "action", True),
                                    ("fixed.onnx", "action", False)):
        out = tmp_path / name
        axes = {n: {0: "batch"} for n in [*names, out_name]} if dynamic else None
        torch.onnx.export(Other(), args, str(out), dynamo=False, output_names=[out_name],
                          input_names=names, dynamic_axes=axes)
        model = onnx.load(str(out))
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(out))
    with pytest.raises(ModelFileError, match=r"graph outputs \['act'\], expected \['action'\]"):
        OnnxPolicy(tmp_path / "renamed.onnx")
    with pytest.raises(ModelFileError, match=r"output 'action' is tensor\(double\)"):
        OnnxPolicy(tmp_path / "double.onnx")
    with pytest.raises(ModelFileError, match="fixed batch size"):
        OnnxPolicy(tmp_path / "fixed.onnx")


def test_serving_never_imports_torch():
    # The serving package's names are the policy file's own (vidt.policy_file), not copies.
    code = ("import sys, vidt.serving; assert 'onnxruntime' not in sys.modules; "
            "from vidt.serving import OnnxPolicy, PolicyMetadata; "
            "import vidt.policy_file as pf, vidt.serving.runtime as rt; "
            "assert OnnxPolicy is pf.OnnxPolicy is rt.OnnxPolicy; "
            "assert PolicyMetadata is pf.PolicyMetadata is rt.PolicyMetadata; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_graph_missing_an_input(tmp_path, files):
    """The exporter drops unused inputs: a graph that ignores the mask is not an actor."""
    _, path = files["Pendulum-v1"]
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}

    class NoMask(torch.nn.Module):
        def forward(self, observations, actions, returns_to_go):
            return observations[:, -1, :1] + actions[:, -1] + returns_to_go[:, -1:]

    out = tmp_path / "nomask.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(NoMask(), (torch.zeros(1, 8, 3), torch.zeros(1, 8, 1),
                                     torch.zeros(1, 8)), str(out), dynamo=False,
                          input_names=["observations", "actions", "returns_to_go"],
                          output_names=["action"])
    m = onnx.load(str(out))
    onnx.helper.set_model_props(m, props)
    onnx.save(m, str(out))
    with pytest.raises(ModelFileError, match=r"missing \['mask'\]"):
        OnnxPolicy(out)


def test_onnxruntime_gpu_without_a_driver_says_why_it_runs_on_the_cpu(monkeypatch, caplog):
    """The GPU image on a machine without a GPU: one warning at start, then the CPU."""
    import onnxruntime as ort

    import vidt.policy_file as pf

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(pf, "_gpu_visible", lambda: False)
    with caplog.at_level("WARNING", logger="vidt.policy_file"):
        assert pf._providers("auto") == ["CPUExecutionProvider"]
    assert [r.getMessage() for r in caplog.records] == [
        "onnxruntime-gpu is installed but no NVIDIA driver is visible "
        "(/proc/driver/nvidia/version, /dev/nvidiactl): running on the CPU"]
    caplog.clear()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert pf._providers("auto") == ["CPUExecutionProvider"] and not caplog.records
