"""Training: config, replay buffer and segment sampler, losses, the trainer loop, checkpoints.

    from vidt.train import resolve, train
    result = train(resolve("vidt/OneState-v0", algo="vidt", preset="tiny"), "runs/onestate")

Names are imported lazily so that `vidt.train.checkpoint` (used by the exporter) does not
pull in environments, data loaders and plotting.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_actor": "checkpoint", "ALGORITHMS": "algos", "PRESETS": "config", "TrainConfig": "config",
    "resolve": "config", "RunResult": "trainer", "Trainer": "trainer", "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
