"""Losses on hand-made batches, masks in every loss, TD targets, soft updates, LAMB."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from vidt.model.dt import DecisionTransformer, ModelConfig, ModelSpec, TwinCritic
from vidt.train.config import resolve
from vidt.train.learner import Learner, soft_update
from vidt.train.losses import (
    Batch,
    critic_loss,
    deterministic_actor_loss,
    masked_mean,
    stochastic_actor_loss,
    td_target,
)
from vidt.train.optim import Lamb, warmup_lambda

SPEC = ModelSpec(obs_dim=2, act_dim=1)


def _nets(stochastic=False):
    torch.manual_seed(0)
    cfg = ModelConfig(context_len=3, d_model=8, n_layer=1, n_head=2, dropout=0.0, stochastic=stochastic)
    return DecisionTransformer(SPEC, cfg).eval(), TwinCritic(SPEC, hidden=8)


def _batch():
    """Two segments of K = 3; the second is left-padded by one step and ends terminally."""
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1.0, 1, 1], [0, 1, 1]])
    m3 = mask[..., None]
    return Batch(
        states=torch.randn(2, 3, 2, generator=g) * m3,
        actions=(torch.rand(2, 3, 1, generator=g) * 1.8 - 0.9) * m3,
        rewards=torch.tensor([[1.0, 2, 3], [0, 4, 5]]),
        next_states=torch.randn(2, 3, 2, generator=g) * m3,
        rtg=torch.tensor([[6.0, 5, 3, 0], [0, 9, 5, 0]]) * 0.1,
        terminals=torch.tensor([[0.0, 0, 0], [0, 0, 1]]),
        mask=mask, timesteps=torch.tensor([[0, 1, 2], [0, 0, 1]]))


def _garbage_in_padding(b: Batch) -> Batch:
    pad = b.mask == 0
    st, ac, ns, rw, tm = (x.clone() for x in (b.states, b.actions, b.next_states, b.rewards, b.terminals))
    st[pad] = 50.0
    ac[pad] = 0.7
    ns[pad] = -30.0
    rw[pad] = 1e4
    tm[pad] = 1.0
    rtg = b.rtg.clone()
    rtg[:, :-1][pad] = 99.0
    return dataclasses.replace(b, states=st, actions=ac, next_states=ns, rewards=rw, terminals=tm, rtg=rtg)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[1.0, 2.0], [100.0, 4.0]])
    assert masked_mean(x, torch.tensor([[1.0, 1.0], [0.0, 1.0]])).item() == pytest.approx(7 / 3)


def test_vidt_actor_loss_by_hand():
    model, critic = _nets()
    b = _batch()
    loss, info = deterministic_actor_loss(b, model, critic, supervised_coef=1.0, rl_coef=0.1)
    pred = model(b.states, b.actions, b.rtg[:, :-1], b.mask)
    real = b.mask.bool()
    mse = ((pred - b.actions) ** 2)[real].mean()
    q1 = critic(b.states, pred)[0][real].mean()
    assert loss.item() == pytest.approx((mse - 0.1 * q1).item(), rel=1e-5)
    assert info["supervised_loss"] == pytest.approx(mse.item(), rel=1e-5)
    assert info["rl_loss"] == pytest.approx(-q1.item(), rel=1e-5)
    # td3: the RL term only
    loss_td3, _ = deterministic_actor_loss(b, model, critic, supervised_coef=0.0, rl_coef=0.1)
    assert loss_td3.item() == pytest.approx((-0.1 * q1).item(), rel=1e-5)


def test_odt_actor_and_temperature_loss_by_hand():
    model, _ = _nets(stochastic=True)
    b = _batch()
    log_t = torch.tensor(math.log(0.1), requires_grad=True)
    torch.manual_seed(3)
    loss, temp_loss, info = stochastic_actor_loss(b, model, log_t, target_entropy=-1.0)
    torch.manual_seed(3)
    dist = model.distribution(b.states, b.actions, b.rtg[:, :-1], b.mask)
    real = b.mask.bool()
    ll = dist.log_prob(b.actions)[real].mean()
    ent = dist.entropy()[real].mean()
    assert loss.item() == pytest.approx((-ll - 0.1 * ent).item(), rel=1e-4)
    assert temp_loss.item() == pytest.approx((0.1 * (ent + 1.0)).item(), rel=1e-4)
    temp_loss.backward()  # the temperature's gradient has the sign of (entropy - target)
    assert math.copysign(1, log_t.grad.item()) == math.copysign(1, (ent + 1.0).item())
    assert info["temperature"] == pytest.approx(0.1)


def test_td_target_terminal_vs_truncation():
    model, critic = _nets()
    b = _batch()
    torch.manual_seed(0)
    y = td_target(b, model, critic, gamma=0.9, policy_noise=0.0, noise_clip=0.5)
    nxt = model(*b.target_inputs())
    q_next = critic(b.next_states, nxt).min(0).values
    expected = b.rewards + 0.9 * (1 - b.terminals) * q_next
    torch.testing.assert_close(y, expected)
    assert y[1, 2].item() == pytest.approx(5.0)  # terminal: no bootstrap
    # the first segment's last step is a truncation (time limit): it bootstraps
    assert y[0, 2].item() == pytest.approx(3.0 + 0.9 * q_next[0, 2].item(), rel=1e-5)


def test_target_actor_gets_shifted_inputs_and_the_same_mask():
    b = _batch()
    s, a, r, m, t = b.target_inputs()
    torch.testing.assert_close(s, b.next_states)
    torch.testing.assert_close(a[:, :-1], b.actions[:, 1:] * b.mask[:, :-1, None])
    assert (a[:, -1] == 0).all()
    torch.testing.assert_close(r, b.rtg[:, 1:] * b.mask)
    assert m is b.mask
    torch.testing.assert_close(t, b.timesteps + 1)


def test_padding_never_changes_any_loss():
    for stochastic in (False, True):
        model, critic = _nets(stochastic)
        b, g = _batch(), _garbage_in_padding(_batch())
        if stochastic:
            log_t = torch.tensor(math.log(0.1))
            torch.manual_seed(0)
            l1, t1, _ = stochastic_actor_loss(b, model, log_t, -1.0)
            torch.manual_seed(0)
            l2, t2, _ = stochastic_actor_loss(g, model, log_t, -1.0)
            assert l1.item() == pytest.approx(l2.item(), rel=1e-5)
            assert t1.item() == pytest.approx(t2.item(), rel=1e-5)
            continue
        for coefs in ((1.0, 0.1), (0.0, 0.1), (1.0, 0.0)):
            l1, _ = deterministic_actor_loss(b, model, critic, *coefs)
            l2, _ = deterministic_actor_loss(g, model, critic, *coefs)
            assert l1.item() == pytest.approx(l2.item(), rel=1e-5)
        torch.manual_seed(0)
        y1 = td_target(b, model, critic, 0.99, 0.2, 0.5)
        torch.manual_seed(0)
        y2 = td_target(g, model, critic, 0.99, 0.2, 0.5)
        real = b.mask.bool()
        torch.testing.assert_close(y1[real], y2[real])
        assert critic_loss(b, critic, y1)[0].item() == pytest.approx(critic_loss(g, critic, y2)[0].item(), rel=1e-5)


def test_soft_update_and_sync():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    soft_update(a, b, 0.005)
    for p0, pa, pb in zip(before, a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, 0.995 * p0 + 0.005 * pb)
    cfg = resolve("vidt/OneState-v0", "vidt", "tiny")
    L = Learner(cfg, ModelSpec(1, 1), [0.0], [1.0], [-1.0], [1.0])
    with torch.no_grad():
        for p in L.actor.model.parameters():
            p.add_(1.0)
    L.sync_targets()
    for p, q in zip(L.actor.model.parameters(), L.actor_target.parameters()):
        torch.testing.assert_close(p, q)


def test_lamb_matches_the_per_tensor_algorithm():
    torch.manual_seed(0)
    a = [torch.randn(5, 3, requires_grad=True), torch.zeros(3, requires_grad=True)]
    b = [x.detach().clone() for x in a]
    opt = Lamb(a, lr=1e-2, eps=1e-8, weight_decay=5e-4)
    ms, vs = [torch.zeros_like(x) for x in b], [torch.zeros_like(x) for x in b]
    for t in range(1, 6):
        for ps in (a, b):
            for p in ps:
                p.grad = None
        loss = ((a[0] @ torch.ones(3) + a[1].sum()) ** 2).sum()
        loss.backward()
        grads = [p.grad.clone() for p in a]
        opt.step()
        for i, (p, g) in enumerate(zip(b, grads)):
            ms[i] = 0.9 * ms[i] + 0.1 * g
            vs[i] = 0.999 * vs[i] + 0.001 * g * g
            u = (ms[i] / (1 - 0.9**t)) / ((vs[i] / (1 - 0.999**t)).sqrt() + 1e-8) + 5e-4 * p
            wn, un = p.norm(), u.norm()
            ratio = wn / un if wn > 0 and un > 0 else 1.0
            b[i] = p - 1e-2 * ratio * u
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y, rtol=1e-5, atol=1e-6)


def test_warmup_is_linear_then_flat_and_applied_by_the_learner():
    f = warmup_lambda(10)
    assert [round(f(s), 2) for s in (0, 4, 9, 10, 100)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cfg = resolve("vidt/OneState-v0", "odt", "tiny", overrides={"optim.warmup_steps": 4,
                                                               "optim.actor_lr": 1e-3})
    L = Learner(cfg, ModelSpec(1, 1), [0.0], [1.0], [-1.0], [1.0])
    from vidt.data.builtin import onestate_episodes
    from vidt.train.buffer import SegmentSampler

    s = SegmentSampler(onestate_episodes(), 1, 1.0)
    rng = np.random.default_rng(0)
    lrs = [L.update(s, rng, rl=False)["lr"] for _ in range(6)]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_grad_clip_bounds_the_actor_gradient():
    cfg = resolve("vidt/OneState-v0", "vidt", "tiny", overrides={"optim.grad_clip": 1e-3})
    L = Learner(cfg, ModelSpec(1, 1), [0.0], [1.0], [-1.0], [1.0])
    from vidt.data.builtin import onestate_episodes
    from vidt.train.buffer import SegmentSampler

    L.update(SegmentSampler(onestate_episodes(), 1, 1.0), np.random.default_rng(0), rl=True)
    norm = torch.norm(torch.stack([p.grad.norm() for p in L.actor.model.parameters() if p.grad is not None]))
    assert norm.item() <= 1e-3 * 1.0001
    # the actor's RL term never leaves gradients on the critic (its step comes first)
    assert all(p.requires_grad for p in L.critic.parameters())


def test_losses_leave_their_metrics_on_the_device_and_an_update_reads_them_once(monkeypatch):
    # Each `.item()` in a loss would wait for the device: the losses hand back detached
    # tensors, and the learner reads all of an update's to the host in one copy, to the same
    # floats `.item()` gives.
    model, critic = _nets()
    smodel, _ = _nets(stochastic=True)
    b = _batch()
    log_t = torch.tensor(math.log(0.1), requires_grad=True)
    infos = {"critic": critic_loss(b, critic, torch.zeros(2, 3))[1],
             "vidt": deterministic_actor_loss(b, model, critic, 1.0, 0.1)[1],
             "odt": stochastic_actor_loss(b, smodel, log_t, -1.0)[2]}
    for name, info in infos.items():
        for k, v in info.items():
            assert isinstance(v, torch.Tensor) and not v.requires_grad, (name, k, v)

    from vidt.data.builtin import onestate_episodes
    from vidt.train import learner as learner_module
    from vidt.train.buffer import SegmentSampler

    reads = []
    real = learner_module.host_metrics
    monkeypatch.setattr(learner_module, "host_metrics",
                        lambda info: reads.append(dict(info)) or real(info))
    cfg = resolve("vidt/OneState-v0", "vidt", "tiny")
    L = Learner(cfg, ModelSpec(1, 1), [0.0], [1.0], [-1.0], [1.0])
    out = L.update(SegmentSampler(onestate_episodes(), 1, 1.0), np.random.default_rng(0), rl=True)
    assert len(reads) == 1 and out.keys() == reads[0].keys() >= {"critic_loss", "actor_loss"}
    for k, v in reads[0].items():
        want = v.item() if isinstance(v, torch.Tensor) else v
        assert type(out[k]) is float and out[k] == want, k


def test_the_anchor_pulls_the_actor_toward_its_frozen_reference_online_only():
    """vidt-anchor: the reference is the actor as it was at the online start (sync_targets);
    with the supervised and RL terms off, its term alone moves the actor's actions toward
    the reference's, and it is off while pretraining (no RL term)."""
    from vidt.train.losses import deterministic_loss

    cfg = resolve("vidt/OneState-v0", "vidt-anchor", "tiny")
    assert cfg.loss.anchor_coef == 1.0 and resolve("vidt/OneState-v0", "vidt", "tiny").loss.anchor_coef == 0
    L = Learner(cfg, ModelSpec(1, 1), [0.0], [1.0], [-1.0], [1.0])
    L.actor.model.eval()  # no dropout: the gap is a function of the weights alone
    with torch.no_grad():  # what pretraining made of the actor
        for p in L.actor.model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ref = [p.detach().clone() for p in L.actor.model.parameters()]
    L.sync_targets()  # the online start: the reference is frozen here
    for p, q in zip(L.reference.parameters(), ref):
        torch.testing.assert_close(p, q)
    with torch.no_grad():  # the actor drifts away from it (as online steps would move it)
        for p in L.actor.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    K, B = cfg.model.context_len, 64
    batch = Batch(states=torch.randn(B, K, 1, generator=g), actions=torch.zeros(B, K, 1),
                  rewards=torch.zeros(B, K), next_states=torch.randn(B, K, 1, generator=g),
                  rtg=torch.rand(B, K + 1, generator=g), terminals=torch.zeros(B, K),
                  mask=torch.ones(B, K), timesteps=torch.arange(K).repeat(B, 1))

    def gap() -> float:
        with torch.no_grad():
            return float(((L.actor.model(*batch.inputs) - L.reference(*batch.inputs)) ** 2).mean())

    assert gap() > 1e-3
    loss, info = deterministic_loss(L, batch, 0.0, 1e-12)  # online: the anchor term is on
    assert float(info["anchor_loss"]) == pytest.approx(gap(), rel=1e-4)
    _, info = deterministic_loss(L, batch, 1.0, 0.0)  # pretraining: no anchor
    assert "anchor_loss" not in info
    opt = torch.optim.Adam(L.actor.model.parameters(), lr=1e-3)
    before = gap()
    for _ in range(50):
        loss, _ = deterministic_actor_loss(batch, L.actor.model, None, 0.0, 0.0, L.reference, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap() < 0.5 * before
    for p, q in zip(L.reference.parameters(), ref):  # frozen: it never moves
        torch.testing.assert_close(p, q)
    state = L.state_dict()
    L2 = Learner(cfg, ModelSpec(1, 1), [0.0], [1.0], [-1.0], [1.0])
    L2.load_state_dict(state)  # a resumed run anchors to the same reference
    for p, q in zip(L2.reference.parameters(), ref):
        torch.testing.assert_close(p, q)
    # Before the online start nothing pulls, even with the RL term on from the start
    # (loss.rl_from_start): there is no reference yet, not one of the untrained actor.
    L3 = Learner(cfg, ModelSpec(1, 1), [0.0], [1.0], [-1.0], [1.0])
    assert L3.reference is None
    _, info = deterministic_loss(L3, batch, 1.0, 0.1)
    assert "anchor_loss" not in info and "rl_loss" in info
