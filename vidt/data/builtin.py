"""Built-in offline data: the one-state task's dataset (docs/algorithm.md), made from a seed."""

from __future__ import annotations

import numpy as np

from vidt.envs.onestate import OBS, onestate_offline_actions, onestate_reward

from .episode import Episode

BUILTIN_ENVS = ("vidt/OneState-v0",)


def onestate_episodes(seed: int = 0) -> list[Episode]:
    """128 one-step episodes: 100 actions in [-1, -0.95], 28 in [0.5, 1]; each terminates."""
    episodes = []
    for a in onestate_offline_actions(seed):
        obs = OBS.reshape(1, -1).copy()
        episodes.append(Episode(
            observations=obs, actions=np.array([[a]], dtype=np.float32),
            rewards=np.array([onestate_reward(float(a))], dtype=np.float32),
            next_observations=obs.copy(), terminated=True, truncated=False,
        ))
    return episodes
