"""The model versions one server holds.

A version is ready before it serves: its onnxruntime session opened, its file checked against
the first version's sizes and env, one warm-up call made, its own Batcher built. Then the
SessionStore holds it (sessions.py: which version a session runs on, for its whole episode).

Where versions come from:
- `--model FILE`: the first (current) version.
- `--model-repo DIR` (repository.py): a directory of exported files and a pointer naming the
  current version and a canary. Without `--model`, the server follows the pointer: it rereads
  it on SIGHUP and every `model_poll_s`, loads what it names, then switches new sessions to
  it. With `--model`, the file is current and the repository only serves the next point.
- A resume or a pinned CreateSession for a version not held: loaded from the repository if it
  is there (the caller waits; running sessions do not), else FAILED_PRECONDITION.

At most `max_versions` are resident: loading one more first frees the idle ones, and is refused
with RESOURCE_EXHAUSTED if every one is in use (a version in use is never evicted). A version
that is neither current nor canary is freed once it has had no session for `unload_after_s`.

A file that cannot serve (corrupt, another env or other sizes, a pointer naming a missing file)
is refused: the server keeps serving what it has, logs one line why, and counts it
(`vidt_model_events_total{event="refused"}`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vidt.errors import VidtError

from .batcher import Batcher
from .repository import ModelRepository, compatible
from .sessions import FailedPrecondition, Model, ResourceExhausted, SessionStore

log = logging.getLogger(__name__)


class Versions:
    """The versions of one server, over its SessionStore (`store`).

    policy: the first version (an OnnxPolicy, or anything with `metadata`, `provider` and
    `predict`); open_policy(path): another one from a file (used with a repository)."""

    def __init__(self, policy, store_options: dict, *, metrics, max_batch: int,
                 batch_window_us: int, repo: ModelRepository | None = None,
                 follow_pointer: bool = False, max_versions: int = 4,
                 unload_after_s: float = 5.0,
                 open_policy: Callable[[Path], object] | None = None):
        self.metrics = metrics
        self.repo = repo
        self.follow_pointer = follow_pointer and repo is not None
        self.max_versions = int(max_versions)
        self.unload_after_s = float(unload_after_s)
        self._batch = dict(max_batch=max_batch, window_us=batch_window_us,
                           on_batch=metrics.batch_size.observe)
        self._open_policy = open_policy
        self.policies: dict[str, tuple[object, Batcher]] = {}  # version -> (policy, batcher)
        first = self._model(policy)
        self.store = SessionStore(policy.metadata, first.infer, infer_async=first.infer_async,
                                  **store_options)
        self.first = policy.metadata  # what every later version must match
        self._load_lock = threading.Lock()  # one load at a time; sessions never wait on it
        self._problem: str | None = None  # the pointer's last refusal, logged once
        self._refused = None  # a pointer whose versions were refused: not retried until it changes

    # ---- loading -----------------------------------------------------------------------------
    def _model(self, policy) -> Model:
        batcher = Batcher(policy.predict, **self._batch)
        self.policies[policy.metadata.model_version] = (policy, batcher)
        return Model(policy.metadata, batcher, batcher.submit)

    def load(self, version: str) -> None:
        """Hold `version` (from the repository) if this server does not yet; the caller waits
        while it loads. FAILED_PRECONDITION when it is nowhere or refused, RESOURCE_EXHAUSTED
        when `max_versions` are held and in use."""
        if self.store.holds(version) or self.repo is None:
            return  # (without a repository, the store's own refusal names what it holds)
        with self._load_lock:
            if self.store.holds(version):
                return
            entry = self.repo.entry(version)
            if entry is None:
                raise FailedPrecondition(
                    f"model_version {version!r} is neither held by this server nor in its "
                    f"model repository {self.repo.root}")
            self.unload(0.0)
            held = len(self.store.models())
            if held >= self.max_versions:
                self.metrics.model_events.labels("refused", version).inc()
                raise ResourceExhausted(
                    f"cannot load model_version {version!r}: this server holds {held} "
                    f"versions (--max-versions {self.max_versions}), each with open sessions")
            self._add(entry.path, version)

    def _add(self, path: Path, version: str) -> None:
        try:
            if self._open_policy is None:
                raise VidtError("this server was given no way to open model files")
            policy = self._open_policy(path)
            m = policy.metadata
            if m.model_version != version:
                raise VidtError(f"{path} holds model_version {m.model_version}, not {version}")
            why = compatible(self.first, m)
            if why:
                raise VidtError(f"{path} cannot serve beside the current version: {why}")
            # Warm-up: onnxruntime's first run allocates and optimises; no session should pay.
            policy.predict(m.new_window().observe(np.zeros(m.obs_dim, np.float32)))
        except Exception as e:  # noqa: BLE001  (any reason a file cannot serve: refuse it)
            self.metrics.model_events.labels("refused", version).inc()
            why = str(e) if isinstance(e, VidtError) else f"{type(e).__name__}: {e}"
            log.error("refused model_version %s: %s", version, why)
            raise FailedPrecondition(f"model_version {version!r} cannot be loaded: {why}") \
                from None
        self.store.add_model(self._model(policy))
        self.metrics.model_events.labels("loaded", version).inc()
        log.info("loaded model_version %s from %s", version, path)

    def unload(self, after_s: float | None = None) -> int:
        """Free the versions no session has used for `after_s` (default `unload_after_s`)
        that are neither current nor canary; returns how many."""
        gone = self.store.unload_idle(self.unload_after_s if after_s is None else after_s)
        for model in gone:
            _, batcher = self.policies.pop(model.version)
            batcher.close()
            self.metrics.model_events.labels("unloaded", model.version).inc()
            log.info("unloaded model_version %s (no session left on it)", model.version)
        return len(gone)

    # ---- following the repository's pointer -------------------------------------------------
    def follow(self) -> None:
        """Reread the pointer; load what it names and send new sessions there. A pointer or
        file that cannot serve changes nothing (one log line and one count per problem)."""
        if not self.follow_pointer:
            return
        p = None
        try:
            p = self.repo.read_pointer()
            if p == self._refused:
                return
            if p.current is None:
                raise VidtError(f"{self.repo.root}: the pointer names no current version "
                                "(vidt models promote DIR FILE)")
            for version in (p.current, p.canary):
                if version:
                    self.load(version)
        except (VidtError, FailedPrecondition, ResourceExhausted) as e:
            self._refused = p
            if str(e) != self._problem:
                self._problem = str(e)
                if not isinstance(e, (FailedPrecondition, ResourceExhausted)):
                    # (load() counted and logged its own refusals)
                    self.metrics.model_events.labels("refused", "").inc()
                    log.error("model repository: %s; still serving %s", e,
                              self.store.model_version)
            return
        self._problem = self._refused = None
        s = self.store
        canary = s.canary.version if s.canary else None
        fraction = p.canary_fraction if p.canary else 0.0
        if (p.current, p.canary, fraction) != (s.model_version, canary, s.canary_fraction):
            s.route(p.current, p.canary, fraction)
            log.info("new sessions now run model_version %s%s", p.current,
                     f" (canary {p.canary} for {fraction:g} of route keys)" if p.canary
                     else "")

    def close(self) -> None:
        for _, batcher in self.policies.values():
            batcher.close()

    # ---- what GetPolicyInfo says --------------------------------------------------------------
    def current_policy(self):
        return self.policies[self.store.model_version][0]
