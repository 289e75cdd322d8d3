"""What each algorithm optimises in each phase, checked by what the actor's update does (not by
reading the config): a step that is skipped, or a term that is on where it should be off,
changes the weights differently and fails here. And the table's coefficients against
docs/algorithm.md's, in the table and in a resolved config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vidt.data.episode import random_episodes
from vidt.model.dt import ModelSpec
from vidt.train.algos import ALGORITHMS
from vidt.train.buffer import SegmentSampler
from vidt.train.config import resolve
from vidt.train.learner import Learner
from vidt.train.trainer import train

S, A = 3, 1


def _sampler(cfg) -> SegmentSampler:
    return SegmentSampler(random_episodes(S, A, (6, 11, 17)), cfg.model.context_len,
                          cfg.data.reward_scale)


def _learner(algo: str, **over) -> tuple[Learner, SegmentSampler]:
    cfg = resolve("Pendulum-v1", algo, "tiny",
                  overrides={"model.dropout": 0.0, "data.batch_size": 8, **over})
    torch.manual_seed(0)
    L = Learner(cfg, ModelSpec(S, A), np.zeros(S), np.ones(S), -np.ones(A), np.ones(A))
    return L, _sampler(cfg)


def _weights(L: Learner) -> dict:
    return {k: v.detach().clone() for k, v in L.actor.model.state_dict().items()}


def _updated(algo: str, rl: bool, **over) -> tuple[dict, dict]:
    L, sampler = _learner(algo, **over)
    torch.manual_seed(1)
    info = L.update(sampler, np.random.default_rng(0), rl=rl)
    return _weights(L), info


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_td3_pretrains_with_the_supervised_loss_like_vidt():
    # The paper's TD3 row: the same supervised pretraining as ViDT (authors' main.py:439-440).
    w_td3, info = _updated("td3", rl=False)
    w_vidt, _ = _updated("vidt", rl=False)
    assert _same(w_td3, w_vidt)
    assert "rl_loss" not in info and info["actor_loss"] == pytest.approx(info["supervised_loss"])


def test_td3_trains_online_with_the_rl_term_only():
    _, info = _updated("td3", rl=True)
    assert info["actor_loss"] == pytest.approx(0.1 * info["rl_loss"], rel=1e-6)
    # and that is a different step from ViDT's (supervised + RL) and from pure supervision
    w_td3, _ = _updated("td3", rl=True)
    assert not _same(w_td3, _updated("vidt", rl=True)[0])
    assert not _same(w_td3, _updated("vidt", rl=True, **{"loss.rl_coef": 0.0})[0])


def test_td3_old_behaviour_is_one_set_away():
    # Before 2026-12 td3 pretrained with the RL term alone; the trainer pretrains with
    # rl=loss.rl_from_start, so that is `--set loss.rl_from_start=true`.
    L, _ = _learner("td3", **{"loss.rl_from_start": True})
    assert L.cfg.loss.rl_from_start
    w_old, info = _updated("td3", rl=L.cfg.loss.rl_from_start)
    assert info["actor_loss"] == pytest.approx(0.1 * info["rl_loss"], rel=1e-6)
    assert not _same(w_old, _updated("td3", rl=False)[0])


@pytest.mark.parametrize("algo", list(ALGORITHMS))
@pytest.mark.parametrize("rl", [False, True])
def test_every_update_moves_the_actor(algo, rl):
    L, sampler = _learner(algo)
    before = _weights(L)
    n0 = L.actor_updates
    L.update(sampler, np.random.default_rng(0), rl=rl)
    assert L.actor_updates == n0 + 1
    after = _weights(L)
    assert not _same(before, after), f"{algo}: the actor step did not change the actor"
    if L.critic is not None:
        assert L.critic_updates == L.cfg.loss.actor_update_interval


@pytest.mark.timeout(300)
def test_td3_trains_end_to_end_and_improves_on_the_one_state_task(tmp_path):
    cfg = resolve("vidt/OneState-v0", "td3", "tiny", overrides={"seed": 0, "device": "cpu"})
    res = train(cfg, tmp_path / "td3")
    online = [r for r in res.metrics if r["phase"] == "online"]
    start = res.metrics[0]["eval_return_mean"]  # the pretrained actor, before any online step
    assert res.metrics[0]["phase"] == "pretrain"
    assert max(r["eval_return_mean"] for r in online) > start + 0.3, (start, online[-1])


# ---------------------------------------------------------------- the table against the docs

DOC = Path(__file__).resolve().parents[1] / "docs" / "algorithm.md"
COEFS = ("supervised_coef", "rl_coef", "pretrain_supervised_coef")


def _doc_table() -> dict[str, dict[str, str]]:
    """docs/algorithm.md's "The algorithms, one trainer" table: {algo: {column: cell}}, a
    column named by its first `code` span (`loss.rl_coef` (alpha) -> loss.rl_coef)."""
    section = DOC.read_text().split("### The algorithms, one trainer")[1].split("\n### ")[0]
    lines = [ln.strip().strip("|") for ln in section.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.split("|")] for ln in lines]
    header = [c.split("`")[1] if "`" in c else c for c in cells[0]]
    rows = {}
    for row in cells[2:]:
        assert len(row) == len(header), row
        rows[row[0].split("`")[1]] = dict(zip(header, row))
    return rows


def test_the_docs_table_states_each_algorithms_coefficients():
    doc = _doc_table()
    assert list(doc) == list(ALGORITHMS)
    for name, row in doc.items():
        a = ALGORITHMS[name]
        for key in COEFS:
            assert getattr(a, key) == float(row[f"loss.{key}"]), (name, key)
        assert a.critic == (row["critic"] != "none"), name
        assert a.stochastic == ("Gaussian" in row["actor head"]), name


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_a_run_gets_the_documented_coefficients(name):
    # Through the config: a MuJoCo env (no alpha of its own) runs the table's coefficients.
    row = _doc_table()[name]
    loss = resolve("Hopper-v5", name, "tiny").loss
    assert {k: getattr(loss, k) for k in COEFS} == {k: float(row[f"loss.{k}"]) for k in COEFS}


def test_the_anchored_variant_is_declared_in_the_algorithm_table_alone():
    """vidt-anchor is a row of vidt/train/algos.py and a coefficient of the loss: nothing else
    in the package names it."""
    root = Path(__file__).resolve().parents[1]
    naming = sorted(str(p.relative_to(root)) for d in ("vidt", "cli", "serving")
                    for p in (root / d).rglob("*.py") if "vidt-anchor" in p.read_text())
    assert naming == ["vidt/train/algos.py"]
