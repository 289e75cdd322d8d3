"""Environment registry, vidt's own envs, and env construction."""

from .onestate import OneStateEnv, onestate_offline_actions, onestate_reward
from .registry import (
    EnvFamily,
    get_family,
    is_known,
    list_families,
    normalized_score,
)
from .wrappers import EnvError, env_dims, make_env, register_envs

register_envs()

__all__ = [
    "EnvError", "EnvFamily", "OneStateEnv", "env_dims", "get_family", "is_known",
    "list_families", "make_env", "normalized_score", "onestate_offline_actions",
    "onestate_reward", "register_envs",
]
