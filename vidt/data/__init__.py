"""Offline data: the Episode type, loaders for every source, collection, and summaries."""

from .builtin import BUILTIN_ENVS, onestate_episodes
from .episode import Episode
from .loaders import (
    check_sizes,
    is_random_policy_data,
    load,
    load_d4rl,
    load_minari,
    minari_metadata,
    policy_record,
    save_d4rl,
)
from .summary import DatasetSummary, summarize

__all__ = ["BUILTIN_ENVS", "DatasetSummary", "Episode", "check_sizes", "is_random_policy_data",
           "load", "load_d4rl", "load_minari", "minari_metadata", "onestate_episodes",
           "policy_record", "save_d4rl", "summarize"]


def collect(*args, **kwargs):
    """See vidt.data.collect.collect (imported lazily: it pulls in Minari's writer)."""
    from .collect import collect as _collect

    return _collect(*args, **kwargs)
