"""What `vidt datasets info` reports about a dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vidt.envs import normalized_score

from .episode import Episode


@dataclass(frozen=True)
class DatasetSummary:
    source: str
    env_id: str | None
    episodes: int
    steps: int
    terminated: int
    truncated: int
    obs_dim: int
    act_dim: int
    return_min: float
    return_mean: float
    return_max: float
    normalized_score: float | None  # of the mean return, where the env has a reference
    # Data recorded by `vidt collect --policy FILE.onnx`: that policy's file name,
    # model_version, model_name, algo and target return (vidt.data.policy_record); else None.
    collected_with: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(episodes: list[Episode], source: str, env_id: str | None = None,
              collected_with: dict | None = None) -> DatasetSummary:
    rets = np.array([ep.episode_return for ep in episodes])
    return DatasetSummary(
        source=source, env_id=env_id, episodes=len(episodes),
        steps=int(sum(len(ep) for ep in episodes)),
        terminated=sum(ep.terminated for ep in episodes),
        truncated=sum(ep.truncated for ep in episodes),
        obs_dim=episodes[0].obs_dim, act_dim=episodes[0].act_dim,
        return_min=float(rets.min()), return_mean=float(rets.mean()),
        return_max=float(rets.max()),
        normalized_score=normalized_score(env_id, float(rets.mean())) if env_id else None,
        collected_with=collected_with,
    )
