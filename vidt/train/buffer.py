"""Episodes in, left-padded training segments out (numpy only).

`SegmentSampler` is the whole data side of training: an episode is drawn with probability
proportional to its length, a start index uniformly inside it, and up to K steps are taken;
segments that run past the episode's end are LEFT-padded to K with mask 0 (the convention
the context window uses at inference). Returns-to-go are undiscounted suffix sums of the
stored rewards times `reward_scale`, computed when an episode is added: for online episodes
these are the observed rewards, so the target return used while collecting is discarded
(hindsight relabelling). K+1 RTGs are returned so that the next step's RTG exists for the
critic's target actor.

`ReplayBuffer` holds whole episodes (capacity counted in episodes), seeded with the
highest-return offline episodes in ascending order of return; once full, each new episode
replaces the oldest-inserted, so the offline episodes leave lowest-return first (as in ODT's
and the authors' replay_buffer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidt.data.episode import Episode


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted suffix sums: rtg[t] = sum(rewards[t:]). (T,) float64."""
    return np.cumsum(np.asarray(rewards, dtype=np.float64)[::-1])[::-1].copy()


@dataclass(frozen=True)
class Segments:
    """A batch of B left-padded segments of K steps (numpy, raw environment values)."""

    observations: np.ndarray  # (B, K, S)
    actions: np.ndarray  # (B, K, A)
    rewards: np.ndarray  # (B, K) raw (the critic's rewards are not scaled)
    next_observations: np.ndarray  # (B, K, S)
    returns_to_go: np.ndarray  # (B, K+1) scaled; [:, t+1] is step t's next RTG (0 past the end)
    terminals: np.ndarray  # (B, K) 1.0 only on the last step of a terminated episode
    mask: np.ndarray  # (B, K) 1 = real step, 0 = left padding
    timesteps: np.ndarray  # (B, K) int64 step index in the episode (0 for padding)


class SegmentSampler:
    """Samples segments from a fixed list of episodes (rebuilt when the list changes)."""

    def __init__(self, episodes: list[Episode], context_len: int, reward_scale: float):
        if not episodes:
            raise ValueError("SegmentSampler needs at least one episode")
        self.K, self.reward_scale = context_len, float(reward_scale)
        lengths = np.array([len(e) for e in episodes], dtype=np.int64)
        if (lengths < 1).any():
            raise ValueError("episodes must have at least one step")
        self.lengths = lengths
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.p = lengths / lengths.sum()
        cat = lambda name, dt: np.concatenate([getattr(e, name) for e in episodes]).astype(dt)  # noqa: E731
        self.obs = cat("observations", np.float32)  # (N, S)
        self.act = cat("actions", np.float32)  # (N, A)
        self.rew = cat("rewards", np.float32)  # (N,)
        self.next_obs = cat("next_observations", np.float32)  # (N, S)
        self.rtg = np.concatenate([returns_to_go(e.rewards) for e in episodes]).astype(np.float32)
        self.terminated = np.array([e.terminated for e in episodes], dtype=bool)

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    def sample(self, batch_size: int, rng: np.random.Generator) -> Segments:
        K = self.K
        ep = rng.choice(len(self.lengths), size=batch_size, p=self.p)  # (B,)
        T = self.lengths[ep]  # (B,)
        start = (rng.random(batch_size) * T).astype(np.int64)  # (B,) uniform in [0, T)
        n = np.minimum(K, T - start)  # (B,) real steps in each segment
        # Left padding: slot p holds episode step start + p - (K - n); slots before K - n are pad.
        t = start[:, None] + np.arange(K)[None, :] - (K - n)[:, None]  # (B, K)
        mask = t >= start[:, None]  # (B, K)
        t = np.where(mask, t, 0)
        flat = self.offsets[ep][:, None] + t  # (B, K) row in the concatenated arrays
        m = mask.astype(np.float32)
        obs = self.obs[flat] * m[..., None]
        act = self.act[flat] * m[..., None]
        rew = self.rew[flat] * m
        next_obs = self.next_obs[flat] * m[..., None]
        rtg = self.rtg[flat] * m
        # The next step's RTG for each slot; 0 after an episode's last step.
        last = t == (T[:, None] - 1)
        next_rtg = np.where(last | ~mask, 0.0, self.rtg[np.minimum(flat + 1, len(self.rtg) - 1)])
        rtg_k1 = np.concatenate([rtg, next_rtg[:, -1:]], axis=1) * self.reward_scale  # (B, K+1)
        terminals = (last & mask & self.terminated[ep][:, None]).astype(np.float32)
        return Segments(obs, act, rew, next_obs, rtg_k1.astype(np.float32), terminals, m,
                        t.astype(np.int64))


class ReplayBuffer:
    """Whole episodes, capacity in episodes; the oldest-inserted is replaced once full."""


    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.episodes: list[Episode] = []
        self.next_slot = 0  # where the next episode goes once the buffer is full
        self._sampler: SegmentSampler | None = None

    def __len__(self) -> int:
        return len(self.episodes)

    def seed_with(self, episodes: list[Episode]) -> None:
        """Fill with the highest-return episodes, lowest of them first: slot 0, the first one
        `add` replaces, holds the worst kept episode (ODT's initial replay buffer). A stable
        sort, so equal returns keep the dataset's order."""
        ranked = sorted(episodes, key=lambda e: e.episode_return)
        for e in ranked[max(0, len(ranked) - self.capacity):]:
            self.add(e)

    def add(self, episode: Episode) -> None:
        if len(episode) == 0:
            return
        if len(self.episodes) < self.capacity:
            self.episodes.append(episode)
        else:
            self.episodes[self.next_slot] = episode
            self.next_slot = (self.next_slot + 1) % self.capacity
        self._sampler = None

    def sampler(self, context_len: int, reward_scale: float) -> SegmentSampler:
        if self._sampler is None:
            self._sampler = SegmentSampler(self.episodes, context_len, reward_scale)
        return self._sampler

    @property
    def num_steps(self) -> int:
        return sum(len(e) for e in self.episodes)

    # Plain tensors-and-ints state so that checkpoints load with weights_only=True.
    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "next_slot": self.next_slot,
                "episodes": episodes_to_arrays(self.episodes)}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.next_slot = int(state["next_slot"])
        self.episodes = episodes_from_arrays(state["episodes"])
        self._sampler = None


def episodes_to_arrays(episodes: list[Episode]) -> dict:
    import torch

    if not episodes:
        return {"lengths": torch.zeros(0, dtype=torch.int64)}
    cat = lambda name: torch.from_numpy(np.concatenate([getattr(e, name) for e in episodes]))  # noqa: E731
    return {
        "lengths": torch.tensor([len(e) for e in episodes], dtype=torch.int64),
        "observations": cat("observations"), "actions": cat("actions"),
        "rewards": cat("rewards"), "next_observations": cat("next_observations"),
        "terminated": torch.tensor([e.terminated for e in episodes]),
        "truncated": torch.tensor([e.truncated for e in episodes]),
    }


def episodes_from_arrays(d: dict) -> list[Episode]:
    lengths = d["lengths"].tolist()
    out, i = [], 0
    for j, T in enumerate(lengths):
        sl = slice(i, i + T)
        out.append(Episode(
            observations=d["observations"][sl].numpy(), actions=d["actions"][sl].numpy(),
            rewards=d["rewards"][sl].numpy(), next_observations=d["next_observations"][sl].numpy(),
            terminated=bool(d["terminated"][j]), truncated=bool(d["truncated"][j])))
        i += T
    return out
