"""Run an exported vidt policy with onnxruntime: no torch here, so a server or a robot needs
only numpy and onnxruntime.

The file's contract (written by `vidt.export`):
  inputs   observations  (B, K, S) float32  raw observations
           actions       (B, K, A) float32  raw actions; the last real step's is ignored
           returns_to_go (B, K)    float32  raw (unscaled) returns-to-go
           mask          (B, K)    float32  1 = real step, 0 = left padding
           timesteps     (B, K)    int64    only for actors trained with a timestep embedding
  output   action        (B, A)    float32  the last step's action, within the action bounds
  metadata_props: the `vidt.*` keys of `PolicyMetadata`, all strings.
B is dynamic; K is fixed per file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np

from vidt.errors import ConfigError, ModelFileError
from vidt.window import ContextWindow, WindowInputs

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
PREFIX = "vidt."
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"

# name -> (ONNX element type, rank); the sizes are checked against the metadata.
INPUTS = {
    "observations": ("tensor(float)", 3),
    "actions": ("tensor(float)", 3),
    "returns_to_go": ("tensor(float)", 2),
    "mask": ("tensor(float)", 2),
}
OPTIONAL_INPUTS = {"timesteps": ("tensor(int64)", 2)}
OUTPUT = ("action", "tensor(float)", 2)


@dataclass(frozen=True)
class PolicyMetadata:
    """What an exported file says about itself (`metadata_props`, keys prefixed `vidt.`)."""

    format_version: str  # of the file layout; this runtime reads FORMAT_VERSION only
    version: str  # vidt version that wrote the file
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
    model_version: str  # content hash of the weights and the rest of the metadata
    # Added to each reported reward before it counts against the return-to-go: the rewards
    # the actor was trained on (AntMaze: -1 per step). Optional: absent means 0.
    reward_offset: float = 0.0
    # Then divided by this (Adroit: 100): target returns are in those units. Absent means 1.
    reward_divisor: float = 1.0
    # Which of the run's actors this is: "last" (as training ended) or "best" (of its best
    # evaluation); "" in files written before vidt kept both.
    actor_selection: str = ""

    def new_window(self, target_return: float | None = None) -> ContextWindow:
        """An empty window for one episode, sized and conditioned as this policy expects:
        every consumer (server sessions, collection, export's checks) builds it here."""
        rtg = self.default_target_return if target_return is None else float(target_return)
        return ContextWindow(self.obs_dim, self.act_dim, self.context_len,
                             self.eval_context_len, rtg, self.reward_offset, self.reward_divisor)

    def to_props(self) -> dict[str, str]:
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, tuple):
                v = json.dumps([float(x) for x in v])
            elif isinstance(v, float):
                v = repr(v)
            out[PREFIX + k] = str(v)
        return out

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> PolicyMetadata:
        """Parse and check `vidt.*` metadata; ModelFileError names the key and value at fault."""
        if PREFIX + "format_version" not in props:
            raise ModelFileError(
                f"{source}: an ONNX model without vidt metadata (no '{PREFIX}format_version' in "
                "metadata_props); export one with `vidt export RUN_DIR --out policy.onnx`")
        fv = props[PREFIX + "format_version"]
        if fv != FORMAT_VERSION:
            raise ModelFileError(f"{source}: vidt file format {fv!r}; this vidt reads format "
                                 f"{FORMAT_VERSION!r} (upgrade vidt or re-export)")
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        missing = [PREFIX + f.name for f in fields(cls)
                   if PREFIX + f.name not in props and f.name not in optional]
        if missing:
            raise ModelFileError(f"{source}: vidt metadata lacks {', '.join(missing)}")

        def bounds(raw):
            vals = json.loads(raw)
            if not isinstance(vals, list):
                raise ValueError("expected a JSON list of numbers")
            return tuple(float(x) for x in vals)

        # Each field's type says how its text is read: the keys are the fields, written once.
        readers = {"str": str, "int": int, "float": float, "tuple[float, ...]": bounds}

        def parse(f):
            raw = props[PREFIX + f.name]
            try:
                return readers[f.type](raw)
            except (ValueError, TypeError) as e:
                raise ModelFileError(f"{source}: metadata {PREFIX}{f.name}={raw!r} is invalid: "
                                     f"{e}") from None

        m = cls(format_version=fv, **{f.name: parse(f) for f in fields(cls)
                                      if f.name != "format_version" and PREFIX + f.name in props})
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


