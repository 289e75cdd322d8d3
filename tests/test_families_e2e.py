"""The paper's other env families (gymnasium-robotics: `vidt[robotics]`, which `vidt[dev]`
installs, so these run in CI rather than skip) through the whole CLI path a user takes:
collect -> train -> export -> serve -> eval. Budgets are cut to the bone: the point is that
every stage takes these envs (the mazes' Dict observations, flattened the same way in
training and serving; the hand's 24 actions; each family's settings), not that anything
learns."""

from __future__ import annotations

import csv
import json

import pytest
from serving_util import running_server

from vidt.envs import get_family, make_env
from vidt.serving.runtime import OnnxPolicy

# One env per family. 300 collected steps are three pen episodes, or one maze episode or the
# start of one.
FAMILIES = ["AdroitHandPen-v1", "AntMaze_UMaze-v5", "PointMaze_UMaze-v3"]
TINY = ["--preset", "tiny", "--pretrain-updates", "5", "--online-steps", "100",
        "--set", "online.min_steps_per_iter=100", "--set", "online.updates_per_iter=5",
        "--set", "eval.episodes=1", "--no-progress"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("env_id", FAMILIES)
def test_a_family_runs_from_collection_to_served_evaluation(run_cli, tmp_path, env_id):
    assert get_family(env_id).requires == "robotics"  # the family this test stands for, not a generic env
    res = run_cli("collect", "--env", env_id, "--steps", "300", "--out", str(tmp_path / "data"),
                  "--json")
    assert res.exit_code == 0, res.stderr
    run = tmp_path / "run"
    res = run_cli("train", "--env", env_id, "--dataset", str(tmp_path / "data"), *TINY,
                  "--out", str(run), "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["online_env_steps"] >= 100
    cfg = json.loads((run / "config.json").read_text())
    res = run_cli("export", str(run), "--out", str(tmp_path / "p.onnx"), "--json")
    assert res.exit_code == 0, res.stderr
    meta = json.loads(res.stdout)["metadata"]
    assert meta["env_id"] == env_id
    with running_server(OnnxPolicy(tmp_path / "p.onnx", provider="cpu",
                                   intra_op_threads=1)) as srv:
        res = run_cli("eval", "--server", srv.address, "--episodes", "1",
                      "--seed", str(cfg["eval"]["seed"]), "--json", "--no-progress")
    assert res.exit_code == 0, res.stderr
    served = json.loads(res.stdout)
    assert served["episodes"] == 1  # of the served policy's env: eval was given no --env
    # The served export scores what the trainer's own evaluation of the same actor scored, on
    # the same seed (a real check on the hand's dense reward; the mazes' sparse goal reward
    # stays 0 for an untrained actor, so there it checks the episode ran to its end).
    with open(run / "metrics.csv") as f:
        trained = [float(r["eval_return_mean"]) for r in csv.DictReader(f)
                   if r["eval_return_mean"]][-1]
    assert served["return_mean"] == pytest.approx(trained, rel=1e-5, abs=1e-5)
    assert served["lengths"] == [make_env(env_id).spec.max_episode_steps]
