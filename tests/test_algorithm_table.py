"""The algorithm table is the one place an algorithm is declared: a new entry (and its loss
function) trains end to end through the CLI and exports, with nothing else touched; an
unknown name is refused everywhere with the list of known ones."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vidt.train import algos
from vidt.train.algos import ALGORITHMS, Algorithm
from vidt.train.losses import masked_mean


def l1_loss(learner, batch, supervised_coef, rl_coef):
    """A throwaway algorithm's loss: mean absolute error to the data's actions."""
    pred = learner.train_model(*batch.inputs)
    l1 = masked_mean((pred - batch.actions).abs().mean(-1), batch.mask)
    loss = supervised_coef * l1
    return loss, {"supervised_loss": l1.item(), "actor_loss": loss.item()}


BC_L1 = Algorithm("bc-l1", stochastic=False, critic=False, supervised_coef=1.0, rl_coef=0.0,
                  pretrain_supervised_coef=1.0, loss=l1_loss,
                  notes="behaviour cloning with an L1 loss (a test's throwaway)")


@pytest.fixture
def fifth_algorithm(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, BC_L1.name, BC_L1)
    return BC_L1


@pytest.mark.timeout(300)
def test_a_new_table_entry_trains_through_the_cli_and_exports(fifth_algorithm, run_cli,
                                                              tmp_path, monkeypatch):
    called = []

    def counting(*a):
        called.append(1)
        return l1_loss(*a)

    monkeypatch.setitem(ALGORITHMS, BC_L1.name, dataclasses.replace(BC_L1, loss=counting))
    run = tmp_path / "run"
    res = run_cli("train", "--env", "vidt/OneState-v0", "--preset", "tiny", "--algo", "bc-l1",
                  "--online-steps", "128", "--out", str(run), "--json", "--no-progress")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["algo"] == "bc-l1" and summary["online_env_steps"] >= 128
    assert len(called) == summary["actor_updates"] > 0  # every actor step used its loss
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert "critic" not in ckpt["learner"] and "log_temperature" not in ckpt["learner"]
    res = run_cli("export", str(run), "--out", str(tmp_path / "bc.onnx"), "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["metadata"]["algo"] == "bc-l1"


def test_the_cli_lists_the_table(fifth_algorithm, run_cli):
    res = run_cli("train", "--help")
    assert f"[{'|'.join(ALGORITHMS)}]" in res.stdout and ALGORITHMS.keys() >= {"bc-l1"}
    for a in ALGORITHMS.values():
        assert a.name in res.stdout


@pytest.mark.parametrize("where", ["resolve", "cli", "config"])
def test_an_unknown_name_is_refused_with_the_known_ones(where, run_cli):
    from vidt.errors import ConfigError
    from vidt.train.config import TrainConfig, resolve

    known = ", ".join(ALGORITHMS)
    if where == "cli":
        res = run_cli("train", "--env", "Pendulum-v1", "--algo", "ppo", "--dry-run")
        assert res.exit_code == 2 and "ppo" in res.stderr and "vidt" in res.stderr
        return
    with pytest.raises(ConfigError, match=f"unknown algo 'ppo': choose one of {known}"):
        resolve("Pendulum-v1", "ppo") if where == "resolve" else TrainConfig(algo="ppo")


def test_every_consumer_reads_the_table():
    # the learner, trainer and benchmarks name no algorithm; only the table does
    import inspect

    from vidt.train import config, learner, trainer

    for mod in (learner, trainer, config):
        src = inspect.getsource(mod)
        for name in ALGORITHMS:
            assert f'"{name}"' not in src, (mod.__name__, name)
    assert set(algos.ALGORITHMS) >= {"vidt", "odt", "td3"}


def test_the_docs_table_lists_the_algorithms():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "algorithm.md").read_text()
    section = doc.split("### The algorithms, one trainer")[1].split("###")[0]
    rows = [ln.split("|")[1].strip() for ln in section.splitlines() if ln.startswith("| `")][1:]
    assert [r.split("`")[1] for r in rows] == list(ALGORITHMS)
