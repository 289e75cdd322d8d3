"""Environment families and their defaults (docs/algorithm.md, "Per-family settings").

Every place that needs a per-environment setting asks this registry; nothing in the project
matches substrings of env names to pick behaviour.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class EnvFamily:
    """Defaults for one environment (id) and the family it belongs to."""

    env_id: str
    family: str  # "mujoco", "pendulum", "adroit", "antmaze", "pointmaze", "onestate"
    context_len: int  # K: steps of history the transformer is trained on
    eval_context_len: int  # T_eval <= K: steps of history used when acting
    eval_target_return: float  # RTG the evaluation episodes are conditioned on
    online_target_return: float  # RTG the online exploration episodes are conditioned on
    reward_scale: float  # RTG tokens are returns times this
    ref_min: float | None = None  # D4RL-style reference returns for normalized scores
    ref_max: float | None = None
    actor_update_interval: int = 1  # critic steps per actor step
    buffer_episodes: int = 1000
    pretrain_updates: int = 5000
    min_steps_per_iter: int = 0  # 0: one episode per online iteration
    reward_offset: float = 0.0  # added to each env reward the agent learns from (AntMaze: -1)
    # Each env reward the agent learns from is divided by this (Adroit: 100, hammer 1000, as
    # the authors do in the data and the env); target returns are in the divided units.
    reward_divisor: float = 1.0
    random_data_min_steps_per_iter: int | None = None  # instead, from random-policy data
    critic_layernorm: bool = False
    rl_from_start: bool = False
    gamma: float = 0.99
    critic_lr: float = 2e-4
    actor_lr: float = 1e-4  # LAMB learning rate
    weight_decay: float = 5e-4  # LAMB weight decay
    # alpha (loss.rl_coef) for the algorithms that have an RL term, in place of the algorithm's
    # own; None: the algorithm's. Applied after the algorithm's coefficients.
    rl_coef: float | None = None
    # Config values (dotted keys, as `--set` takes them) that no preset undoes: applied after
    # the preset, before the algorithm's coefficients. Read only (rows are shared).
    overrides: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # Config keys a run must be given because the row has no value for them (an env outside
    # the registry: its target returns and reward scale).
    needs: tuple[str, ...] = ()
    requires: str | None = None  # pip extra that provides the env ("robotics")
    notes: str = ""

    @property
    def has_reference(self) -> bool:
        return self.ref_min is not None and self.ref_max is not None


def _mujoco(env_id: str, eval_rtg: float, ref_min: float, ref_max: float, *,
            actor_lr: float = 1e-4, weight_decay: float = 5e-4,
            pretrain_updates: int = 5000) -> EnvFamily:
    return EnvFamily(
        env_id=env_id, family="mujoco", context_len=20, eval_context_len=5,
        eval_target_return=eval_rtg, online_target_return=2 * eval_rtg, reward_scale=0.001,
        ref_min=ref_min, ref_max=ref_max, actor_update_interval=2, buffer_episodes=1000,
        pretrain_updates=pretrain_updates, min_steps_per_iter=0,
        random_data_min_steps_per_iter=1000, critic_lr=1e-3, actor_lr=actor_lr,
        weight_decay=weight_decay,
        notes="v5 env scored with the D4RL v2 references of its family",
    )


def _adroit(env_id: str, rtg: float, divisor: float, scale: float, ref_min: float,
            ref_max: float, eval_k: int) -> EnvFamily:
    # Rewards divided by `divisor` in the data and the env, targets in those units, RTG tokens
    # = divided returns x `scale` (1.0; door 0.001, as the authors' code has it).
    return EnvFamily(
        env_id=env_id, family="adroit", context_len=5, eval_context_len=eval_k,
        eval_target_return=rtg, online_target_return=rtg, reward_scale=scale,
        reward_divisor=divisor, ref_min=ref_min, ref_max=ref_max, actor_update_interval=1,
        buffer_episodes=5000, pretrain_updates=40000, min_steps_per_iter=1000,
        critic_layernorm=True, weight_decay=1e-4, requires="robotics",
    )


def _antmaze(env_id: str, k: int, rtg: float) -> EnvFamily:
    return EnvFamily(
        env_id=env_id, family="antmaze", context_len=k, eval_context_len=1,
        eval_target_return=rtg, online_target_return=rtg, reward_scale=0.001,
        ref_min=0.0, ref_max=1.0, buffer_episodes=2000, pretrain_updates=200_000,
        min_steps_per_iter=1000, critic_layernorm=True, rl_from_start=True, gamma=0.998,
        weight_decay=1e-4, requires="robotics",
        # 0 per step and 1 at the goal from gymnasium-robotics; the paper's targets (-100..-500)
        # count -1 per step until the goal, as the authors' and IQL's "reward - 1" does.
        reward_offset=-1.0,
    )


def _pointmaze(env_id: str, k: int, rtg: float, ref: tuple[float, float] | None,
               buffer: int, pretrain: int) -> EnvFamily:
    # Maze2D in the paper is D4RL's maze2d; gymnasium-robotics' PointMaze is its successor, so
    # it takes maze2d's references. The open map has none: D4RL's maze2d-open has a reward bug
    # (the goal reward is never reached), so its scores are not comparable and we publish none.
    lo, hi = ref if ref else (None, None)
    return EnvFamily(
        env_id=env_id, family="pointmaze", context_len=k, eval_context_len=1,
        eval_target_return=rtg, online_target_return=rtg, reward_scale=1.0,
        ref_min=lo, ref_max=hi, buffer_episodes=buffer, pretrain_updates=pretrain,
        min_steps_per_iter=1000, critic_layernorm=True, weight_decay=1e-4, requires="robotics",
    )


# Pendulum-v1 has no D4RL reference; these were measured by benchmarks/pendulum_reference.py
# (200 episodes each, seeds 0..199): a uniform random policy, and an energy-pumping swing-up
# with a PD stabiliser near the top. See docs/algorithm.md.
PENDULUM_RANDOM_RETURN = -1228.3
PENDULUM_EXPERT_RETURN = -152.4

_FAMILIES: dict[str, EnvFamily] = {
    f.env_id: f
    for f in [
        _mujoco("Hopper-v5", 3600, -20.272305, 3234.3),
        _mujoco("HalfCheetah-v5", 6000, -280.178953, 12135.0, weight_decay=1e-4),
        _mujoco("Walker2d-v5", 5000, 1.629008, 4592.3, actor_lr=1e-3, weight_decay=1e-3,
                pretrain_updates=10_000),
        _mujoco("Ant-v5", 5000, -325.6, 3879.7, weight_decay=1e-4),
        EnvFamily(
            env_id="Pendulum-v1", family="pendulum", context_len=5, eval_context_len=5,
            # Returns are negative (0 is the unreachable ideal): condition on a bit better than
            # the expert controller for evaluation, and on the ideal for exploration.
            eval_target_return=-150.0, online_target_return=-100.0, reward_scale=0.001,
            ref_min=PENDULUM_RANDOM_RETURN, ref_max=PENDULUM_EXPERT_RETURN,
            actor_update_interval=2, buffer_episodes=1000, pretrain_updates=2000,
            min_steps_per_iter=1000, critic_lr=1e-3,
            notes="references measured by benchmarks/pendulum_reference.py",
        ),
        _adroit("AdroitHandPen-v1", 120, 100, 1.0, 96.262799, 3076.8331, 5),
        _adroit("AdroitHandHammer-v1", 160, 1000, 1.0, -274.856578, 12794.1348, 1),
        _adroit("AdroitHandDoor-v1", 40, 100, 0.001, -56.512833, 2880.5693, 1),
        _adroit("AdroitHandRelocate-v1", 50, 100, 1.0, -6.425911, 4233.8778, 1),
        _antmaze("AntMaze_UMaze-v5", 1, -100),
        _antmaze("AntMaze_Medium_Diverse_GR-v5", 1, -200),
        _antmaze("AntMaze_Large_Diverse_GR-v5", 5, -500),
        _pointmaze("PointMaze_Open-v3", 1, 120, None, 10_000, 10_000),
        _pointmaze("PointMaze_UMaze-v3", 1, 60, (23.85, 161.86), 2500, 40_000),
        _pointmaze("PointMaze_Medium-v3", 1, 60, (13.13, 277.39), 5000, 40_000),
        _pointmaze("PointMaze_Large-v3", 5, 60, (6.7, 273.99), 5000, 40_000),
        EnvFamily(
            env_id="vidt/OneState-v0", family="onestate", context_len=1, eval_context_len=1,
            eval_target_return=1.0, online_target_return=1.0, reward_scale=1.0,
            actor_update_interval=1, buffer_episodes=10000, pretrain_updates=200,
            min_steps_per_iter=64, critic_lr=1e-3,
            # Rewards are <= 1, so Q is <= 1 and MuJoCo's alpha 0.1 would leave the RL term a
            # tenth of the supervised one: alpha 1 restores the balance the paper has.
            rl_coef=1.0,
            # Whatever the preset: lr 1e-3 and 25 rounds of 64 rollouts keep a run under a
            # minute. The exploration noise (deterministic head only; ODT samples its own
            # Gaussian) is 0.05 because the claim is about the RL gradient: with wider noise
            # the same trainer with the RL term off also climbs to the peak by hindsight
            # relabelling alone, so the comparison would measure the noise. One state and a
            # deterministic policy: one evaluation episode says all. Measurements behind these:
            # benchmarks/RESULTS.md, "One-state".
            overrides={"data.batch_size": 64, "optim.actor_lr": 1e-3, "optim.warmup_steps": 50,
                       "online.pretrain_updates": 200, "online.online_steps": 64 * 25,
                       "online.updates_per_iter": 50, "online.exploration_noise": 0.05,
                       "eval.episodes": 1},
            notes="the one-state task of docs/algorithm.md; built-in offline data",
        ),
    ]
}


_VARIANT = re.compile(r"(Dense|Sparse)?-v\d+")


def list_families() -> list[EnvFamily]:
    return list(_FAMILIES.values())


def get_family(env_id: str) -> EnvFamily:
    """Defaults for `env_id`. Unknown Gymnasium ids get generic defaults and no reference."""
    if env_id in _FAMILIES:
        return _FAMILIES[env_id]
    # A variant of a known env (another version; a Dense or Sparse reward) shares its family's
    # settings, but no reference scores; a variant with other rewards keeps nothing that is
    # counted in rewards (target returns, the reward offset) either. Exact stems only:
    # "AntMaze_..." is not a variant of "Ant-v5".
    for base in _FAMILIES.values():
        stem = base.env_id.rsplit("-v", 1)[0]
        m = _VARIANT.fullmatch(env_id[len(stem):]) if env_id.startswith(stem) else None
        if m is None:
            continue
        if m.group(1):
            return replace(base, env_id=env_id, ref_min=None, ref_max=None,
                           eval_target_return=0.0, online_target_return=0.0, reward_offset=0.0,
                           reward_divisor=1.0,
                           notes=f"settings of {base.env_id} but other rewards: set the "
                                 "target returns yourself")
        return replace(base, env_id=env_id, ref_min=None, ref_max=None,
                       notes=f"settings of {base.env_id}; no reference scores")
    return EnvFamily(
        env_id=env_id, family="generic", context_len=5, eval_context_len=5,
        eval_target_return=0.0, online_target_return=0.0, reward_scale=1.0,
        # made-up target returns and scale (0 and 1) would learn something else than the user
        # thinks: a run must be given its own
        needs=("eval.target_return", "online.target_return", "data.reward_scale"),
        notes="not in the registry: generic defaults, set the target returns yourself",
    )


def is_known(env_id: str) -> bool:
    return env_id in _FAMILIES


def normalized_score(env_id: str, ret: float) -> float | None:
    """D4RL-normalized score, 100 * (ret - min) / (max - min); None without a reference."""
    fam = get_family(env_id)
    if not fam.has_reference or not math.isfinite(ret):
        return None
    return 100.0 * (ret - fam.ref_min) / (fam.ref_max - fam.ref_min)
