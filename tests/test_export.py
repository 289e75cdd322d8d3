"""Actor -> ONNX export: parity with PyTorch, metadata, one self-contained file, refusals."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch

from vidt.errors import ConfigError, ModelFileError
from vidt.export import export_actor, random_windows, rollout_windows
from vidt.model import Actor, DecisionTransformer, ModelConfig, ModelSpec
from vidt.policy_file import FORMAT_VERSION, OnnxPolicy, PolicyMetadata
from vidt.window import WindowInputs

PENDULUM_META = dict(env_id="Pendulum-v1", algo="vidt", eval_context_len=5,
                     eval_target_return=-150.0, max_episode_steps=200, reward_scale=0.01)


def pendulum_actor(seed: int = 0, **cfg) -> Actor:
    """A small random-weight actor with Pendulum-v1's sizes and made-up state statistics."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"context_len": 8, "d_model": 32, "n_layer": 2, "n_head": 2, **cfg})
    dt = DecisionTransformer(ModelSpec(obs_dim=3, act_dim=1), cfg)
    return Actor(dt, state_mean=[0.1, -0.2, 0.3], state_std=[0.7, 0.7, 3.0],
                 reward_scale=0.01, act_low=[-2.0], act_high=[2.0]).eval()


def torch_actions(actor: Actor, w: WindowInputs) -> np.ndarray:
    feed = [torch.from_numpy(v) for v in w.as_feed().values()]
    ts = torch.from_numpy(w.timesteps) if actor.model.embed_time is not None else None
    with torch.inference_mode():
        return actor(*feed, ts).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    actor = pendulum_actor()
    path = tmp_path_factory.mktemp("export") / "pendulum.onnx"
    report = export_actor(actor, PENDULUM_META, path)
    return actor, path, report


def test_export_reports_parity_over_1000_mixed_windows(exported):
    _, path, report = exported
    assert report.path == str(path) and path.is_file()
    assert report.n_windows >= 1000
    assert 0 < report.n_real_windows < report.n_windows  # Pendulum rollouts and random windows
    assert 0.0 <= report.max_abs_diff <= 1e-4
    assert report.opset == 17 and report.size_bytes == path.stat().st_size


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_parity_eager_vs_onnxruntime(exported, batch):
    actor, path, _ = exported
    policy = OnnxPolicy(path, provider="cpu")
    rng = np.random.default_rng(batch)
    windows = random_windows(actor, batch, rng, target_return=-150.0)
    got = policy.predict(windows)
    assert got.shape == (batch, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, torch_actions(actor, windows), atol=1e-4, rtol=0)
    assert (np.abs(got) <= 2.0).all()  # Pendulum's bounds, applied inside the graph
    # and real windows, from rollouts of the exported policy in Pendulum-v1
    real = rollout_windows(policy.predict, policy.metadata, batch, seed=batch)
    assert real.mask.shape == (batch, 8)
    np.testing.assert_allclose(policy.predict(real), torch_actions(actor, real), atol=1e-4, rtol=0)


def test_one_self_contained_file_that_passes_the_checker(exported):
    _, path, _ = exported
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no .data, no temp
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["observations", "actions", "returns_to_go",
                                                   "mask"]
    assert [o.name for o in model.graph.output] == ["action"]


def test_metadata_round_trip(exported):
    actor, path, report = exported
    meta = OnnxPolicy(path, provider="cpu").metadata
    assert meta == report.metadata
    assert (meta.env_id, meta.algo, meta.model_name) == ("Pendulum-v1", "vidt", "pendulum")
    assert (meta.obs_dim, meta.act_dim, meta.context_len, meta.eval_context_len) == (3, 1, 8, 5)
    assert (meta.action_low, meta.action_high) == ((-2.0,), (2.0,))
    assert (meta.default_target_return, meta.reward_scale, meta.max_episode_steps) == (
        -150.0, 0.01, 200)
    assert len(meta.model_version) == 16
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props == meta.to_props()
    assert all(k.startswith("vidt.") for k in props)
    assert json.loads(props["vidt.action_low"]) == [-2.0]
    assert PolicyMetadata.from_props(props) == meta
    assert meta.reward_offset == 0.0


