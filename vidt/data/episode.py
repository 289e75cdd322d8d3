"""The unit of offline and replay data: one episode of transitions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Episode:
    """T transitions (s_t, a_t, r_t, s_{t+1}). Only the last can end the episode.

    terminated: the last transition reached a terminal state of the MDP (the critic does not
    bootstrap from it). truncated: the episode was cut (time limit, end of data); the last
    next_observation is real and the critic bootstraps through it. Both can be False for an
    episode still being collected.
    """

    observations: np.ndarray  # (T, S) float32
    actions: np.ndarray  # (T, A) float32
    rewards: np.ndarray  # (T,) float32
    next_observations: np.ndarray  # (T, S) float32
    terminated: bool = False
    truncated: bool = False

    def __post_init__(self):
        T = len(self.rewards)
        for name in ("observations", "actions", "next_observations"):
            if len(getattr(self, name)) != T:
                raise ValueError(f"Episode.{name} has {len(getattr(self, name))} rows, rewards has {T}")
        if self.terminated and self.truncated:
            raise ValueError("an episode cannot be both terminated and truncated")

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    @property
    def terminals(self) -> np.ndarray:
        """(T,) bool: True only on a last step that reached a terminal state."""
        out = np.zeros(len(self), dtype=bool)
        if len(self):
            out[-1] = self.terminated
        return out

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])


def random_episodes(obs_dim: int, act_dim: int, lengths, seed: int = 0) -> list[Episode]:
    """Episodes of the given lengths with normal observations and rewards and uniform [-1, 1]
    actions, each cut by a time limit (truncated): update costs and shapes do not depend on
    what the numbers are (benchmarks, tests)."""
    rng = np.random.default_rng(seed)
    out = []
    for T in lengths:
        obs = rng.normal(size=(T + 1, obs_dim)).astype(np.float32)
        out.append(Episode(obs[:-1], rng.uniform(-1, 1, (T, act_dim)).astype(np.float32),
                           rng.normal(size=T).astype(np.float32), obs[1:], truncated=True))
    return out
