"""From a training run to the network and back: the trainer's evaluation of an actor equals
`vidt eval` against that actor exported and served, with the same seeds; and the run keeps
the actor of its best evaluation beside the last one, which `vidt export --actor` chooses."""

from __future__ import annotations

import csv
import json

import onnx
import pytest
from serving_util import running_server

from vidt.serving.runtime import OnnxPolicy
from vidt.train.checkpoint import load_actor


def _evals(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["eval_return_mean"]) for r in csv.DictReader(f) if r["eval_return_mean"]]


def _served_return(run_cli, onnx_path, env_id: str, episodes: int, seed: int) -> float:
    with running_server(OnnxPolicy(onnx_path, provider="cpu"), host="127.0.0.1") as server:
        res = run_cli("eval", "--server", f"127.0.0.1:{server.port}", "--env", env_id,
                      "--episodes", str(episodes), "--seed", str(seed), "--json",
                      "--no-progress")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)["return_mean"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from vidt.data.collect import collect
    from vidt.train.config import resolve
    from vidt.train.trainer import train

    base = tmp_path_factory.mktemp("run")
    collect("Pendulum-v1", base / "data", 2000, seed=0, policy="random")
    out = base / "pendulum"
    cfg = resolve("Pendulum-v1", "vidt", "tiny", overrides={
        "seed": 3, "device": "cpu", "dataset": str(base / "data"), "online.online_steps": 3000,
        "eval.episodes": 2})
    train(cfg, out)
    return out


@pytest.fixture(scope="module")
def swinging_run(tmp_path_factory):
    """A one-state run whose evaluations go up and down (seed 0 peaks at 1.0 and ends at
    0.997 with this noise), so its best actor is not its last."""
    from vidt.train.config import resolve
    from vidt.train.trainer import train

    out = tmp_path_factory.mktemp("run") / "onestate"
    cfg = resolve("vidt/OneState-v0", "vidt", "tiny", overrides={
        "seed": 0, "device": "cpu", "online.exploration_noise": 0.1})
    train(cfg, out)
    return out


@pytest.mark.timeout(600)
def test_trainer_final_eval_equals_vidt_eval_of_the_served_export(run_cli, run_dir, tmp_path):
    res = run_cli("export", str(run_dir), "--out", str(tmp_path / "last.onnx"), "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["metadata"]["actor_selection"] == "last"
    cfg = json.loads((run_dir / "config.json").read_text())
    served = _served_return(run_cli, tmp_path / "last.onnx", "Pendulum-v1", cfg["eval"]["episodes"],
                            cfg["eval"]["seed"])
    assert served == pytest.approx(_evals(run_dir)[-1], rel=1e-6, abs=1e-6)


@pytest.mark.timeout(600)
def test_the_best_evaluation_actor_is_kept_and_exported_on_request(run_cli, swinging_run,
                                                                    tmp_path):
    run_dir = swinging_run
    evals = _evals(run_dir)
    assert max(evals) > evals[-1]
    actor, meta = load_actor(run_dir, which="best")
    assert meta["actor_selection"] == "best" and meta["selected_eval_return"] == max(evals)
    assert load_actor(run_dir)[1]["actor_selection"] == "last"
    res = run_cli("export", str(run_dir), "--actor", "best", "--out", str(tmp_path / "b.onnx"))
    assert res.exit_code == 0, res.stderr
    assert "(best actor)" in res.stdout
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props}
    assert props["vidt.actor_selection"] == "best"
    cfg = json.loads((run_dir / "config.json").read_text())
    served = _served_return(run_cli, tmp_path / "b.onnx", "vidt/OneState-v0", cfg["eval"]["episodes"],
                            cfg["eval"]["seed"])
    assert served == pytest.approx(max(evals), rel=1e-6, abs=1e-6)


def test_export_best_of_a_run_without_one_is_a_clear_error(run_cli, run_dir, tmp_path):
    other = tmp_path / "old"
    other.mkdir()
    (other / "actor.pt").write_bytes((run_dir / "actor.pt").read_bytes())
    res = run_cli("export", str(other), "--actor", "best", "--out", str(tmp_path / "x.onnx"))
    assert res.exit_code != 0 and "actor_best.pt" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
