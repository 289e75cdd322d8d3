"""The transformer and critic: padding never leaks into real tokens; the actor's raw-value
wrapper; the stochastic head."""

from __future__ import annotations

import numpy as np
import torch

from vidt.model.dt import Actor, DecisionTransformer, ModelConfig, ModelSpec, TwinCritic

SPEC = ModelSpec(obs_dim=3, act_dim=2)


def _model(stochastic=False, timestep_embedding=False):
    torch.manual_seed(0)
    cfg = ModelConfig(context_len=5, d_model=16, n_layer=2, n_head=2, dropout=0.0,
                      stochastic=stochastic, timestep_embedding=timestep_embedding)
    return DecisionTransformer(SPEC, cfg).eval()


def _inputs(B=4, K=5, pad=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, K, 3, generator=g)
    a = torch.rand(B, K, 2, generator=g) * 2 - 1
    r = torch.randn(B, K, generator=g)
    mask = torch.ones(B, K)
    mask[:, :pad] = 0
    return s, a, r, mask


def test_padding_values_never_change_real_outputs():
    for stochastic in (False, True):
        m = _model(stochastic)
        s, a, r, mask = _inputs()
        out = m(s, a, r, mask)
        s2, a2, r2 = s.clone(), a.clone(), r.clone()
        s2[:, :2] += 100.0  # garbage in the padding slots
        a2[:, :2] = -a2[:, :2]
        r2[:, :2] = 1e3
        out2 = m(s2, a2, r2, mask)
        torch.testing.assert_close(out[:, 2:], out2[:, 2:], rtol=0, atol=1e-5)


def test_left_padded_window_equals_the_unpadded_one():
    """No positional embedding: a 3-step window padded to 5 acts like the 3 steps alone."""
    m = _model()
    s, a, r, mask = _inputs(pad=2)
    out = m(s, a, r, mask)[:, 2:]
    short_cfg = ModelConfig(**{**m.cfg.__dict__, "context_len": 3})
    short = DecisionTransformer(SPEC, short_cfg).eval()
    short.load_state_dict(m.state_dict())
    out_short = short(s[:, 2:], a[:, 2:], r[:, 2:], torch.ones(4, 3))
    torch.testing.assert_close(out, out_short, rtol=0, atol=1e-5)


def test_causal_future_steps_never_change_the_past():
    m = _model()
    s, a, r, mask = _inputs(pad=0)
    out = m(s, a, r, mask)
    s2 = s.clone()
    s2[:, 3:] += 5.0
    torch.testing.assert_close(out[:, :3], m(s2, a, r, mask)[:, :3])
    # A step's own action token is after its state token: it never informs that step.
    a2 = a.clone()
    a2[:, -1] = 0.123
    torch.testing.assert_close(out[:, -1], m(s, a2, r, mask)[:, -1])


def test_actor_takes_raw_values_and_respects_bounds():
    m = _model()
    actor = Actor(m, state_mean=[1.0, 2.0, 3.0], state_std=[2.0, 2.0, 2.0], reward_scale=0.01,
                  act_low=[-2.0, 0.0], act_high=[2.0, 1.0]).eval()
    s, a, r, mask = _inputs()
    raw_obs = s * 2.0 + torch.tensor([1.0, 2.0, 3.0])
    raw_act = a * torch.tensor([2.0, 0.5]) + torch.tensor([0.0, 0.5])
    out = actor(raw_obs, raw_act, r / 0.01, mask)  # (B, A)
    assert out.shape == (4, 2)
    assert (out[:, 0].abs() <= 2).all() and (out[:, 1] >= 0).all() and (out[:, 1] <= 1).all()
    unit = m(s * mask[..., None], a * mask[..., None], r * mask, mask)[:, -1]
    torch.testing.assert_close(actor.to_unit(out), unit, rtol=0, atol=1e-5)


