"""Making environments: registration of vidt's own envs, optional families, dict flattening."""

from __future__ import annotations

import gymnasium as gym

from vidt.errors import VidtError

from .registry import get_family


class EnvError(VidtError):
    """An environment cannot be made (unknown id, missing optional extra)."""


def register_envs() -> None:
    """Register vidt's own Gymnasium envs (idempotent)."""
    if "vidt/OneState-v0" not in gym.registry:
        # No TimeLimit: the env terminates after its one step, and a TimeLimit of 1 would
        # also flag that step as truncated.
        gym.register("vidt/OneState-v0", entry_point="vidt.envs.onestate:OneStateEnv")


def _import_extra(env_id: str) -> None:
    fam = get_family(env_id)
    if fam.requires == "robotics":
        try:
            import gymnasium_robotics
        except ImportError as e:
            raise EnvError(
                f"{env_id} needs gymnasium-robotics: pip install 'vidt[robotics]'") from e
        gym.register_envs(gymnasium_robotics)


def make_env(env_id: str, **kwargs) -> gym.Env:
    """gym.make with vidt's envs registered and dict observations flattened.

    Dict observations (the mazes) are flattened by gymnasium's FlattenObservation, which
    concatenates the keys in the Dict space's sorted order: for the mazes
    [achieved_goal, desired_goal, observation]. The order is stable across runs and versions
    because gymnasium sorts Dict keys when the space is built.
    """
    register_envs()
    _import_extra(env_id)
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise EnvError(f"cannot make env {env_id!r}: {e}") from e
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    if not isinstance(env.action_space, gym.spaces.Box):
        raise EnvError(f"{env_id}: vidt needs a continuous (Box) action space, "
                       f"got {env.action_space}")
    return env


def check_env_id(env_id: str) -> None:
    """EnvError (with gymnasium's "did you mean") unless `env_id` is a registered env."""
    register_envs()
    _import_extra(env_id)
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise EnvError(f"cannot make env {env_id!r}: {e}") from e


def env_dims(env_id: str) -> tuple[int, int]:
    """(observation size, action size) of an env, flattened."""
    env = make_env(env_id)
    try:
        return int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    finally:
        env.close()
