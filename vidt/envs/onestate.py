"""The one-state task of docs/algorithm.md: a fast, exact test of the paper's claim.

One state, one step, action a in [-1, 1]. Reward (a + 1)^2 for a < 0 and 1 - 2a for a >= 0,
so the peak (reward 1) is at a = 0 and the offline data never shows it: 100 actions near -1
(reward about 0) and 28 in [0.5, 1] (reward in [-1, 0]). Supervised return-conditioned
learning asked for return 1 stays where the data is; an RL gradient climbs to the peak.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

OBS = np.zeros(1, dtype=np.float32)


def onestate_reward(action: float) -> float:
    a = float(np.clip(action, -1.0, 1.0))
    return (a + 1.0) ** 2 if a < 0 else 1.0 - 2.0 * a


class OneStateEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return OBS.copy(), {}

    def step(self, action):
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        return OBS.copy(), onestate_reward(a), True, False, {}


def onestate_offline_actions(seed: int = 0) -> np.ndarray:
    """The built-in offline actions: 100 in [-1, -0.95] and 28 in [0.5, 1], shuffled."""
    rng = np.random.default_rng(seed)
    acts = np.concatenate([rng.uniform(-1.0, -0.95, 100), rng.uniform(0.5, 1.0, 28)])
    rng.shuffle(acts)
    return acts.astype(np.float32)
