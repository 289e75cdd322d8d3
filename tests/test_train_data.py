"""Segments, returns-to-go, replay buffer, terminal vs truncation flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidt.data.episode import Episode
from vidt.train.buffer import ReplayBuffer, SegmentSampler, returns_to_go


def _episode(T, ret_per_step=1.0, terminated=False, truncated=True, obs0=0.0):
    obs = (obs0 + np.arange(T, dtype=np.float32))[:, None]
    return Episode(observations=obs, actions=np.full((T, 1), 0.5, np.float32),
                   rewards=np.full(T, ret_per_step, np.float32), next_observations=obs + 1,
                   terminated=terminated, truncated=truncated if not terminated else False)


def test_returns_to_go_is_undiscounted_suffix_sum():
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0])), [6.0, 5.0, 3.0])


def test_segments_left_padded_with_scaled_k_plus_one_rtg():
    ep = Episode(observations=np.arange(4, dtype=np.float32)[:, None],
                 actions=np.zeros((4, 1), np.float32), rewards=np.array([1, 2, 3, 4], np.float32),
                 next_observations=np.arange(1, 5, dtype=np.float32)[:, None], terminated=True)
    s = SegmentSampler([ep], context_len=3, reward_scale=0.1)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = s.sample(8, rng)
        for i in range(8):
            n = int(b.mask[i].sum())
            assert (b.mask[i] == np.r_[np.zeros(3 - n), np.ones(n)]).all()  # left padding
            t = b.observations[i, 3 - n:, 0].astype(int)
            seen.add(tuple(t))
            rtg_full = np.array([10, 9, 7, 4, 0], np.float32) * 0.1  # RTG of steps 0..4
            np.testing.assert_allclose(b.returns_to_go[i, 3 - n:3], rtg_full[t], atol=1e-6)
            np.testing.assert_allclose(b.returns_to_go[i, 3], rtg_full[t[-1] + 1], atol=1e-6)
            # padding slots are exactly zero; the terminal flag only on the episode's last step
            assert (b.observations[i, :3 - n] == 0).all() and (b.returns_to_go[i, :3 - n] == 0).all()
            assert b.terminals[i].sum() == (1.0 if t[-1] == 3 else 0.0)
            np.testing.assert_array_equal(b.timesteps[i, 3 - n:], t)
    # starts are uniform in the episode: windows ending at the episode's end are left-padded
    assert seen == {(0, 1, 2), (1, 2, 3), (2, 3), (3,)}


def test_truncated_episode_has_no_terminal_and_real_next_observation():
    ep = _episode(2, terminated=False, truncated=True)
    b = SegmentSampler([ep], 2, 1.0).sample(16, np.random.default_rng(0))
    assert b.terminals.sum() == 0
    last = b.mask[:, -1] == 1
    assert (b.next_observations[last, -1, 0] == b.observations[last, -1, 0] + 1).all()


def test_episodes_drawn_in_proportion_to_length():
    s = SegmentSampler([_episode(1, obs0=0), _episode(9, obs0=100)], 1, 1.0)
    b = s.sample(4000, np.random.default_rng(0))
    frac_long = (b.observations[:, 0, 0] >= 100).mean()
    assert frac_long == pytest.approx(0.9, abs=0.03)


def test_replay_buffer_seeded_with_best_and_replaces_oldest():
    offline = [_episode(3, ret_per_step=r) for r in (1.0, 5.0, 3.0, 4.0)]
    buf = ReplayBuffer(capacity=3)
    buf.seed_with(offline)
    assert sorted(e.episode_return for e in buf.episodes) == [9.0, 12.0, 15.0]
    first = buf.episodes[0]
    new = _episode(3, ret_per_step=-1.0)
    buf.add(new)
    assert first not in buf.episodes and new in buf.episodes and len(buf) == 3
    # hindsight: RTGs come from the rewards actually observed
    b = buf.sampler(3, 1.0).sample(64, np.random.default_rng(0))
    assert b.returns_to_go.min() < 0


@pytest.mark.parametrize("k", [0, 1, 3, 5, 7])
def test_replay_buffer_evicts_lowest_return_offline_episodes_first(k):
    # ODT's and the authors' replay_buffer.py: offline episodes sorted lowest to highest, the
    # best `capacity` kept, and new episodes overwrite from slot 0, i.e. the worst kept first.
    N, M = 5, 9
    rng = np.random.default_rng(k)
    offline = [_episode(1, ret_per_step=float(r)) for r in rng.permutation(np.arange(1, M + 1))]
    buf = ReplayBuffer(capacity=N)
    buf.seed_with(offline)
    new = [_episode(1, ret_per_step=100.0 + i) for i in range(k)]
    for e in new:
        buf.add(e)
    kept_offline = sorted(e.episode_return for e in buf.episodes if e.episode_return < 100)
    assert kept_offline == [float(r) for r in range(M - (N - min(k, N)) + 1, M + 1)]
    assert len(buf) == N
    assert sorted(e.episode_return for e in buf.episodes if e.episode_return >= 100) == \
        [100.0 + i for i in range(max(0, k - N), k)]


def test_buffer_state_round_trip_through_weights_only_load(tmp_path):
    buf = ReplayBuffer(capacity=2)
    for r in (1.0, 2.0, 3.0):
        buf.add(_episode(2, ret_per_step=r, terminated=r == 3.0))
    torch.save(buf.state_dict(), tmp_path / "b.pt")
    other = ReplayBuffer(1)
    other.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True))
    assert other.capacity == 2 and other.next_slot == buf.next_slot
    for a, b in zip(buf.episodes, other.episodes):
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert (a.terminated, a.truncated) == (b.terminated, b.truncated)