def test_stochastic_head_log_prob_and_mode():
    m = _model(stochastic=True)
    s, a, r, mask = _inputs()
    dist = m.distribution(s, a, r, mask)
    lp = dist.log_prob(a)
    assert lp.shape == (4, 5) and torch.isfinite(lp).all()
    torch.testing.assert_close(dist.mode, m(s, a, r, mask))
    # log_prob of a tanh-Gaussian matches a direct change of variables.
    base = dist.base
    x = torch.atanh(a.clamp(-0.999999, 0.999999))
    direct = (base.log_prob(x) - torch.log(1 - torch.tanh(x) ** 2)).sum(-1)
    torch.testing.assert_close(lp, direct, rtol=1e-4, atol=1e-3)


def test_twin_critic_heads_are_independent_and_q1_matches():
    torch.manual_seed(0)
    c = TwinCritic(SPEC, hidden=8)
    s, a = torch.randn(4, 5, 3), torch.rand(4, 5, 2)
    q = c(s, a)
    assert q.shape == (2, 4, 5)
    assert not torch.allclose(q[0], q[1])
    torch.testing.assert_close(c.q1(s, a), q[0])


def test_timestep_embedding_switch():
    m = _model(timestep_embedding=True)
    s, a, r, mask = _inputs()
    t = torch.arange(5).repeat(4, 1)
    assert not torch.allclose(m(s, a, r, mask, t), m(s, a, r, mask, t + 7))
    assert np.isfinite(m(s, a, r, mask, t).detach().numpy()).all()


def test_act_last_equals_the_full_forwards_last_step():
    """Acting computes only the last s_t token in the last block (and drops the last a_t
    token); it must give exactly the full forward's last-step action, padding included."""
    for stochastic in (False, True):
        for te in (False, True):
            m = _model(stochastic=stochastic, timestep_embedding=te).eval()
            for pad in (0, 2, 4):
                s, a, r, mask = _inputs(B=6, K=5, pad=pad, seed=pad)
                ts = (torch.arange(5)[None] + torch.randint(0, 50, (6, 1))) * mask.long()
                with torch.no_grad():
                    full = m(s, a, r, mask, ts)[:, -1]
                    last = m.act_last(s, a, r, mask, ts)
                    enc = m.encode(s, a, r, mask, ts)[:, -1]
                    enc_last = m.encode_last(s, a, r, mask, ts)
                torch.testing.assert_close(last, full, atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(enc_last, enc, atol=1e-5, rtol=1e-5)


def test_state_tokens_only_last_block_equals_every_token_and_its_gradients():
    """encode() runs the last block for the K s_t tokens only (what the actor step, the TD
    target and ODT's likelihood read): the hidden states and the gradients they send back to
    every weight equal the plain path's on real tokens."""
    for stochastic in (False, True):
        for te in (False, True):
            for n_layer in (1, 3):
                torch.manual_seed(n_layer)
                m = DecisionTransformer(SPEC, ModelConfig(
                    context_len=5, d_model=16, n_layer=n_layer, n_head=2, dropout=0.0,
                    stochastic=stochastic, timestep_embedding=te)).eval()
                for pad in (0, 3):
                    s, a, r, mask = _inputs(B=6, K=5, pad=pad, seed=pad + 7)
                    ts = (torch.arange(5)[None] + torch.randint(0, 50, (6, 1))) * mask.long()
                    real = mask.bool()
                    got = m.encode(s, a, r, mask, ts)
                    want = m.encode_every_token(s, a, r, mask, ts)
                    assert got.shape == want.shape == (6, 5, 16)
                    torch.testing.assert_close(got[real], want[real], atol=1e-6, rtol=1e-5)
                    w = torch.randn(16)
                    grads = []
                    for h in (got, want):
                        m.zero_grad()
                        (h[real] @ w).square().mean().backward(retain_graph=True)
                        grads.append({n: p.grad.clone() for n, p in m.named_parameters()
                                      if p.grad is not None})
                    assert grads[0].keys() == grads[1].keys() and grads[0]
                    for n in grads[0]:
                        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6,
                                                   rtol=1e-5, msg=n)