def test_metadata_codec_round_trips_every_field():
    # No field keeps its default, so each is written and read back through its type's codec.
    meta = PolicyMetadata(
        format_version=FORMAT_VERSION, version="9.9", algo="odt", env_id="Hopper-v5",
        model_name="m", obs_dim=11, act_dim=2, action_low=[-1, -0.5], action_high=(1.0, 0.25),
        context_len=20, eval_context_len=10, default_target_return=np.float64(3600.5),
        reward_scale=0.001, max_episode_steps=1000, model_version="0123456789abcdef",
        reward_offset=-1.0, reward_divisor=100.0, actor_selection="best")
    props = meta.to_props()
    assert sorted(props) == sorted(f"vidt.{f.name}" for f in dataclasses.fields(meta))
    assert all(isinstance(v, str) for v in props.values())
    assert (props["vidt.action_low"], props["vidt.default_target_return"]) == (
        "[-1.0, -0.5]", "3600.5")
    assert PolicyMetadata.from_props(props) == meta
    assert meta.action_low == (-1.0, -0.5)  # bounds are tuples of floats, however given


def test_readme_describes_the_file_as_it_is():
    # README's table of the graph's tensors and its list of metadata keys, against the format.
    from pathlib import Path

    from vidt.policy_file import INPUTS, OUTPUT, TIMESTEPS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [f"input {t.name}" for t in (*INPUTS, TIMESTEPS) if f"| input `{t.name}`" not in readme]
    missing += [f"output {OUTPUT.name}"] if f"| output `{OUTPUT.name}`" not in readme else []
    missing += [f"vidt.{f.name}" for f in dataclasses.fields(PolicyMetadata)
                if f"`vidt.{f.name}`" not in readme]
    assert not missing, f"README.md does not describe {missing}"


def test_actor_files_of_older_versions_export(tmp_path):
    # Actor files written before the run's metadata had default_target_return,
    # reward_offset, reward_divisor and actor_selection still export, with their defaults.
    from vidt.export import export
    from vidt.train.checkpoint import ACTOR, actor_payload, atomic_save

    old = {**PENDULUM_META, "seed": 0, "model_name": "old", "context_len": 8, "obs_dim": 3,
           "act_dim": 1, "action_low": [-2.0], "action_high": [2.0], "stochastic": False}
    atomic_save(actor_payload(pendulum_actor(), old), tmp_path / ACTOR)
    m = export(tmp_path, tmp_path / "old.onnx", n_windows=64).metadata
    assert (m.model_name, m.default_target_return, m.reward_offset, m.reward_divisor,
            m.actor_selection) == ("old", -150.0, 0.0, 1.0, "")


def test_reward_offset_travels_in_the_file_and_older_files_read_as_zero(tmp_path):
    actor = pendulum_actor()
    report = export_actor(actor, {**PENDULUM_META, "reward_offset": -1.0}, tmp_path / "p.onnx")
    policy = OnnxPolicy(tmp_path / "p.onnx", provider="cpu")
    assert policy.metadata.reward_offset == -1.0 == report.metadata.reward_offset
    window = policy.new_window(10.0)
    for reward in (0.0, 0.5, 2.0):  # the first step's reward is ignored
        window.observe(np.zeros(3), reward)
        window.record_action([0.0])
    assert window.return_to_go == pytest.approx(10.0 - (0.5 - 1) - (2.0 - 1))
    props = policy.metadata.to_props()
    del props["vidt.reward_offset"]  # as written by vidt before the key existed
    assert PolicyMetadata.from_props(props).reward_offset == 0.0


