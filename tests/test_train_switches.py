"""Opt-in speed switches give the plain path's results within tolerance. `compile` runs on
the CPU here (inductor with the machine's C++ compiler); `amp_bf16` runs on the CPU (torch
emulates bf16 where the CPU has no bf16 units, so it is correct everywhere, fast only on
CPUs with them) and on CUDA where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidt.data.episode import Episode, random_episodes
from vidt.model.dt import ModelSpec
from vidt.train.buffer import SegmentSampler
from vidt.train.config import resolve
from vidt.train.learner import Learner

S, A = 4, 2


def _episodes(seed: int = 0) -> list[Episode]:
    return random_episodes(S, A, (7, 30, 55), seed)


def _run(device: str, updates: int = 40, **switches) -> dict:
    """`updates` updates at lr 1e-3 (actor and critic, no warm-up), long enough that the
    actor's actions and the critic's Q values on a probe batch move far more than the
    tolerances below; returns those outputs before and after, and the losses."""
    over = {"device": device, "model.dropout": 0.0, "data.batch_size": 16,
            "optim.actor_lr": 1e-3, "optim.critic_lr": 1e-3, "optim.warmup_steps": 1, **switches}
    cfg = resolve("Pendulum-v1", "vidt", "tiny", overrides=over)
    torch.manual_seed(0)
    L = Learner(cfg, ModelSpec(S, A), np.zeros(S), np.ones(S), -np.ones(A), np.ones(A), device)
    sampler = SegmentSampler(_episodes(), cfg.model.context_len, cfg.data.reward_scale)
    probe = L.batch(sampler, 64, np.random.default_rng(99))

    def outputs():
        with torch.no_grad():
            act = L.actor.model(*probe.inputs).float().cpu()  # (64, K, A)
            q = L.critic(probe.states, probe.actions).float().cpu()  # (2, 64, K)
        return act, q

    before = outputs()
    rng = np.random.default_rng(0)
    torch.manual_seed(1)  # the TD target's smoothing noise
    infos = [L.update(sampler, rng, rl=True) for _ in range(updates)]
    return {"before": before, "after": outputs(), "infos": infos}


def _compare(a: dict, b: dict, act_tol: float, q_tol: float) -> None:
    (a0, q0), (a1, q1), (b1, qb1) = a["before"], a["after"], b["after"]
    # The comparison means something only if training moved the outputs well past it.
    assert (a1 - a0).abs().max() > 10 * act_tol and (q1 - q0).abs().max() > 10 * q_tol
    assert (a1 - b1).abs().max() < act_tol, (a1 - b1).abs().max()
    assert (q1 - qb1).abs().max() < q_tol, (q1 - qb1).abs().max()
    for x, y in zip(a["infos"], b["infos"]):
        for k in ("critic_loss", "supervised_loss", "rl_loss"):
            assert x[k] == pytest.approx(y[k], rel=10 * q_tol, abs=10 * q_tol), k


@pytest.mark.timeout(600)
def test_compile_switch_matches_the_plain_path():
    _compare(_run("cpu", compile=True), _run("cpu"), act_tol=1e-4, q_tol=1e-4)


def test_bf16_switch_matches_the_plain_path_on_cpu():
    # Measured: after 40 updates actions moved ~0.7 and Q ~1.5; bf16 stayed within 0.002 and
    # 0.03 of fp32 (bf16 has 8 bits of mantissa: ~0.4% per product).
    a, b = _run("cpu", amp_bf16=True), _run("cpu")
    _compare(a, b, act_tol=1e-2, q_tol=0.1)
    assert a["infos"][0]["critic_loss"] != b["infos"][0]["critic_loss"]  # bf16 did run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(600)
def test_compile_switch_matches_the_plain_path_on_cuda():
    _compare(_run("cuda", compile=True), _run("cuda"), act_tol=1e-3, q_tol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_switch_matches_the_plain_path_on_cuda():
    _compare(_run("cuda", amp_bf16=True), _run("cuda"), act_tol=1e-2, q_tol=0.1)


def test_bf16_td_target_stays_far_inside_the_smoothing_noise():
    """`bf16_td_target`: only the TD target's no-grad forward runs in bf16. On a learner
    trained for a while, the target actions differ from fp32's by far less than the 0.2
    smoothing noise added to them, and the targets y by far less than that noise moves y."""
    from dataclasses import replace

    over = {"device": "cpu", "model.dropout": 0.0, "data.batch_size": 64,
            "optim.actor_lr": 1e-3, "optim.critic_lr": 1e-3, "optim.warmup_steps": 1}
    cfg = resolve("Pendulum-v1", "vidt", "small", overrides=over)
    torch.manual_seed(0)
    L = Learner(cfg, ModelSpec(S, A), np.zeros(S), np.ones(S), -np.ones(A), np.ones(A), "cpu")
    sampler = SegmentSampler(_episodes(), cfg.model.context_len, cfg.data.reward_scale)
    rng = np.random.default_rng(0)
    torch.manual_seed(1)
    for _ in range(20):
        L.update(sampler, rng, rl=True)
    batch = L.batch(sampler, 128, np.random.default_rng(7))
    m = batch.mask.bool()
    with torch.no_grad():
        a32 = L.actor_target(*batch.target_inputs())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a16 = L.actor_target(*batch.target_inputs()).float()
    act_err = (a16 - a32).abs()[m].max().item()
    ys = []
    for switch in (False, True):
        L.cfg = replace(cfg, bf16_td_target=switch)
        torch.manual_seed(3)  # the same smoothing noise for both
        ys.append(L.td_targets(batch))
    L.cfg = cfg
    y_err = (ys[1] - ys[0]).abs()[m]
    spread = torch.stack([L.td_targets(batch) for _ in range(16)]).std(0)[m]  # the noise's
    noise = cfg.loss.policy_noise  # 0.2
    assert 0 < act_err < noise / 10, act_err
    assert 0 < y_err.mean() < spread.mean() / 5, (y_err.mean(), spread.mean())
    print(f"bf16 TD target: max target-action error {act_err:.4f} (noise {noise}); mean |dy| "
          f"{y_err.mean():.5f} vs the noise's spread of y {spread.mean():.5f}")


def test_bf16_td_target_switch_leaves_the_critic_and_actor_steps_in_fp32():
    """`bf16_td_target=true` through resolve(), as a user sets it: the TD target runs in bf16
    (it differs from fp32's), and nothing else does. A learner with the switch on and a plain
    one, from the same state and batches, the plain one handed the switched one's TD targets:
    every loss, weight and optimiser state after the updates is the same to the bit."""
    over = {"device": "cpu", "model.dropout": 0.0, "data.batch_size": 16,
            "optim.actor_lr": 1e-3, "optim.critic_lr": 1e-3, "optim.warmup_steps": 1}

    def learner(**switches):
        cfg = resolve("Pendulum-v1", "vidt", "tiny", overrides={**over, **switches})
        torch.manual_seed(0)
        return Learner(cfg, ModelSpec(S, A), np.zeros(S), np.ones(S), -np.ones(A), np.ones(A))

    def run(L):
        sampler = SegmentSampler(_episodes(), L.cfg.model.context_len, L.cfg.data.reward_scale)
        rng = np.random.default_rng(0)
        return [L.update(sampler, rng, rl=True) for _ in range(3)]

    switched = learner(bf16_td_target=True)
    assert switched.cfg.bf16_td_target and switched.cfg.loss.actor_update_interval > 1
    calls = []  # per update: the batch, the torch RNG state (the smoothing noise), y
    real = switched.td_targets

    def recorded(batch):
        state = torch.get_rng_state()
        y = real(batch)
        calls.append((batch, state, y))
        return y

    switched.td_targets = recorded
    infos_switched = run(switched)

    plain = learner()
    assert not plain.cfg.bf16_td_target
    fp32_real, given = plain.td_targets, iter(calls)

    def handed(batch):
        b16, state, y16 = next(given)
        assert torch.equal(batch.states, b16.states)  # the same batches, in the same order
        torch.set_rng_state(state)
        y32 = fp32_real(batch)  # the same noise, in fp32
        assert y16.dtype == y32.dtype == torch.float32
        assert not torch.equal(y16, y32)  # the switch did put the TD target in bf16
        return y16

    plain.td_targets = handed
    infos_plain = run(plain)
    assert infos_switched == infos_plain
    s, p = _flat(switched.state_dict()), _flat(plain.state_dict())
    assert s.keys() == p.keys()
    assert {k.split(".")[0] for k in s} >= {"actor", "critic", "critic_target", "actor_target",
                                            "actor_opt", "critic_opt"}
    for k in s:
        same = torch.equal(s[k], p[k]) if isinstance(s[k], torch.Tensor) else s[k] == p[k]
        assert same, k


def _flat(x, prefix: str = "") -> dict:
    """Every leaf of a nested state dict (weights, optimiser moments, counters), by path."""
    if isinstance(x, (list, tuple)):
        x = dict(enumerate(x))
    if isinstance(x, dict):
        return {path: v for k, sub in x.items() for path, v in _flat(sub, f"{prefix}{k}.").items()}
    return {prefix[:-1]: x}
