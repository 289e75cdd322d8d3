"""The exported policy file, one ONNX file, in one torch-free place: what its graph takes and
gives, what its metadata holds and how that is written and read, its model-version hash, and
`OnnxPolicy`, which runs it with onnxruntime. The exporter writes files through this module;
the server, collection and `vidt eval` read them through it. Needs only numpy and
onnxruntime (imported when a file is opened), so a server or a robot never loads torch.

The graph:
  inputs   observations  (B, K, S) float32  raw observations
           actions       (B, K, A) float32  raw actions; the last real step's is ignored
           returns_to_go (B, K)    float32  raw (unscaled) returns-to-go
           mask          (B, K)    float32  1 = real step, 0 = left padding
           timesteps     (B, K)    int64    only for actors trained with a timestep embedding
  output   action        (B, A)    float32  the last step's action, within the action bounds
B is dynamic; K is fixed per file. metadata_props: `vidt.<field>` for each PolicyMetadata
field, all strings (CODECS says how each field type is written).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vidt.errors import ConfigError, ModelFileError
from vidt.window import ContextWindow, WindowInputs

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"  # of the file layout; this vidt reads this version only
PREFIX = "vidt."  # of every metadata key
MODEL_VERSION_KEY = PREFIX + "model_version"  # the content hash; not part of what it hashes
# Labels that do not change what the file does, also left out of the hash: the same weights
# exported as the run's "best" and as its "last" actor, or by another vidt release, are one
# model, and replicas serving either must continue each other's episodes.
# The training data's return statistics are labels too: they describe where the actor came
# from, not what it does, and an export that could not read the run's dataset (moved, or
# written by a vidt before they were recorded) holds the same model as one that could.
UNHASHED = (MODEL_VERSION_KEY, PREFIX + "actor_selection", PREFIX + "version",
            PREFIX + "data_return_mean", PREFIX + "data_return_max")


# ---- the graph's inputs and output -----------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    onnx_type: str  # as onnxruntime reports it
    dtype: type  # numpy dtype of the values fed or returned
    dims: tuple[str, ...]  # after the dynamic batch axis: K context_len, S obs_dim, A act_dim

    def dims_for(self, meta: PolicyMetadata) -> tuple[int, ...]:
        sizes = {"K": meta.context_len, "S": meta.obs_dim, "A": meta.act_dim}
        return tuple(sizes[d] for d in self.dims)


# In the actor's argument order; the names are also WindowInputs' fields.
INPUTS = (
    TensorSpec("observations", "tensor(float)", np.float32, ("K", "S")),
    TensorSpec("actions", "tensor(float)", np.float32, ("K", "A")),
    TensorSpec("returns_to_go", "tensor(float)", np.float32, ("K",)),
    TensorSpec("mask", "tensor(float)", np.float32, ("K",)),
)
# A fifth input, only in files of actors trained with a timestep embedding.
TIMESTEPS = TensorSpec("timesteps", "tensor(int64)", np.int64, ("K",))
OUTPUT = TensorSpec("action", "tensor(float)", np.float32, ("A",))
INPUT_NAMES = tuple(t.name for t in INPUTS)


# ---- metadata --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PolicyFacts:
    """What a trained actor is, whichever file carries it: the run's actor file
    (`vidt.train.checkpoint.ActorMeta`) and the ONNX file (`PolicyMetadata`) both extend this
    class, so each fact has one name and one type in both."""

    algo: str  # "vidt", "odt" or "td3"
    env_id: str  # Gymnasium id the actor was trained on ("" if unknown)
    model_name: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    context_len: int  # K, the graph's fixed window length
    eval_context_len: int  # T_eval <= K: steps of history kept when acting
    default_target_return: float  # RTG a new episode is conditioned on unless told otherwise
    reward_scale: float  # informative only: the graph applies it itself
    max_episode_steps: int  # the env's time limit; 0 if unknown
    # Added to each reported reward before it counts against the return-to-go: the rewards
    # the actor was trained on (AntMaze: -1 per step). Optional in a file: absent means 0.
    reward_offset: float = 0.0
    # Then divided by this (Adroit: 100): target returns are in those units. Absent means 1.
    reward_divisor: float = 1.0
    # Which of the run's actors this is: "last" (as training ended) or "best" (of its best
    # evaluation); "" in files written before vidt kept both.
    actor_selection: str = ""

    def __post_init__(self):
        # Bounds arrive as lists (tensor.tolist(), JSON) or tuples: always tuples of floats,
        # so that equal facts compare equal.
        for name in ("action_low", "action_high"):
            object.__setattr__(self, name, _float_tuple(getattr(self, name)))


def _float_tuple(values) -> tuple[float, ...]:
    return tuple(float(x) for x in values)


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def _read_optional_float(raw: str) -> float | None:
    if raw == "":
        return None
    x = float(raw)
    if not math.isfinite(x):
        raise ValueError("not a finite number")
    return x


def _read_bounds(raw: str) -> tuple[float, ...]:
    vals = json.loads(raw)
    if not isinstance(vals, list):
        raise ValueError("expected a JSON list of numbers")
    return _float_tuple(vals)


class Codec(NamedTuple):
    write: Callable[[Any], str]  # a field's value -> its metadata_props text
    read: Callable[[str], Any]  # and back
    cast: Callable[[Any], Any]  # a value from elsewhere (a run's metadata) -> the field's type


# Field type, as the dataclasses declare it (the annotation's text: this module's annotations
# are postponed) -> its codec: the one place a metadata value changes type.
CODECS: dict[str, Codec] = {
    "str": Codec(str, str, str),
    "int": Codec(str, int, int),
    "float": Codec(lambda v: repr(float(v)), float, float),
    # "" for None: a fact the exporter did not know.
    "float | None": Codec(lambda v: "" if v is None else repr(float(v)), _read_optional_float,
                          _optional_float),
    "tuple[float, ...]": Codec(lambda v: json.dumps([float(x) for x in v]), _read_bounds,
                               _float_tuple),
}


@dataclass(frozen=True, kw_only=True)
class PolicyMetadata(PolicyFacts):
    """What an exported file says about itself (`metadata_props`, keys prefixed `vidt.`)."""

    format_version: str  # of the file layout; this vidt reads FORMAT_VERSION only
    version: str  # vidt version that wrote the file
    model_version: str  # content hash of the graph and the rest of the metadata
    # Mean and largest episode return of the run's training dataset, in the env's own reward
    # units (as `vidt datasets info` shows them): where a target return sits against the data
    # the actor learned from (`vidt eval --target-returns --plot`). None (absent or "" in a
    # file): not known, e.g. the dataset could not be read when the actor was exported.
    data_return_mean: float | None = None
    data_return_max: float | None = None

    @classmethod
    def cast(cls, name: str, value) -> Any:
        """`value` as field `name` holds it (e.g. a number from a run's metadata)."""
        return CODECS[_FIELDS[name].type].cast(value)

    def new_window(self, target_return: float | None = None) -> ContextWindow:
        """An empty window for one episode, sized and conditioned as this policy expects:
        every consumer (server sessions, collection, export's checks) builds it here."""
        rtg = self.default_target_return if target_return is None else float(target_return)
        return ContextWindow(self.obs_dim, self.act_dim, self.context_len,
                             self.eval_context_len, rtg, self.reward_offset, self.reward_divisor)

    def to_props(self) -> dict[str, str]:
        """The file's metadata_props."""
        return {PREFIX + f.name: CODECS[f.type].write(getattr(self, f.name))
                for f in fields(self)}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> PolicyMetadata:
        """Parse and check `vidt.*` metadata; ModelFileError names the key and value at fault."""
        if PREFIX + "format_version" not in props:
            raise ModelFileError(
                f"{source}: an ONNX model without vidt metadata (no '{PREFIX}format_version' in "
                "metadata_props); export one with `vidt export RUN_DIR --out policy.onnx`")
        fv = props[PREFIX + "format_version"]
        if fv != FORMAT_VERSION:
            raise ModelFileError(f"{source}: vidt file format {fv!r}; this vidt reads format "
                                 f"{FORMAT_VERSION!r} (upgrade vidt or re-export)")
        missing = [PREFIX + f.name for f in fields(cls)
                   if PREFIX + f.name not in props and f.default is MISSING]
        if missing:
            raise ModelFileError(f"{source}: vidt metadata lacks {', '.join(missing)}")

        def parse(f):
            raw = props[PREFIX + f.name]
            try:
                return CODECS[f.type].read(raw)
            except (ValueError, TypeError) as e:
                raise ModelFileError(f"{source}: metadata {PREFIX}{f.name}={raw!r} is invalid: "
                                     f"{e}") from None

        m = cls(**{f.name: parse(f) for f in fields(cls) if PREFIX + f.name in props})
        problems = []
        if m.obs_dim < 1 or m.act_dim < 1:
            problems.append(f"obs_dim={m.obs_dim} and act_dim={m.act_dim} must be >= 1")
        if len(m.action_low) != m.act_dim or len(m.action_high) != m.act_dim:
            problems.append(f"action bounds have {len(m.action_low)}/{len(m.action_high)} "
                            f"values for act_dim={m.act_dim}")
        elif not all(math.isfinite(lo) and math.isfinite(hi) and lo < hi
                     for lo, hi in zip(m.action_low, m.action_high)):
            problems.append(f"action bounds {m.action_low}..{m.action_high} are not finite "
                            "with low < high")
        if m.context_len < 1 or not 1 <= m.eval_context_len <= m.context_len:
            problems.append(f"context_len={m.context_len}, eval_context_len="
                            f"{m.eval_context_len} (need 1 <= eval_context_len <= context_len)")
        if not all(math.isfinite(x) for x in (m.default_target_return, m.reward_scale,
                                              m.reward_offset)):
            problems.append("default_target_return, reward_scale and reward_offset must be finite")
        if not (math.isfinite(m.reward_divisor) and m.reward_divisor > 0):
            problems.append(f"reward_divisor={m.reward_divisor} must be finite and > 0")
        if m.max_episode_steps < 0:
            problems.append(f"max_episode_steps={m.max_episode_steps} must be >= 0")
        if problems:
            raise ModelFileError(f"{source}: invalid vidt metadata: {'; '.join(problems)}")
        return m


_FIELDS = {f.name: f for f in fields(PolicyMetadata)}


def model_version(graph: bytes, props: Mapping[str, str]) -> str:
    """The content hash of a serialised graph (weights included) and its metadata, less the
    labels in UNHASHED: two exports of one actor with one run's metadata get one version."""
    h = hashlib.sha256(graph)
    h.update(json.dumps({k: v for k, v in props.items() if k not in UNHASHED},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def write_metadata(model, meta: PolicyMetadata, source: str = "model") -> PolicyMetadata:
    """Set an `onnx.ModelProto`'s metadata_props to `meta`, with `model_version` the content
    hash of the graph as it is now; returns the metadata as every reader will parse it."""
    import onnx

    props = meta.to_props()
    props[MODEL_VERSION_KEY] = model_version(model.graph.SerializeToString(), props)
    parsed = PolicyMetadata.from_props(props, source)
    onnx.helper.set_model_props(model, props)
    return parsed


def check_signature(session, meta: PolicyMetadata, source: str) -> bool:
    """Raise ModelFileError unless an onnxruntime session's graph takes and gives the tensors
    above, sized as `meta` says; True when it takes the optional `timesteps` input."""
    K, S, A = meta.context_len, meta.obs_dim, meta.act_dim
    specs = {t.name: t for t in (*INPUTS, TIMESTEPS)}
    got = {i.name: i for i in session.get_inputs()}
    unknown = sorted(set(got) - set(specs))
    missing = sorted(set(INPUT_NAMES) - set(got))
    if unknown or missing:
        raise ModelFileError(f"{source}: graph inputs {sorted(got)} do not match vidt's "
                             f"{sorted(INPUT_NAMES)} (missing {missing}, unexpected {unknown})")
    for name, arg in got.items():
        spec = specs[name]
        rank = 1 + len(spec.dims)
        if arg.type != spec.onnx_type:
            raise ModelFileError(f"{source}: input {name!r} is {arg.type}, expected "
                                 f"{spec.onnx_type}")
        if len(arg.shape) == rank and isinstance(arg.shape[0], int):
            raise ModelFileError(f"{source}: input {name!r} has a fixed batch size "
                                 f"({arg.shape[0]}); vidt files have a dynamic batch axis")
        if len(arg.shape) != rank or tuple(arg.shape[1:]) != spec.dims_for(meta):
            raise ModelFileError(f"{source}: input {name!r} has shape {arg.shape}, expected "
                                 f"[batch, {', '.join(map(str, spec.dims_for(meta)))}] "
                                 f"(metadata: K={K}, obs_dim={S}, act_dim={A})")
    outs = session.get_outputs()
    if len(outs) != 1 or outs[0].name != OUTPUT.name:
        raise ModelFileError(f"{source}: graph outputs {[o.name for o in outs]}, expected "
                             f"[{OUTPUT.name!r}]")
    out = outs[0]
    if (out.type != OUTPUT.onnx_type or len(out.shape) != 1 + len(OUTPUT.dims)
            or tuple(out.shape[1:]) != OUTPUT.dims_for(meta)):
        raise ModelFileError(f"{source}: output {OUTPUT.name!r} is {out.type} {out.shape}, "
                             f"expected {OUTPUT.onnx_type} [batch, {A}]")
    return TIMESTEPS.name in got


# ---- running a file --------------------------------------------------------------------------
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def _gpu_visible() -> bool:
    # onnxruntime-gpu lists CUDA as available even without a GPU and then silently falls back
    # (logging an error): only ask for it when a driver is there.
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def _providers(provider: str) -> list[str]:
    import onnxruntime as ort

    provider = provider.lower()
    if provider not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"provider must be 'auto', 'cpu' or 'cuda', got {provider!r}")
    if provider == "cpu":
        return [CPU]
    has_cuda = CUDA in ort.get_available_providers()
    if provider == "cuda" and not has_cuda:
        raise ConfigError("provider 'cuda' asked for, but this onnxruntime has no CUDA provider: "
                          "install onnxruntime-gpu (pip install 'vidt[gpu]') instead of onnxruntime")
    if provider == "cuda" or (has_cuda and _gpu_visible()):
        return [CUDA, CPU]
    if has_cuda:  # onnxruntime-gpu without a driver: say once why the CPU serves
        log.warning("onnxruntime-gpu is installed but no NVIDIA driver is visible "
                    "(/proc/driver/nvidia/version, /dev/nvidiactl): running on the CPU")
    return [CPU]


def _open_session(path: Path, data: bytes, providers: list[str], intra: int | None,
                  inter: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if intra is not None:
        opts.intra_op_num_threads = int(intra)
    if inter is not None:
        opts.inter_op_num_threads = int(inter)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model (corrupt or truncated file?): "
                             f"{first}") from None


class OnnxPolicy:
    """An exported actor in onnxruntime: `predict` for batches of windows, and a
    single-episode policy (`reset` / `act`) that keeps its own ContextWindow.

    provider: "auto" (CUDA when onnxruntime-gpu and a GPU are both present, else CPU), "cpu"
    or "cuda" (an error if CUDA does not become the session's provider). `.provider` is the
    provider the session really runs on.
    """

    def __init__(self, path: str | os.PathLike, provider: str = "auto",
                 intra_op_threads: int | None = None, inter_op_threads: int | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise ModelFileError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: not a file")
        data = self.path.read_bytes()
        if not data:
            raise ModelFileError(f"{self.path}: empty file, not an ONNX model")
        wanted = _providers(provider)
        self.session = _open_session(self.path, data, wanted, intra_op_threads, inter_op_threads)
        self.provider: str = self.session.get_providers()[0]
        if CUDA in wanted and self.provider != CUDA:
            why = (f"onnxruntime fell back to {self.provider}: a GPU is visible but CUDA could "
                   "not start (missing CUDA 13 / cuDNN 9 libraries? onnxruntime's log above "
                   "says which)")
            if provider.lower() == "cuda":
                raise ConfigError(f"provider 'cuda' asked for, but {why}")
            log.warning("%s", why)
        try:
            props = self.session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as e:  # a corrupted file's metadata bytes
            raise ModelFileError(f"{self.path}: its metadata is not valid UTF-8 ({e.reason}); "
                                 f"the file is corrupt") from None
        self.metadata = PolicyMetadata.from_props(props, str(self.path))
        timesteps = check_signature(self.session, self.metadata, str(self.path))
        # What predict feeds: each input with its shape after the batch axis.
        self._feeds = [(t.name, t.dtype, t.dims_for(self.metadata))
                       for t in (*INPUTS, *((TIMESTEPS,) if timesteps else ()))]
        self._window: ContextWindow | None = None
        # Debug: a model repository opens files to read what they are; the server says what
        # it serves (and loads) itself.
        log.debug("loaded %s (%s, model_version %s) on %s", self.path, self.metadata.model_name,
                 self.metadata.model_version, self.provider)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"OnnxPolicy({str(self.path)!r}, env_id={m.env_id!r}, algo={m.algo!r}, "
                f"K={m.context_len}, provider={self.provider!r})")

    # ---- batches of windows -------------------------------------------------------------
    def predict(self, inputs: WindowInputs) -> np.ndarray:
        """Actions (B, A) float32 for a batch of windows built by ContextWindow (or alike)."""
        feed = {name: np.ascontiguousarray(getattr(inputs, name), dtype=dtype)
                for name, dtype, _ in self._feeds}
        obs = feed["observations"]
        B = obs.shape[0] if obs.ndim == 3 else -1
        for name, _, dims in self._feeds:
            if feed[name].shape != (B, *dims) or B < 1:
                m = self.metadata
                raise ValueError(f"{name} has shape {feed[name].shape}, expected {(B, *dims)} "
                                 f"(B >= 1, K={m.context_len}, obs_dim={m.obs_dim}, "
                                 f"act_dim={m.act_dim})")
        (action,) = self.session.run(None, feed)
        return action  # (B, A)

    def act_batch(self, windows: list[WindowInputs]) -> np.ndarray:
        """Actions (len(windows), A) for several windows in one onnxruntime call."""
        if not windows:
            return np.zeros((0, self.metadata.act_dim), dtype=np.float32)
        return self.predict(WindowInputs.stack(list(windows)))

    # ---- one episode ----------------------------------------------------------------------
    def new_window(self, target_return: float | None = None) -> ContextWindow:
        """An empty window for one episode, sized and conditioned as this policy expects."""
        return self.metadata.new_window(target_return)

    def reset(self, target_return: float | None = None) -> ContextWindow:
        """Start a new episode conditioned on `target_return` (default: the file's)."""
        self._window = self.new_window(target_return)
        return self._window

    @property
    def window(self) -> ContextWindow | None:
        return self._window

    def act(self, observation, reward: float = 0.0) -> np.ndarray:
        """Report o_t and the reward for the previous action (ignored at the first step);
        returns a_t (A,), which is also recorded in the window."""
        if self._window is None:
            self.reset()
        action = self.predict(self._window.observe(observation, reward))[0]
        self._window.record_action(action)
        return action