def test_reward_divisor_travels_in_the_file_and_older_files_read_as_one(tmp_path):
    # Adroit: the actor learned from rewards / 100, so its target returns are in those units.
    actor = pendulum_actor()
    export_actor(actor, {**PENDULUM_META, "reward_offset": -1.0, "reward_divisor": 100.0},
                 tmp_path / "p.onnx")
    policy = OnnxPolicy(tmp_path / "p.onnx", provider="cpu")
    assert policy.metadata.reward_divisor == 100.0
    window = policy.new_window(10.0)
    for reward in (0.0, 51.0, 201.0):
        window.observe(np.zeros(3), reward)
        window.record_action([0.0])
    assert window.return_to_go == pytest.approx(10.0 - 0.5 - 2.0)
    assert window.total_reward == 252.0  # the env's own return
    props = policy.metadata.to_props()
    del props["vidt.reward_divisor"]
    assert PolicyMetadata.from_props(props).reward_divisor == 1.0
    props["vidt.reward_divisor"] = "0"
    with pytest.raises(ModelFileError, match="reward_divisor"):
        PolicyMetadata.from_props(props)


def test_model_version_is_a_content_hash(exported, tmp_path):
    actor, _, report = exported
    again = export_actor(actor, PENDULUM_META, tmp_path / "pendulum.onnx", n_windows=64)
    other = export_actor(pendulum_actor(seed=1), PENDULUM_META, tmp_path / "pendulum2.onnx",
                         n_windows=64, model_name="pendulum")
    assert again.metadata.model_version == report.metadata.model_version
    assert other.metadata.model_version != report.metadata.model_version
    # The same weights labelled as a run's best actor, or by another vidt release: one model.
    for label in ({"actor_selection": "best"}, {"version": "0.0.0-elsewhere"}):
        relabelled = export_actor(actor, {**PENDULUM_META, **label},
                                  tmp_path / "relabelled.onnx", n_windows=64,
                                  model_name="pendulum")
        assert relabelled.metadata.model_version == report.metadata.model_version, label


def test_non_finite_weights_are_refused(tmp_path):
    actor = pendulum_actor()
    with torch.no_grad():
        actor.model.blocks[0].mlp[0].weight[0, 0] = float("nan")
    out = tmp_path / "nan.onnx"
    with pytest.raises(ModelFileError, match=r"non-finite .*blocks\.0\.mlp\.0\.weight"):
        export_actor(actor, PENDULUM_META, out)
    assert list(tmp_path.iterdir()) == []