def _check_signature(session, meta: PolicyMetadata, source: str) -> bool:
    """Raise ModelFileError unless the graph matches the vidt contract; True when the graph
    takes the optional `timesteps` input."""
    K, S, A = meta.context_len, meta.obs_dim, meta.act_dim
    want_tail = {"observations": [K, S], "actions": [K, A], "returns_to_go": [K], "mask": [K],
                 "timesteps": [K]}
    got = {i.name: i for i in session.get_inputs()}
    unknown = sorted(set(got) - set(INPUTS) - set(OPTIONAL_INPUTS))
    missing = sorted(set(INPUTS) - set(got))
    if unknown or missing:
        raise ModelFileError(f"{source}: graph inputs {sorted(got)} do not match vidt's "
                             f"{sorted(INPUTS)} (missing {missing}, unexpected {unknown})")
    for name, arg in got.items():
        dtype, rank = {**INPUTS, **OPTIONAL_INPUTS}[name]
        if arg.type != dtype:
            raise ModelFileError(f"{source}: input {name!r} is {arg.type}, expected {dtype}")
        if len(arg.shape) == rank and isinstance(arg.shape[0], int):
            raise ModelFileError(f"{source}: input {name!r} has a fixed batch size "
                                 f"({arg.shape[0]}); vidt files have a dynamic batch axis")
        if len(arg.shape) != rank or list(arg.shape[1:]) != want_tail[name]:
            raise ModelFileError(f"{source}: input {name!r} has shape {arg.shape}, expected "
                                 f"[batch, {', '.join(map(str, want_tail[name]))}] "
                                 f"(metadata: K={K}, obs_dim={S}, act_dim={A})")
    outs = session.get_outputs()
    name, dtype, rank = OUTPUT
    if len(outs) != 1 or outs[0].name != name:
        raise ModelFileError(f"{source}: graph outputs {[o.name for o in outs]}, expected ['action']")
    if outs[0].type != dtype or len(outs[0].shape) != rank or outs[0].shape[1] != A:
        raise ModelFileError(f"{source}: output 'action' is {outs[0].type} {outs[0].shape}, "
                             f"expected {dtype} [batch, {A}]")
    return "timesteps" in got


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
        if provider.lower() == "cuda" and self.provider != CUDA:
            raise ConfigError(f"provider 'cuda' asked for, but onnxruntime fell back to "
                              f"{self.provider} (no usable GPU or CUDA libraries)")
        try:
            props = self.session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as e:  # a corrupted file's metadata bytes
            raise ModelFileError(f"{self.path}: its metadata is not valid UTF-8 ({e.reason}); "
                                 f"the file is corrupt") from None
        self.metadata = PolicyMetadata.from_props(props, str(self.path))
        self._timesteps = _check_signature(self.session, self.metadata, str(self.path))
        self._window: ContextWindow | None = None
        log.info("loaded %s (%s, model_version %s) on %s", self.path, self.metadata.model_name,
                 self.metadata.model_version, self.provider)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"OnnxPolicy({str(self.path)!r}, env_id={m.env_id!r}, algo={m.algo!r}, "
                f"K={m.context_len}, provider={self.provider!r})")

    # ---- batches of windows -------------------------------------------------------------
    def predict(self, inputs: WindowInputs) -> np.ndarray:
        """Actions (B, A) float32 for a batch of windows built by ContextWindow (or alike)."""
        m = self.metadata
        K, S, A = m.context_len, m.obs_dim, m.act_dim
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.as_feed().items()}
        B = feed["observations"].shape[0] if feed["observations"].ndim == 3 else -1
        want = {"observations": (B, K, S), "actions": (B, K, A), "returns_to_go": (B, K),
                "mask": (B, K)}
        for k, shape in want.items():
            if feed[k].shape != shape or B < 1:
                raise ValueError(f"{k} has shape {feed[k].shape}, expected {shape} "
                                 f"(B >= 1, K={K}, obs_dim={S}, act_dim={A})")
        if self._timesteps:
            feed["timesteps"] = np.ascontiguousarray(inputs.timesteps, dtype=np.int64)
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
