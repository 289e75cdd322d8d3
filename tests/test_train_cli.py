"""`vidt train` as a user types it: config resolution, refusals, a tiny real run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from vidt.data import save_d4rl
from vidt.data.episode import Episode
from vidt.errors import ConfigError
from vidt.train.checkpoint import load_actor, load_file
from vidt.train.config import TrainConfig, resolve

ONE = ["train", "--env", "vidt/OneState-v0", "--preset", "tiny"]


def test_config_precedence_and_round_trip(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 7\n[model]\nd_model = 48\nn_head = 4\n[online]\nonline_steps = 640\n')
    cfg = resolve("Pendulum-v1", "vidt", "small", config_file=toml,
                  overrides={"model.d_model": "64", "loss.target_entropy": "none"})
    assert (cfg.seed, cfg.model.d_model, cfg.model.n_head, cfg.online.online_steps) == (7, 64, 4, 640)
    assert cfg.model.context_len == 5 and cfg.data.reward_scale == 0.001  # family defaults
    assert cfg.loss.actor_update_interval == 2 and cfg.optim.critic_lr == 1e-3
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    odt = resolve("Hopper-v5", "odt", "paper")
    assert odt.stochastic and odt.loss.rl_coef == 0 and odt.model.d_model == 512
    assert odt.model.context_len == 20 and odt.online.target_return == 7200
    td3 = resolve("Hopper-v5", "td3", "small")
    assert td3.loss.supervised_coef == 0 and not td3.loss.rl_from_start


@pytest.mark.parametrize("over, match", [
    ({"model.bogus": "1"}, "unknown config key 'model.bogus'"),
    ({"bogus": "1"}, "unknown config key 'bogus'"),
    ({"model.d_model": "wide"}, "cannot read 'wide' as int"),
    ({"model.eval_context_len": "9"}, "eval_context_len must be in"),
    ({"algo": "ppo"}, "unknown algo 'ppo'"),
    ({"preset": "huge"}, "unknown preset 'huge'"),
])
def test_bad_config_refused(over, match):
    with pytest.raises(ConfigError, match=match):
        resolve("Pendulum-v1", overrides=over)


def test_mujoco_collects_1000_steps_per_iteration_from_random_data_only(tmp_path):
    # docs/algorithm.md, MuJoCo row: "random datasets: min 1000 steps per iteration" (else one
    # episode); the dataset's own label decides, and an explicit setting still wins.
    import h5py

    files = {}
    for kind in ("random", "medium"):
        files[kind] = tmp_path / f"hopper-{kind}-v2.hdf5"
        with h5py.File(files[kind], "w") as f:
            f["observations"] = np.zeros((4, 11), np.float32)
    steps = lambda **o: resolve("Hopper-v5", overrides=o).online.min_steps_per_iter  # noqa: E731
    assert steps(dataset=str(files["random"])) == 1000
    assert steps(dataset=str(files["medium"])) == 0
    assert steps() == 0
    assert steps(dataset=str(files["random"]), **{"online.min_steps_per_iter": 5}) == 5
    assert resolve("Pendulum-v1").online.min_steps_per_iter == 1000  # its own family's rule


def test_reward_offset_shifts_what_the_agent_learns_from_not_what_it_reports(run_cli, tmp_path):
    # data.reward_offset (AntMaze: -1) on the one-state task, where every reward is a known
    # function of the action: r(a) = (a+1)^2 for a < 0, 1 - 2a otherwise, so |r| <= 1.
    out = tmp_path / "run"
    r = run_cli(*ONE, "--online-steps", "64", "--pretrain-updates", "5", "--set",
                "data.reward_offset=-5", "--out", str(out), "--json")
    assert r.exit_code == 0, r.stderr
    from vidt.train.buffer import ReplayBuffer

    buf = ReplayBuffer(1)
    buf.load_state_dict(load_file(out / "checkpoint.pt")["buffer"])
    actions = np.concatenate([e.actions[:, 0] for e in buf.episodes])
    rewards = np.concatenate([e.rewards for e in buf.episodes])
    raw = np.where(actions < 0, (actions + 1) ** 2, 1 - 2 * actions)
    assert len(buf.episodes) > 128  # the offline data and the online episodes, all shifted
    np.testing.assert_allclose(rewards, raw - 5, atol=1e-5)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert all(-1 <= float(row["eval_return_mean"]) <= 1 for row in rows)  # the env's own
    assert load_actor(out)[1]["reward_offset"] == -5


def test_dry_run_prints_resolved_config(run_cli, tmp_path):
    r = run_cli(*ONE, "--set", "model.d_model=16", "--out", str(tmp_path / "r"), "--dry-run")
    assert r.exit_code == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["model"]["d_model"] == 16 and cfg["env_id"] == "vidt/OneState-v0"
    assert not (tmp_path / "r").exists()


def test_refusals(run_cli, tmp_path):
    r = run_cli(*ONE, "--set", "model.nope=1", "--out", str(tmp_path / "a"))
    assert r.exit_code == 2 and "unknown config key 'model.nope'" in r.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("mine")
    r = run_cli(*ONE, "--out", str(busy))
    assert r.exit_code == 1 and "not empty" in r.stderr and "--resume" in r.stderr
    r = run_cli(*ONE, "--out", str(tmp_path / "none"), "--resume")
    assert r.exit_code == 1 and "nothing to resume" in r.stderr
    if not torch.cuda.is_available():
        r = run_cli(*ONE, "--device", "cuda", "--out", str(tmp_path / "c"))
        assert r.exit_code == 1 and "CUDA is not available" in r.stderr
    # a dataset whose sizes do not fit the env
    obs = np.zeros((3, 3), np.float32)
    ep = Episode(obs, np.zeros((3, 1), np.float32), np.zeros(3, np.float32), obs, terminated=True)
    save_d4rl(tmp_path / "pend.hdf5", [ep])
    r = run_cli(*ONE, "--dataset", str(tmp_path / "pend.hdf5"), "--out", str(tmp_path / "d"))
    assert r.exit_code == 1 and "3 values per step" in r.stderr and "has 1" in r.stderr


def test_tiny_run_writes_every_artefact(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli(*ONE, "--algo", "odt", "--online-steps", "128", "--pretrain-updates", "20",
                "--out", str(out), "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["online_env_steps"] == 128 and summary["actor_updates"] == 20 + 2 * 50
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [row["phase"] for row in rows] == ["pretrain", "online", "online"]
    for col in ("online_env_steps", "actor_updates", "wall_time_s", "eval_return_mean",
                "eval_return_std", "eval_normalized_score", "actor_loss", "critic_loss"):
        assert col in rows[0]
    assert rows[-1]["eval_normalized_score"] == ""  # no reference for this env
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert any((out / "tb").iterdir())
    assert json.loads((out / "config.json").read_text())["algo"] == "odt"
    actor, meta = load_actor(out)
    assert meta["env_id"] == "vidt/OneState-v0" and meta["algo"] == "odt"
    assert meta["obs_dim"] == 1 and meta["action_low"] == [-1.0] and meta["context_len"] == 1
    a = actor(torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), torch.ones(2, 1), torch.ones(2, 1))
    assert a.shape == (2, 1)
    state = load_file(out / "checkpoint.pt")  # weights_only=True inside
    assert state["counters"]["online_env_steps"] == 128
    # finished: the same out needs --force to start over
    r = run_cli(*ONE, "--out", str(out), "--force", "--online-steps", "64",
                "--pretrain-updates", "5", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["online_env_steps"] == 64
