"""Checkpoint files: written atomically (temp file + os.replace), read with weights_only=True.

A run directory holds three files of ours:
  checkpoint.pt  everything needed to resume (networks, targets, optimisers, replay buffer,
                 RNG states, counters, metrics so far); only tensors, numbers, strings, lists
                 and dicts, so that no pickled object is ever executed when it is loaded.
  actor.pt       the actor's weights and the metadata export needs (small).
  pretrained.pt  the same state as checkpoint.pt at the end of pretraining, before anything
                 online: what a run that differs only online can start from
                 (`vidt train --pretrained-from`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from vidt.errors import ConfigError, ModelFileError, StorageError
from vidt.files import LOCK_FILE, atomic_write, training_pid  # noqa: F401 (re-exported)
from vidt.model.dt import Actor, DecisionTransformer, ModelConfig, ModelSpec
from vidt.policy_file import PolicyFacts

CHECKPOINT = "checkpoint.pt"
PRETRAINED = "pretrained.pt"
ACTOR = "actor.pt"  # the actor as of the last checkpoint
ACTOR_BEST = "actor_best.pt"  # the actor of the run's best evaluation so far
ACTORS = {"last": ACTOR, "best": ACTOR_BEST}
CONDITIONING = "conditioning.csv"  # achieved against asked returns (eval.target_returns)
FORMAT_VERSION = 1


def atomic_save(obj, path: str | Path) -> None:
    # Serialised in memory first: torch's zip writer turns a failed write (disk full) into a
    # RuntimeError about file positions, which would hide the OSError a user can act on.
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


# Files of a run directory written through vidt.files.atomic_write: a SIGKILL mid-write leaves
# `.NAME.XXXX.tmp` behind, which the next trainer on that directory removes.
ATOMIC_FILES = ("config.json", "metrics.csv", CHECKPOINT, ACTOR, ACTOR_BEST, "learning_curve.png",
                CONDITIONING, PRETRAINED)


def remove_stale_temps(run_dir: Path) -> list[str]:
    removed = []
    for p in run_dir.iterdir():
        if p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in ATOMIC_FILES):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p.name)
    return removed


class RunDirLock:
    """An exclusive flock on RUN_DIR/.vidt-train.lock for a trainer's lifetime, so that two
    trainers (a forgotten background run and a `--resume`) never write one run directory.
    The kernel drops the lock when the process dies, even by SIGKILL: no stale locks."""

    def __init__(self, run_dir: Path):
        self._fd: int | None = None
        self.path = Path(run_dir) / LOCK_FILE
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): run unlocked
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StorageError(f"{run_dir} is in use by another vidt train (pid {holder}); "
                               f"wait for it or stop it first") from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    __del__ = release


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


@dataclass(frozen=True, kw_only=True)
class ActorMeta(PolicyFacts):
    """What an actor file says about its actor: written by the trainer, read by `vidt export`.
    The facts the ONNX file also carries are PolicyFacts' fields (the same definitions as
    PolicyMetadata's); the rest are the training run's own. Stored as a plain dict, so files
    of older versions, which lack a field or two, still load."""

    seed: int
    eval_target_return: float
    online_target_return: float
    stochastic: bool
    timestep_embedding: bool
    online_env_steps: int
    actor_updates: int
    vidt_version: str
    actor_selection: str = "last"  # or "best": the actor of the run's best evaluation
    selected_eval_return: float | None = None  # for "best": that evaluation's mean return

    def to_dict(self) -> dict:
        """The dict an actor file stores: plain values, the bounds as lists."""
        d = asdict(self)
        d["action_low"], d["action_high"] = list(self.action_low), list(self.action_high)
        return d


def actor_payload(actor: Actor, meta: ActorMeta | dict) -> dict:
    cfg = actor.model.cfg
    return {
        "format_version": FORMAT_VERSION,
        "kind": "actor",
        "actor": {k: v.detach().cpu() for k, v in actor.state_dict().items()},
        # The model's own fields only (the config's section adds training-side ones).
        "model_config": {f.name: getattr(cfg, f.name) for f in fields(ModelConfig)},
        "spec": {"obs_dim": actor.model.spec.obs_dim, "act_dim": actor.model.spec.act_dim},
        "meta": meta.to_dict() if isinstance(meta, ActorMeta) else dict(meta),
    }


def build_actor(payload: dict) -> Actor:
    spec = ModelSpec(**payload["spec"])
    model = DecisionTransformer(spec, ModelConfig(**payload["model_config"]))
    S, A = spec.obs_dim, spec.act_dim
    actor = Actor(model, np.zeros(S), np.ones(S), 1.0, -np.ones(A), np.ones(A))
    actor.load_state_dict(payload["actor"])
    return actor.eval()


def load_actor(run_dir: str | Path, checkpoint: str | Path | None = None,
               which: str = "last") -> tuple[Actor, dict]:
    """The trained actor of a run (eval mode, CPU) and its metadata.

    which: "last" (RUN_DIR/actor.pt, falling back to RUN_DIR/checkpoint.pt) or "best" (the
    actor of the run's best evaluation, RUN_DIR/actor_best.pt); checkpoint: a path to an
    actor.pt or checkpoint.pt instead. Metadata keys: env_id, algo, context_len,
    eval_context_len, eval_target_return, online_target_return, reward_scale, reward_offset,
    reward_divisor, max_episode_steps, obs_dim, act_dim, action_low, action_high, model_name,
    stochastic, state_mean, state_std, online_env_steps, actor_updates, seed, vidt_version,
    actor_selection ("last" or "best"; absent in files of older versions) and, for "best",
    selected_eval_return.
    """
    run_dir = Path(run_dir)
    if which not in ACTORS:
        raise ConfigError(f"unknown actor {which!r}: choose one of {', '.join(ACTORS)}")
    if checkpoint is None and which == "best":
        path = run_dir / ACTOR_BEST
        if not path.exists():
            raise ModelFileError(f"{run_dir}: no {ACTOR_BEST} (the run has not evaluated yet, or "
                                 f"was made by a vidt that kept only the last actor)")
    elif checkpoint is None:
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