class NoisyActor(Actor):
    """An actor whose graph cannot match eager PyTorch: fresh noise on every call."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        return out + 0.01 * torch.randn_like(out)


def test_parity_failure_writes_nothing(tmp_path):
    src = pendulum_actor()
    noisy = NoisyActor(src.model, src.state_mean, src.state_std, 0.01, [-2.0], [2.0])
    out = tmp_path / "noisy.onnx"
    with pytest.raises(ModelFileError, match="disagree by"):
        export_actor(noisy, PENDULUM_META, out, n_windows=64)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_export(exported, tmp_path):
    actor, path, _ = exported
    out = tmp_path / "p.onnx"
    out.write_bytes(path.read_bytes())
    bad = pendulum_actor()
    with torch.no_grad():
        bad.model.head.bias.fill_(float("inf"))
    with pytest.raises(ModelFileError):
        export_actor(bad, PENDULUM_META, out)
    assert out.read_bytes() == path.read_bytes()


def test_mismatched_run_metadata_and_bad_opset_are_refused(tmp_path):
    actor = pendulum_actor()
    with pytest.raises(ModelFileError, match="obs_dim=4"):
        export_actor(actor, {**PENDULUM_META, "obs_dim": 4}, tmp_path / "a.onnx")
    with pytest.raises(ModelFileError, match="action_high"):
        export_actor(actor, {**PENDULUM_META, "action_high": [1.0]}, tmp_path / "a.onnx")
    with pytest.raises(ConfigError, match="opset"):
        export_actor(actor, PENDULUM_META, tmp_path / "a.onnx", opset=11)
    assert list(tmp_path.iterdir()) == []


def test_timestep_embedding_adds_a_timesteps_input(tmp_path):
    actor = pendulum_actor(timestep_embedding=True, max_timestep=256)
    report = export_actor(actor, PENDULUM_META, tmp_path / "ts.onnx", n_windows=128)
    assert report.max_abs_diff <= 1e-4
    policy = OnnxPolicy(tmp_path / "ts.onnx", provider="cpu")
    assert [i.name for i in policy.session.get_inputs()][-1] == "timesteps"
    w = random_windows(actor, 7, np.random.default_rng(0), -150.0)
    np.testing.assert_allclose(policy.predict(w), torch_actions(actor, w), atol=1e-4, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("vidt.train.checkpoint") is None
                    or importlib.util.find_spec("vidt.cli.train") is None,
                    reason="needs the trainer (vidt.train.checkpoint, vidt train)")
def test_cli_exports_a_tiny_trained_run(run_cli, tmp_path):
    run = tmp_path / "run"
    res = run_cli("train", "--env", "vidt/OneState-v0", "--preset", "tiny", "--online-steps", "0",
                  "--pretrain-updates", "20", "--no-progress", "--out", str(run))
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "policy.onnx"
    res = run_cli("export", str(run), "--out", str(out), "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["path"] == str(out) and report["max_abs_diff"] <= 1e-4
    assert report["metadata"]["env_id"] == "vidt/OneState-v0"
    policy = OnnxPolicy(out, provider="cpu")
    assert policy.metadata == PolicyMetadata(**{
        **report["metadata"], "action_low": tuple(report["metadata"]["action_low"]),
        "action_high": tuple(report["metadata"]["action_high"])})
    res = run_cli("export", str(run), "--out", str(tmp_path / "again.onnx"))
    assert res.exit_code == 0 and "Parity: max |torch - onnxruntime|" in res.stdout


def test_cli_export_errors_are_one_line(run_cli, tmp_path):
    res = run_cli("export", str(tmp_path / "missing-run"))
    assert res.exit_code == 1 and "does not exist" in res.stderr  # as every missing input
    res = run_cli("export", str(tmp_path), "--opset", "9")
    assert res.exit_code == 2 and "opset" in res.stderr


def test_stochastic_head_exports_its_mode(tmp_path):
    actor = pendulum_actor(stochastic=True)
    report = export_actor(actor, {**PENDULUM_META, "algo": "odt"}, tmp_path / "odt.onnx",
                          n_windows=128)
    assert report.max_abs_diff <= 1e-4 and report.metadata.algo == "odt"
    policy = OnnxPolicy(tmp_path / "odt.onnx", provider="cpu")
    w = random_windows(actor, 7, np.random.default_rng(1), -150.0)
    s, a, r, m = (torch.from_numpy(v) for v in w.as_feed().values())
    with torch.inference_mode():  # the tanh-Gaussian's mode, mapped onto the bounds
        mode = actor.model.distribution(actor.normalize_states(s) * m[..., None],
                                        actor.to_unit(a) * m[..., None],
                                        r * actor.reward_scale * m, m).mode[:, -1]
    np.testing.assert_allclose(policy.predict(w), actor.from_unit(mode).numpy(), atol=1e-4)


def test_the_exporter_accounts_for_every_fact_the_run_and_the_file_share():
    # The run's actor file (ActorMeta) and the ONNX file (PolicyMetadata) share PolicyFacts'
    # field definitions; the exporter copies each shared fact from the run or takes it from
    # the actor, so a fact added to PolicyFacts without export code fails here.
    from dataclasses import fields

    from vidt.export.export import FROM_ACTOR, PASSED_THROUGH
    from vidt.policy_file import PolicyFacts
    from vidt.train.checkpoint import ActorMeta

    assert issubclass(ActorMeta, PolicyFacts) and issubclass(PolicyMetadata, PolicyFacts)
    facts = [f.name for f in fields(PolicyFacts)]
    assert sorted([*PASSED_THROUGH, *FROM_ACTOR, "default_target_return"]) == sorted(facts)
