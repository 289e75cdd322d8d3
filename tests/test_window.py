"""The context window against arrays written out by hand, and against the training segments
the trainer builds from the same episode: what the actor sees when acting is what it was
trained on."""

from __future__ import annotations

import numpy as np
import pytest

from vidt.data.episode import Episode
from vidt.train.buffer import SegmentSampler
from vidt.train.config import resolve
from vidt.train.trainer import learning_rewards
from vidt.window import ContextWindow


def test_window_by_hand_with_left_padding_offset_divisor_and_timesteps():
    # K = 4 slots, acting on the last 3 steps; target 10 in learning units; the agent learned
    # from (r - 1) / 2.
    w = ContextWindow(obs_dim=2, act_dim=1, context_len=4, eval_len=3, target_return=10.0,
                      reward_offset=-1.0, reward_divisor=2.0)
    steps = [  # (observation, reward for the previous action, action taken)
        ([1, 1], 99.0, 0.1),  # the first reward is ignored
        ([2, 2], 3.0, 0.2),   # rtg 10 - (3 - 1) / 2 = 9
        ([3, 3], 5.0, 0.3),   # 9 - 2 = 7
        ([4, 4], 1.0, 0.4),   # 7 - 0 = 7; step 0 leaves the 3-step window
    ]
    expected = [
        dict(obs=[[0, 0], [0, 0], [0, 0], [1, 1]], act=[0, 0, 0, 0], rtg=[0, 0, 0, 10],
             mask=[0, 0, 0, 1], ts=[0, 0, 0, 0]),
        dict(obs=[[0, 0], [0, 0], [1, 1], [2, 2]], act=[0, 0, 0.1, 0], rtg=[0, 0, 10, 9],
             mask=[0, 0, 1, 1], ts=[0, 0, 0, 1]),
        dict(obs=[[0, 0], [1, 1], [2, 2], [3, 3]], act=[0, 0.1, 0.2, 0], rtg=[0, 10, 9, 7],
             mask=[0, 1, 1, 1], ts=[0, 0, 1, 2]),
        dict(obs=[[0, 0], [2, 2], [3, 3], [4, 4]], act=[0, 0.2, 0.3, 0], rtg=[0, 9, 7, 7],
             mask=[0, 1, 1, 1], ts=[0, 1, 2, 3]),
    ]
    for (obs, r, a), exp in zip(steps, expected):
        x = w.observe(np.array(obs, np.float32), r)
        np.testing.assert_array_equal(x.observations[0], np.array(exp["obs"], np.float32))
        np.testing.assert_allclose(x.actions[0, :, 0], exp["act"], rtol=0, atol=1e-7)
        np.testing.assert_array_equal(x.returns_to_go[0], np.array(exp["rtg"], np.float32))
        np.testing.assert_array_equal(x.mask[0], exp["mask"])
        np.testing.assert_array_equal(x.timesteps[0], exp["ts"])
        w.record_action([a])
    assert w.total_reward == 9.0  # the env's own rewards after the first step


@pytest.mark.parametrize("offset,divisor", [(0.0, 1.0), (-1.0, 1.0), (0.0, 100.0)])
def test_acting_window_equals_the_training_segment_of_the_same_episode(offset, divisor):
    # With the target return equal to the episode's own return (in learning units), the
    # window's return-to-go at each step is the hindsight RTG the trainer trains on, and the
    # scale the Actor applies to both is data.reward_scale.
    cfg = resolve("Pendulum-v1", "vidt", "tiny", overrides={
        "data.reward_offset": offset, "data.reward_divisor": divisor,
        "model.context_len": 3, "model.eval_context_len": 3})
    K, T = cfg.model.context_len, 7
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(T + 1, 3)).astype(np.float32)
    env_rewards = rng.uniform(-5, 0, T).astype(np.float32)
    ep = Episode(obs[:-1], rng.uniform(-2, 2, (T, 1)).astype(np.float32), env_rewards, obs[1:],
                 truncated=True)
    learned = learning_rewards(ep, cfg)
    np.testing.assert_allclose(learned.rewards, (env_rewards + offset) / divisor, rtol=1e-6)
    sampler = SegmentSampler([learned], K, cfg.data.reward_scale)
    seg = sampler.sample(512, np.random.default_rng(1))
    full = seg.mask.sum(1) == K
    w = ContextWindow(3, 1, K, K, float(learned.rewards.sum()), offset, divisor)
    for t in range(T):
        x = w.observe(ep.observations[t], env_rewards[t - 1] if t else 0.0)
        w.record_action(ep.actions[t])
        if t < K - 1:
            continue  # the sampler left-pads at an episode's end, the window at its start
        i = np.flatnonzero(full & (seg.timesteps[:, -1] == t))[0]
        np.testing.assert_array_equal(x.observations[0], seg.observations[i])
        np.testing.assert_array_equal(x.actions[0, :-1], seg.actions[i, :-1])
        np.testing.assert_array_equal(x.timesteps[0], seg.timesteps[i])
        np.testing.assert_allclose(x.returns_to_go[0] * cfg.data.reward_scale,
                                   seg.returns_to_go[i, :K], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("eval_len", [2, 4])
@pytest.mark.parametrize("split", [1, 2, 4, 7])
def test_restored_window_is_bit_identical_to_the_stepped_one(eval_len, split):
    # A session resumed on another server rebuilds its window from the last records the
    # client kept; from then on every input the actor sees must be the same bits.
    rng = np.random.default_rng(split)
    n, S, A, K = 10, 3, 2, 4
    obs = rng.normal(size=(n, S)).astype(np.float32)
    rew = rng.normal(size=n) * 7.3
    acts = rng.uniform(-1, 1, (n, A)).astype(np.float32)

    def new():
        return ContextWindow(S, A, K, eval_len, target_return=12.5, reward_offset=-1.0,
                             reward_divisor=3.0)

    full, rtgs = new(), []
    for t in range(split):
        full.observe(obs[t], rew[t])
        full.record_action(acts[t])
        rtgs.append(full.return_to_go)
    keep = min(split, K)  # what a client keeps: the last context_length records
    w = new()
    w.restore(split, obs[split - keep:split], acts[split - keep:split], rtgs[-keep:],
              full.total_reward)
    assert (w.step, w.return_to_go, w.total_reward) == (full.step, full.return_to_go,
                                                        full.total_reward)
    assert w.target_return == pytest.approx(12.5)
    for t in range(split, n):
        a, b = full.observe(obs[t], rew[t]), w.observe(obs[t], rew[t])
        for name in ("observations", "actions", "returns_to_go", "mask", "timesteps"):
            np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
        full.record_action(acts[t])
        w.record_action(acts[t])
    assert w.return_to_go == full.return_to_go and w.total_reward == full.total_reward
