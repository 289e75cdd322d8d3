"""One episode's context window, in numpy: the single piece that collection, evaluation,
the trainer's rollouts and the server share, so the window the server builds is the window
the trainer trained on.

Step t of an episode: the caller reports observation o_t and the reward r_{t-1} for the
previous action (ignored at t = 0). The return-to-go becomes target - sum((r_i + c) / d) over
the rewards so far, with c and d the policy's reward offset and divisor (0 and 1 except where
the trained rewards were shifted or rescaled: AntMaze's -1 per step, Adroit's / 100), so the
target is in the units the actor learned; the caller always reports the env's own reward.
The actor sees the last `eval_len` steps, left-padded to `context_len`, with the current
step's action a zero placeholder; after it acts, the caller records a_t.
"""

from __future__ import annotations

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
    `eval_len` steps only).

    The window lives in fixed arrays already laid out as the actor's inputs (left padding,
    oldest step first); each step shifts them by one slot. Requests of a server and steps of
    a rollout call this on every step, so it avoids building arrays from lists."""

    def __init__(self, obs_dim: int, act_dim: int, context_len: int, eval_len: int | None,
                 target_return: float, reward_offset: float = 0.0, reward_divisor: float = 1.0):
        eval_len = context_len if eval_len is None else eval_len
        if not 1 <= eval_len <= context_len:
            raise ValueError(f"eval_len must be in [1, {context_len}], got {eval_len}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.context_len, self.eval_len = context_len, eval_len
        self.target_return = float(target_return)
        self.reward_offset = float(reward_offset)
        self.reward_divisor = float(reward_divisor)
        self.return_to_go = float(target_return)
        self.total_reward = 0.0
        self.step = 0  # index of the next observation to be reported
        K = context_len
        self._obs = np.zeros((K, obs_dim), dtype=np.float32)
        self._act = np.zeros((K, act_dim), dtype=np.float32)
        self._rtg = np.zeros(K, dtype=np.float32)
        self._mask = np.zeros(K, dtype=np.float32)
        self._ts = np.zeros(K, dtype=np.int64)
        self._n = 0  # real steps held, at most eval_len
        self._awaiting_action = False

    def __len__(self) -> int:
        """Real steps in the window (at most eval_len)."""
        return self._n

    def copy(self) -> ContextWindow:
        """An independent copy (a server steps on one, so that a failed inference leaves the
        session's window as it was)."""
        w = object.__new__(ContextWindow)
        w.__dict__.update(self.__dict__)
        for name in ("_obs", "_act", "_rtg", "_mask", "_ts"):
            setattr(w, name, getattr(self, name).copy())
        return w

    def restore(self, next_step: int, observations, actions, returns_to_go,
                total_reward: float) -> None:
        """Put this new window in the state it has after steps 0..next_step-1 were answered,
        from the last of them (oldest first: observations (n, S), actions (n, A) and the
        returns-to-go answered, n >= min(next_step, eval_len)): the same arrays, bit for bit,
        as a window stepped through the whole episode, so a session resumed on another
        server answers the next step exactly as the old one would have."""
        if self.step != 0 or self._awaiting_action:
            raise RuntimeError("restore() needs a new window")
        obs = np.asarray(observations, dtype=np.float32).reshape(-1, self.obs_dim)
        act = np.asarray(actions, dtype=np.float32).reshape(-1, self.act_dim)
        rtg = np.asarray(returns_to_go, dtype=np.float64).reshape(-1)
        n = min(next_step, self.eval_len)
        if not (next_step >= 1 and len(obs) == len(act) == len(rtg) >= n):
            raise ValueError(f"restore needs the last {n} steps before step {next_step}, got "
                             f"{len(obs)} observations, {len(act)} actions, {len(rtg)} "
                             "returns-to-go")
        obs, act, rtg = obs[-n:], act[-n:], rtg[-n:]
        self._obs[-n:], self._act[-n:], self._rtg[-n:] = obs, act, rtg.astype(np.float32)
        self._mask[-n:] = 1.0
        self._ts[-n:] = np.arange(next_step - n, next_step)
        self._n = n
        self.step = int(next_step)
        self.return_to_go = float(rtg[-1])  # the running sum goes on from the exact double
        self.total_reward = float(total_reward)
        # What the episode was conditioned on, as far as the rewards so far tell.
        self.target_return = self.return_to_go + (
            self.total_reward + self.reward_offset * (next_step - 1)) / self.reward_divisor

    def observe(self, observation, reward: float = 0.0) -> WindowInputs:
        """Report o_t (and r_{t-1}, ignored at t = 0); returns the actor's inputs for step t."""
        if self._awaiting_action:
            raise RuntimeError("record_action() must follow each observe()")
        obs = np.asarray(observation, dtype=np.float32).reshape(-1)
        if obs.shape[0] != self.obs_dim:
            raise ValueError(f"observation has {obs.shape[0]} values, expected {self.obs_dim}")
        if self.step > 0:
            self.return_to_go -= (float(reward) + self.reward_offset) / self.reward_divisor
            self.total_reward += float(reward)  # the env's own return
        bufs = (self._obs, self._act, self._rtg, self._mask, self._ts)
        for b in bufs:
            b[:-1] = b[1:]  # one slot older (numpy copies overlapping slices correctly)
        if self._n == self.eval_len:
            if self.eval_len < self.context_len:  # the oldest step left the window: padding
                for b in bufs:
                    b[-self.eval_len - 1] = 0
        else:
            self._n += 1
        self._obs[-1] = obs
        self._act[-1] = 0.0  # placeholder: the action is what the actor predicts
        self._rtg[-1] = self.return_to_go
        self._mask[-1] = 1.0
        self._ts[-1] = self.step
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
        """The actor's inputs for the current window, as new arrays (B = 1)."""
        return WindowInputs(self._obs[None].copy(), self._act[None].copy(),
                            self._rtg[None].copy(), self._mask[None].copy(),
                            self._ts[None].copy())
