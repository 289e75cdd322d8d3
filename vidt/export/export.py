"""Actor -> one self-describing ONNX file, checked against PyTorch before it is written.

Exporter choice: torch's legacy TorchScript exporter (`dynamo=False`, opset 17,
`dynamic_axes` for the batch). On this kind of machine it takes ~0.5 s against ~7 s for the
dynamo exporter, writes the weights inside the model (dynamo writes a `.onnx.data` sidecar
unless told otherwise) and needs no onnxscript. Its deprecation and tracer warnings are
expected (the only traced Python value is the attention's constant 1/sqrt(head size)) and
are silenced here; the parity check is what tells whether the trace is right.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import vidt
from vidt.errors import ConfigError, ModelFileError, VidtError
from vidt.model import Actor
from vidt.policy_file import (
    FORMAT_VERSION,
    INPUT_NAMES,
    OUTPUT,
    TIMESTEPS,
    OnnxPolicy,
    PolicyMetadata,
    write_metadata,
)
from vidt.window import WindowInputs

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # LayerNormalization is a single op from 17; onnxruntime >= 1.14 runs it
PARITY_TOL = 1e-4  # max abs action difference eager vs onnxruntime (seen: <= 5e-7)


@dataclass(frozen=True)
class ExportReport:
    path: str
    max_abs_diff: float  # over all parity windows, eager PyTorch vs onnxruntime
    n_windows: int  # parity windows checked (random and real-looking, batch 1 and 64)
    n_real_windows: int  # of which taken from rollouts in the env (0 if it could not be made)
    opset: int
    size_bytes: int
    seconds: float
    metadata: PolicyMetadata

    def to_dict(self) -> dict:
        d = asdict(self)
        d["metadata"] = asdict(self.metadata)
        return d


def _check_finite(actor: Actor) -> None:
    bad = [n for n, t in [*actor.named_parameters(), *actor.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ModelFileError(f"refusing to export: non-finite values (NaN/inf) in {shown}; "
                             "the run diverged: try the actor of its best evaluation "
                             "(`vidt export RUN_DIR --actor best`)")


# Of the facts the run's actor file and the ONNX file share (PolicyFacts), those the exporter
# takes from the actor itself, checking the run's metadata against them; the default target
# return, from the run with a fallback; and the rest, copied from the run's metadata. The
# other PolicyMetadata fields come from this exporter (versions) or the graph (model_version).
FROM_ACTOR = ("obs_dim", "act_dim", "context_len", "action_low", "action_high", "reward_scale")
PASSED_THROUGH = ("algo", "env_id", "model_name", "eval_context_len", "max_episode_steps",
                  "reward_offset", "reward_divisor", "actor_selection")
# The training dataset's return statistics, when `meta` has them (`export` reads them from the
# run's dataset): copied as they are, zero included.
DATA_RETURNS = ("data_return_mean", "data_return_max")


def build_metadata(actor: Actor, meta: dict, model_name: str) -> PolicyMetadata:
    """Metadata from the actor's own sizes and buffers, checked against the run's `meta`.
    `model_version` is left empty: it is the content hash, filled in once the graph exists."""
    obs_dim, act_dim = actor.state_mean.numel(), actor.act_scale.numel()
    K = actor.model.cfg.context_len
    low = (actor.act_bias - actor.act_scale).tolist()
    high = (actor.act_bias + actor.act_scale).tolist()
    reward_scale = float(actor.reward_scale)
    for key, have in (("obs_dim", obs_dim), ("act_dim", act_dim), ("context_len", K)):
        if key in meta and int(meta[key]) != have:
            raise ModelFileError(f"checkpoint metadata says {key}={meta[key]}, the actor has {have}")
    for key, have in (("action_low", low), ("action_high", high)):
        if key in meta and not np.allclose(np.asarray(meta[key], dtype=np.float64), have,
                                           rtol=1e-5, atol=1e-5):
            raise ModelFileError(f"checkpoint metadata {key}={meta[key]} disagrees with the "
                                 f"actor's action bounds {have}")
    if "reward_scale" in meta and not math.isclose(float(meta["reward_scale"]), reward_scale,
                                                   rel_tol=1e-5):
        raise ModelFileError(f"checkpoint metadata reward_scale={meta['reward_scale']} disagrees "
                             f"with the actor's {reward_scale}")
    # The buffers are float32: write the run's own (float64) values when it has them, so the
    # file says 0.001 rather than 0.0010000000474974513.
    low, high = meta.get("action_low", low), meta.get("action_high", high)
    reward_scale = float(meta.get("reward_scale", f"{reward_scale:.7g}"))
    target = meta.get("default_target_return", meta.get("eval_target_return"))
    if target is None:
        raise ConfigError("export needs a default target return ('eval_target_return' in the "
                          "run's metadata)")
    # The fields the run's metadata gives as they are, by PolicyMetadata's own field names.
    given = {name: PolicyMetadata.cast(name, meta[name]) for name in PASSED_THROUGH
             if meta.get(name) not in (None, "", 0)}
    given.update({name: PolicyMetadata.cast(name, meta[name]) for name in DATA_RETURNS
                  if meta.get(name) is not None})
    return PolicyMetadata(**{
        "algo": "", "env_id": "", "model_name": model_name, "eval_context_len": K,
        "max_episode_steps": 0, **given,
        "format_version": FORMAT_VERSION, "version": vidt.__version__, "obs_dim": obs_dim,
        "act_dim": act_dim, "action_low": low, "action_high": high, "context_len": K,
        "default_target_return": float(target), "reward_scale": reward_scale,
        "model_version": ""})


# ---- parity windows --------------------------------------------------------------------------
def random_windows(actor: Actor, n: int, rng: np.random.Generator,
                   target_return: float) -> WindowInputs:
    """n windows of random values around the actor's state statistics, with random left
    padding (garbage in the padded slots, which the graph must ignore) and random RTGs."""
    K, S, A = actor.model.cfg.context_len, actor.state_mean.numel(), actor.act_scale.numel()
    mean, std = actor.state_mean.numpy(), actor.state_std.numpy()
    scale, bias = actor.act_scale.numpy(), actor.act_bias.numpy()
    obs = (mean + std * rng.normal(0, 2, (n, K, S))).astype(np.float32)
    act = (bias + scale * rng.uniform(-1.2, 1.2, (n, K, A))).astype(np.float32)  # some out of bounds
    rtg = (target_return * rng.uniform(-0.5, 1.5, (n, K))).astype(np.float32)
    lengths = rng.integers(1, K + 1, n)
    mask = (np.arange(K)[None, :] >= K - lengths[:, None]).astype(np.float32)  # (n, K)
    ts = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64) + rng.integers(0, 500, (n, 1))
    return WindowInputs(obs, act, rtg, mask, ts * mask.astype(np.int64))


def rollout_windows(act: Callable[[WindowInputs], np.ndarray], meta: PolicyMetadata, n: int,
                    seed: int, max_seconds: float = 20.0) -> WindowInputs | None:
    """Up to n real windows: episodes of `act` (e.g. the exported policy's `predict`, much
    faster at batch 1 than eager PyTorch) in the env, built by ContextWindow as every consumer
    of the file builds them. None if the env cannot be made here."""
    try:
        from vidt.envs import make_env

        env = make_env(meta.env_id)
    except Exception:  # unknown id, missing optional extra: fall back to random windows
        return None
    S, A = meta.obs_dim, meta.act_dim
    if env.observation_space.shape != (S,) or env.action_space.shape != (A,):
        env.close()
        return None
    out: list[WindowInputs] = []
    start, episode = time.monotonic(), 0
    while len(out) < n and time.monotonic() - start < max_seconds:
        window = meta.new_window()
        obs, _ = env.reset(seed=seed + episode)
        episode += 1
        reward, done = 0.0, False
        while not done and len(out) < n:
            inputs = window.observe(obs, reward)
            out.append(inputs)
            action = act(inputs)[0]
            window.record_action(action)
            obs, reward, term, trunc, _ = env.step(action)
            done = term or trunc
    env.close()
    return WindowInputs.stack(out) if out else None


def _torch_actions(actor: Actor, w: WindowInputs) -> np.ndarray:
    feed = [torch.from_numpy(np.ascontiguousarray(getattr(w, name))) for name in INPUT_NAMES]
    ts = torch.from_numpy(w.timesteps) if actor.model.embed_time is not None else None
    with torch.inference_mode():
        return actor(*feed, ts).numpy()


def _take(w: WindowInputs, idx) -> WindowInputs:
    return WindowInputs(w.observations[idx], w.actions[idx], w.returns_to_go[idx], w.mask[idx],
                        w.timesteps[idx])


def parity(actor: Actor, policy: OnnxPolicy, windows: WindowInputs, batch_sizes=(1, 64),
           progress: Callable[[int], None] | None = None) -> float:
    """Max abs action difference eager vs onnxruntime. The first 1/16 of the windows (64 of
    1,024) go one at a time, the rest in batches of the largest size. ModelFileError if
    onnxruntime's actions are non-finite or outside the bounds."""
    n = windows.mask.shape[0]
    n_single = min(n, max(1, n // 16)) if len(batch_sizes) > 1 else 0
    spans = [(i, i + batch_sizes[0]) for i in range(0, n_single, batch_sizes[0])]
    spans += [(i, min(i + batch_sizes[-1], n)) for i in range(n_single, n, batch_sizes[-1])]
    worst = 0.0
    low = np.asarray(policy.metadata.action_low, dtype=np.float32)
    high = np.asarray(policy.metadata.action_high, dtype=np.float32)
    for a, b in spans:
        w = _take(windows, slice(a, b))
        ref, got = _torch_actions(actor, w), policy.predict(w)
        if not np.isfinite(got).all():
            raise ModelFileError("refusing to export: onnxruntime gave non-finite actions")
        slack = 1e-5 * (high - low)
        if (got < low - slack).any() or (got > high + slack).any():
            raise ModelFileError(f"refusing to export: onnxruntime gave actions outside the "
                                 f"bounds [{low.tolist()}, {high.tolist()}]")
        worst = max(worst, float(np.abs(ref - got).max()))
        if progress:
            progress(b - a)
    return worst


# ---- export ----------------------------------------------------------------------------------
def _to_onnx_bytes(actor: Actor, opset: int) -> bytes:
    K, S, A = actor.model.cfg.context_len, actor.state_mean.numel(), actor.act_scale.numel()
    args = [torch.zeros(2, K, S), torch.zeros(2, K, A), torch.zeros(2, K), torch.ones(2, K)]
    names = list(INPUT_NAMES)
    if actor.model.embed_time is not None:  # optional 5th input, only when the actor uses it
        args.append(torch.zeros(2, K, dtype=torch.long))
        names.append(TIMESTEPS.name)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        try:
            torch.onnx.export(
                actor, tuple(args), buf, dynamo=False, opset_version=opset,
                input_names=names, output_names=[OUTPUT.name],
                dynamic_axes={n: {0: "batch"} for n in [*names, OUTPUT.name]},
                do_constant_folding=True,
            )
        except Exception as e:
            raise ConfigError(f"ONNX export with opset {opset} failed: {e}") from e
    return buf.getvalue()


def export_actor(
    actor: Actor,
    meta: dict,
    out: str | os.PathLike,
    opset: int | None = None,
    *,
    n_windows: int = 1024,
    tol: float = PARITY_TOL,
    seed: int = 0,
    model_name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Export `actor` to `out` (one ONNX file) after checking it against PyTorch.

    meta: the run's facts (env_id, algo, eval_context_len, eval_target_return,
    max_episode_steps; obs_dim/act_dim/context_len/action bounds are cross-checked against
    the actor). Half the parity windows come from the actor's own rollouts in the env when
    it can be made, the rest are random. Nothing is written unless parity holds.
    """
    t0 = time.monotonic()
    import onnx

    out = Path(out)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not 14 <= opset <= 20:
        raise ConfigError(f"--opset must be in [14, 20] for the exporter used, got {opset}")
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory; --out takes a file path like policy.onnx")
    if n_windows < 1:
        raise ValueError(f"n_windows must be >= 1, got {n_windows}")
    actor = copy.deepcopy(actor).cpu().float().eval()  # the caller's module stays as it was
    _check_finite(actor)
    md = build_metadata(actor, meta, model_name or out.stem)

    model = onnx.load_from_string(_to_onnx_bytes(actor, opset))
    md = write_metadata(model, md, str(out))
    model.producer_name, model.producer_version = "vidt", vidt.__version__
    model.doc_string = (f"vidt {md.algo} actor for {md.env_id or 'an unknown env'}: raw "
                        "observations, actions, returns_to_go and mask in; action out")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ModelFileError(f"the exported graph fails onnx.checker: {e}") from e
    data = model.SerializeToString()

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a model file is not a secret
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # Load it as every consumer will: the same metadata and signature checks. One thread:
        # the rollouts are batch-1 calls, where a second (spinning) thread on a busy machine
        # made the tiny-model export 3x slower.
        policy = OnnxPolicy(tmp, provider="cpu", intra_op_threads=1)

        rng = np.random.default_rng(seed)
        real = rollout_windows(policy.predict, md, n_windows // 2, seed) if md.env_id else None
        n_real = 0 if real is None else real.mask.shape[0]
        fake = random_windows(actor, n_windows - n_real, rng, md.default_target_return)
        windows = fake if real is None else WindowInputs.stack([real, fake])
        windows = _take(windows, rng.permutation(windows.mask.shape[0]))
        diff = parity(actor, policy, windows, progress=progress)
        del policy
        if not diff <= tol:
            raise ModelFileError(
                f"refusing to write {out}: onnxruntime and PyTorch disagree by {diff:.3g} "
                f"(max abs action difference over {n_windows} windows; tolerance {tol:g})")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportReport(path=str(out), max_abs_diff=diff, n_windows=windows.mask.shape[0],
                        n_real_windows=n_real, opset=opset, size_bytes=len(data),
                        seconds=time.monotonic() - t0, metadata=md)


def export(run_dir: str | os.PathLike, out: str | os.PathLike, checkpoint: str | None = None,
           opset: int | None = None, which: str = "last", **kwargs) -> ExportReport:
    """Export a training run's actor: `which` is "last" (as training ended) or "best" (of the
    run's best evaluation); `checkpoint`, a file of the run, overrides it."""
    try:
        from vidt.train.checkpoint import load_actor
    except ImportError as e:
        raise ConfigError("this vidt build has no training checkpoints module "
                          "(vidt.train.checkpoint)") from e
    actor, meta = load_actor(run_dir, checkpoint, which)
    kwargs.setdefault("model_name", Path(run_dir).resolve().name)
    return export_actor(actor, {**meta, **data_returns(run_dir)}, out, opset, **kwargs)


def data_returns(run_dir: str | os.PathLike) -> dict[str, float]:
    """The mean and largest episode return of the dataset the run trained on (its
    config.json names it), in the env's own reward units; {} when that dataset cannot be
    read here (moved, deleted, a path relative to another directory): the file then says
    nothing about its data rather than failing the export."""
    from vidt.data import load
    from vidt.train.config import read_run_config

    if not (Path(run_dir) / "config.json").is_file():
        log.warning("%s has no config.json naming its dataset: the file will not carry the "
                    "training data's returns", run_dir)
        return {}
    try:
        cfg = read_run_config(run_dir)
        source = cfg.get("dataset")
        # The env only picks the built-in data: a file's sizes were checked by the trainer.
        episodes = load(source, cfg["env_id"] if source is None else None)
    except (VidtError, OSError) as e:
        log.warning("the file will not carry the training data's returns: %s", e)
        return {}
    returns = [ep.episode_return for ep in episodes]
    if not returns:
        return {}
    return {"data_return_mean": float(np.mean(returns)), "data_return_max": float(np.max(returns))}
