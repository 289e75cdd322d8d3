"""The algorithms, each declared once: what the config, the learner, the trainer, the CLI's
choices, the docs and the benchmarks read. Adding one is an entry here plus its actor loss
(a function in losses.py with the signature of `ActorLoss`). docs/algorithm.md's table
("The algorithms, one trainer") describes each entry, coefficients included, and a test
holds it to this one.

Pretraining uses `pretrain_supervised_coef` and no RL term, unless the family (AntMaze) or
`--set loss.rl_from_start=true` turns the RL term on from the start, in which case it uses
the online coefficients (the authors' main.py:439-440). An env family may replace alpha for
the algorithms that have an RL term (its registry row's `rl_coef`: the one-state task's 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vidt.errors import ConfigError

from . import losses

# (learner, batch, supervised_coef, rl_coef) -> (loss to minimise, info for the metrics:
# detached tensors, which the learner reads to the host once per update, or floats).
# The learner gives the loss its networks: train_model, critic, log_temperature,
# target_entropy. A loss may include terms of other parameters (ODT's temperature): the
# learner steps every optimiser it has after one backward.
ActorLoss = Callable[..., tuple]


@dataclass(frozen=True)
class Algorithm:
    name: str
    stochastic: bool  # tanh-Gaussian head with a learned temperature; else linear + tanh
    critic: bool  # a TD3 twin critic, its target and the target actor are trained
    supervised_coef: float  # weight of the supervised term when the RL term is on (online)
    rl_coef: float  # alpha, the weight of mean(-Q1); 0 = no RL term
    pretrain_supervised_coef: float  # weight of the supervised term while pretraining without RL
    loss: ActorLoss
    notes: str
    # Weight of mean((a_pred - a_ref)^2) online, a_ref from the actor as pretraining left it
    # (frozen at the online start): a pull back toward what good data taught; 0 = none.
    anchor_coef: float = 0.0


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("vidt", stochastic=False, critic=True, supervised_coef=1.0, rl_coef=0.1,
              pretrain_supervised_coef=1.0, loss=losses.deterministic_loss,
              notes="ODT's transformer with a deterministic head, plus TD3's actor gradient "
                    "and twin critic online (the paper's method)"),
    Algorithm("odt", stochastic=True, critic=False, supervised_coef=1.0, rl_coef=0.0,
              pretrain_supervised_coef=1.0, loss=losses.odt_loss,
              notes="Online Decision Transformer: likelihood and entropy, no RL gradient"),
    Algorithm("td3", stochastic=False, critic=True, supervised_coef=0.0, rl_coef=0.1,
              pretrain_supervised_coef=1.0, loss=losses.deterministic_loss,
              notes="the paper's TD3 row: supervised pretraining, the RL term alone online"),
    # The paper's appendix answers forgetting on expert data with a KL term to the pretrained
    # policy; the authors' public code has none (no reference policy anywhere in it). With a
    # deterministic head a KL between two fixed-variance Gaussians is this MSE.
    Algorithm("vidt-anchor", stochastic=False, critic=True, supervised_coef=1.0, rl_coef=0.1,
              pretrain_supervised_coef=1.0, anchor_coef=1.0, loss=losses.deterministic_loss,
              notes="vidt plus a pull toward the pretrained actor online (for good data)"),
]}


DEFAULT_ALGORITHM = "vidt"


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown algo {name!r}: choose one of {', '.join(ALGORITHMS)}") from None
