"""Networks: the decision transformer, its raw-value Actor wrapper, and the twin critic."""

from .dt import (
    Actor,
    DecisionTransformer,
    ModelConfig,
    ModelSpec,
    TanhNormal,
    TwinCritic,
    attention_mask,
)

__all__ = ["Actor", "DecisionTransformer", "ModelConfig", "ModelSpec", "TanhNormal",
           "TwinCritic", "attention_mask"]
