"""Checkpoint files: written atomically (temp file + os.replace), read with weights_only=True.

A run directory holds two files of ours:
  checkpoint.pt  everything needed to resume (networks, targets, optimisers, replay buffer,
                 RNG states, counters, metrics so far); only tensors, numbers, strings, lists
                 and dicts, so that no pickled object is ever executed when it is loaded.
  actor.pt       the actor's weights and the metadata export needs (small).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from vidt.errors import ModelFileError
from vidt.model.dt import Actor, DecisionTransformer, ModelConfig, ModelSpec

CHECKPOINT = "checkpoint.pt"
ACTOR = "actor.pt"
FORMAT_VERSION = 1


def atomic_save(obj, path: str | Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_file(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, foreign, or holding objects weights_only refuses
        raise ModelFileError(f"{path}: not a readable vidt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: not a vidt checkpoint (format_version "
                             f"{obj.get('format_version') if isinstance(obj, dict) else None!r})")
    return obj


# ---------------------------------------------------------------- RNG states as plain data


def numpy_rng_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def set_numpy_rng_state(rng: np.random.Generator, state: str) -> None:
    rng.bit_generator.state = json.loads(state)


# ---------------------------------------------------------------- the actor file


def actor_payload(actor: Actor, meta: dict) -> dict:
    cfg = actor.model.cfg
    return {
        "format_version": FORMAT_VERSION,
        "kind": "actor",
        "actor": {k: v.detach().cpu() for k, v in actor.state_dict().items()},
        "model_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "spec": {"obs_dim": actor.model.spec.obs_dim, "act_dim": actor.model.spec.act_dim},
        "meta": meta,
    }


def build_actor(payload: dict) -> Actor:
    spec = ModelSpec(**payload["spec"])
    model = DecisionTransformer(spec, ModelConfig(**payload["model_config"]))
    S, A = spec.obs_dim, spec.act_dim
    actor = Actor(model, np.zeros(S), np.ones(S), 1.0, -np.ones(A), np.ones(A))
    actor.load_state_dict(payload["actor"])
    return actor.eval()


def load_actor(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[Actor, dict]:
    """The trained actor of a run (eval mode, CPU) and its metadata.

    checkpoint: a path to an actor.pt or checkpoint.pt (default RUN_DIR/actor.pt, falling
    back to RUN_DIR/checkpoint.pt). Metadata keys: env_id, algo, context_len,
    eval_context_len, eval_target_return, online_target_return, reward_scale,
    max_episode_steps, obs_dim, act_dim, action_low, action_high, model_name, stochastic,
    state_mean, state_std, online_env_steps, actor_updates, seed, vidt_version.
    """
    run_dir = Path(run_dir)
    if checkpoint is None:
        path = run_dir / ACTOR
        if not path.exists() and (run_dir / CHECKPOINT).exists():
            path = run_dir / CHECKPOINT
    else:
        path = Path(checkpoint)
        if not path.is_absolute() and not path.exists():
            path = run_dir / path
    if not path.exists():
        raise ModelFileError(f"{run_dir}: no {ACTOR} or {CHECKPOINT} (has this run saved a checkpoint yet?)")
    obj = load_file(path)
    payload = obj if obj.get("kind") == "actor" else obj.get("actor_file")
    if not payload:
        raise ModelFileError(f"{path}: holds no actor")
    try:
        actor = build_actor(payload)
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: actor weights do not fit their config ({e})") from None
    return actor, dict(payload["meta"])
