"""Opt-in speed switches give the plain path's results within tolerance. `compile` runs on
the CPU here (inductor with the machine's C++ compiler); `amp_bf16` runs on the CPU (torch
emulates bf16 where the CPU has no bf16 units, so it is correct everywhere, fast only on
CPUs with them) and on CUDA where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidt.data.episode import Episode
from vidt.model.dt import ModelSpec
from vidt.train.buffer import SegmentSampler
from vidt.train.config import resolve
from vidt.train.learner import Learner

S, A = 4, 2


def _episodes(seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for T in (7, 30, 55):
        obs = rng.normal(size=(T + 1, S)).astype(np.float32)
        out.append(Episode(obs[:-1], rng.uniform(-1, 1, (T, A)).astype(np.float32),
                           rng.normal(size=T).astype(np.float32), obs[1:], truncated=True))
    return out


def _run(device: str, updates: int = 3, **switches) -> tuple[list[dict], dict]:
    over = {"device": device, "model.dropout": 0.0, "data.batch_size": 16, **switches}
    cfg = resolve("Pendulum-v1", "vidt", "tiny", overrides=over)
    torch.manual_seed(0)
    L = Learner(cfg, ModelSpec(S, A), np.zeros(S), np.ones(S), -np.ones(A), np.ones(A), device)
    sampler = SegmentSampler(_episodes(), cfg.model.context_len, cfg.data.reward_scale)
    rng = np.random.default_rng(0)
    torch.manual_seed(1)  # the TD target's smoothing noise
    infos = [L.update(sampler, rng, rl=True) for _ in range(updates)]
    return infos, {k: v.detach().float().cpu() for k, v in L.actor.model.state_dict().items()}


def _close(a: tuple, b: tuple, tol: float) -> None:
    (ia, pa), (ib, pb) = a, b
    for x, y in zip(ia, ib):
        for k in ("actor_loss", "critic_loss", "supervised_loss", "rl_loss"):
            assert x[k] == pytest.approx(y[k], rel=tol, abs=tol), k
    worst = max((pa[k] - pb[k]).abs().max().item() for k in pa)
    assert worst < tol, worst


@pytest.mark.timeout(600)
def test_compile_switch_matches_the_plain_path():
    _close(_run("cpu", compile=True), _run("cpu"), tol=1e-4)


def test_bf16_switch_matches_the_plain_path_on_cpu():
    a, b = _run("cpu", amp_bf16=True), _run("cpu")
    _close(a, b, tol=5e-2)
    assert a[0][0]["critic_loss"] != b[0][0]["critic_loss"]  # bf16 did run: not bit-equal


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_switch_matches_the_plain_path_on_cuda():
    _close(_run("cuda", amp_bf16=True), _run("cuda"), tol=5e-2)
