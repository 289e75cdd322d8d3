"""One episode's context window, in numpy: the single piece that collection, evaluation,
the trainer's rollouts and the server share, so the window the server builds is the window
the trainer trained on.

Step t of an episode: the caller reports observation o_t and the reward r_{t-1} for the
previous action (ignored at t = 0). The return-to-go becomes target - sum(r_0..r_{t-1}).
The actor sees the last `eval_len` steps, left-padded to `context_len`, with the current
step's action a zero placeholder; after it acts, the caller records a_t.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowInputs:
    """Actor inputs for a batch of windows (B = 1 for a single window)."""

    observations: np.ndarray  # (B, K, S) float32, raw
    actions: np.ndarray  # (B, K, A) float32, raw; the last real step's is 0
    returns_to_go: np.ndarray  # (B, K) float32, raw (unscaled)
    mask: np.ndarray  # (B, K) float32, 1 = real step, 0 = left padding
    timesteps: np.ndarray  # (B, K) int64, episode step index of each slot (0 for padding)

    def as_feed(self) -> dict[str, np.ndarray]:
        return {"observations": self.observations, "actions": self.actions,
                "returns_to_go": self.returns_to_go, "mask": self.mask}

    @staticmethod
    def stack(items: list[WindowInputs]) -> WindowInputs:
        return WindowInputs(*(np.concatenate([getattr(w, f) for w in items], axis=0)
                              for f in ("observations", "actions", "returns_to_go", "mask",
                                        "timesteps")))


class ContextWindow:
    """History of one episode for a return-conditioned actor (bounded memory: the last
    `eval_len` steps only)."""

    def __init__(self, obs_dim: int, act_dim: int, context_len: int, eval_len: int | None,
                 target_return: float):
        eval_len = context_len if eval_len is None else eval_len
        if not 1 <= eval_len <= context_len:
            raise ValueError(f"eval_len must be in [1, {context_len}], got {eval_len}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.context_len, self.eval_len = context_len, eval_len
        self.target_return = float(target_return)
        self.return_to_go = float(target_return)
        self.total_reward = 0.0
        self.step = 0  # index of the next observation to be reported
        self._obs: deque[np.ndarray] = deque(maxlen=eval_len)
        self._act: deque[np.ndarray] = deque(maxlen=eval_len)
        self._rtg: deque[float] = deque(maxlen=eval_len)
        self._awaiting_action = False

    def observe(self, observation, reward: float = 0.0) -> WindowInputs:
        """Report o_t (and r_{t-1}, ignored at t = 0); returns the actor's inputs for step t."""
        if self._awaiting_action:
            raise RuntimeError("record_action() must follow each observe()")
        obs = np.asarray(observation, dtype=np.float32).reshape(-1)
        if obs.shape[0] != self.obs_dim:
            raise ValueError(f"observation has {obs.shape[0]} values, expected {self.obs_dim}")
        if self.step > 0:
            self.return_to_go -= float(reward)
            self.total_reward += float(reward)
        self._obs.append(obs)
        self._act.append(np.zeros(self.act_dim, dtype=np.float32))
        self._rtg.append(self.return_to_go)
        self._awaiting_action = True
        return self.inputs()

    def record_action(self, action) -> None:
        act = np.asarray(action, dtype=np.float32).reshape(-1)
        if act.shape[0] != self.act_dim:
            raise ValueError(f"action has {act.shape[0]} values, expected {self.act_dim}")
        if not self._awaiting_action:
            raise RuntimeError("record_action() without a preceding observe()")
        self._act[-1] = act
        self._awaiting_action = False
        self.step += 1

    def inputs(self) -> WindowInputs:
        K, n = self.context_len, len(self._obs)
        obs = np.zeros((1, K, self.obs_dim), dtype=np.float32)
        act = np.zeros((1, K, self.act_dim), dtype=np.float32)
        rtg = np.zeros((1, K), dtype=np.float32)
        mask = np.zeros((1, K), dtype=np.float32)
        ts = np.zeros((1, K), dtype=np.int64)
        if n:
            obs[0, K - n:] = np.stack(self._obs)
            act[0, K - n:] = np.stack(self._act)
            rtg[0, K - n:] = np.asarray(self._rtg, dtype=np.float32)
            mask[0, K - n:] = 1.0
            last = self.step if self._awaiting_action else self.step - 1
            ts[0, K - n:] = np.arange(last - n + 1, last + 1)
        return WindowInputs(obs, act, rtg, mask, ts)
