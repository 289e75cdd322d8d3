"""The server's core, in plain Python: one ContextWindow per session, step bookkeeping, expiry.

No gRPC here: `vidt.serving.server` is a thin layer that turns `ServingError.code` into a gRPC
status. The rules it implements (proto/vidt/v1/policy.proto):

- A session is one episode. Its steps are numbered from 0; a request for the step already
  answered gets the stored answer and appends nothing (a client may retry blindly), a request
  for the step being computed waits for that computation, and any other index is refused
  with FAILED_PRECONDITION naming the step expected.
- A batch of steps (ActBatch) is all-or-nothing: every request is checked before any window
  changes, and a failed inference changes none.
- Sessions idle for `idle_timeout_s` are freed; NOT_FOUND says whether an id is unknown,
  closed or expired, for the last `ended_memory` ids that ended.
- Values must be finite as the float32 the actor sees: observations, rewards (and the
  return-to-go they leave), target returns. An action that comes out non-finite anyway
  (extreme inputs overflow inside a transformer) is refused as INVALID_ARGUMENT, never sent,
  and the window stays as it was.
- Draining (shutdown) refuses new sessions with UNAVAILABLE; open episodes may still step,
  so that a client can finish its episode within the server's grace period.

Inference is given to the store when it is made: `infer(list[WindowInputs]) -> (n, A)` (a
`Batcher` in the server, `policy.act_batch` or any function in tests and embeddings) for
`act`/`act_batch`, and `infer_async(list[WindowInputs]) -> Future of (n, A)` (the same
Batcher's `submit`) for `act_async`/`act_batch_async`, which callers on an event loop use.
Both paths share every rule above: `_begin` decides and `_settle` keeps or undoes.

Model versions. A store may hold several versions of one policy (a `Model` each: its metadata
and its inference), all with the same observation and action sizes and bounds. A session runs
its whole episode on the version it was created on: new sessions get the current version, or
the canary for a share of route keys (the same key always gets the same side), or the
version they pin; a resume goes on with its own version or is refused. An ActBatch that spans
versions runs one inference per version and is still all-or-nothing. A version that is neither
current nor canary leaves (`unload_idle`) once its last session has ended.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from vidt.window import ContextWindow, WindowInputs

log = logging.getLogger(__name__)

Infer = Callable[[list[WindowInputs]], np.ndarray]
InferAsync = Callable[[list[WindowInputs]], "asyncio.Future[np.ndarray]"]

# What CreateSession answers (UNAVAILABLE) while the server drains: a vidt client then moves
# its route key, so a sticky key does not bring its next episode back here (client.py).
DRAINING = "server is draining: no new sessions here"

# The actor sees float32: a target return or return-to-go beyond this is infinite to it.
F32_MAX = float(np.finfo(np.float32).max)


def _nonempty(requests: Sequence[StepRequest]) -> list[StepRequest]:
    if not requests:
        raise InvalidArgument("empty batch: ActBatch needs at least one request")
    return list(requests)


def _by_model(new) -> list[tuple[Model, list[int], list[WindowInputs]]]:
    """The new steps of one call split by version: (model, their places in `new`, inputs)."""
    groups: dict[str, tuple[Model, list[int], list[WindowInputs]]] = {}
    for j, (_, s, _, _, inputs) in enumerate(new):
        g = groups.setdefault(s.model.version, (s.model, [], []))
        g[1].append(j)
        g[2].append(inputs)
    return list(groups.values())


def _join(n: int, parts: list[tuple[list[int], np.ndarray]]) -> np.ndarray:
    """The actions of `n` new steps put together from each version's batch."""
    if len(parts) == 1:
        return parts[0][1]
    out = None
    for idx, actions in parts:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[0] != len(idx):
            raise ValueError(f"inference returned shape {actions.shape} for {len(idx)} windows")
        if out is None:
            out = np.empty((n, actions.shape[1]), np.float32)
        out[idx] = actions
    return out


def _resolve(f: asyncio.Future) -> None:
    if not f.done():  # a waiter cancelled meanwhile
        f.set_result(None)


def _quote(sid: str, limit: int = 64) -> str:
    """A session id for an error message, shortened: the message travels back in a gRPC
    trailer, and echoing a 20 KB id whole would exceed the client's 8 KB metadata limit (the
    client would see RESOURCE_EXHAUSTED instead of the status the contract names)."""
    return repr(sid) if len(sid) <= limit else f"{sid[:limit]!r}... ({len(sid)} characters)"


class ServingError(Exception):
    """A request the contract refuses. `code` is the gRPC status code's name."""

    code = "INTERNAL"


class InvalidArgument(ServingError):
    code = "INVALID_ARGUMENT"


class NotFound(ServingError):
    code = "NOT_FOUND"


class FailedPrecondition(ServingError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServingError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServingError):
    code = "UNAVAILABLE"


@dataclass(frozen=True)
class StepRequest:
    session_id: str
    step: int
    observation: np.ndarray | Sequence[float]  # obs_dim values
    reward: float = 0.0  # for the action of step - 1; ignored at step 0


@dataclass(frozen=True)
class StepResult:
    session_id: str
    step: int
    action: np.ndarray  # (A,) float32, within the action bounds
    return_to_go: float  # target return minus the rewards reported so far


@dataclass(frozen=True)
class StepRecord:
    """One answered step as its client saw it (for a resume)."""

    observation: np.ndarray | Sequence[float]  # as sent
    action: np.ndarray | Sequence[float]  # as answered
    return_to_go: float  # as answered


@dataclass(frozen=True)
class ResumeState:
    """An episode begun elsewhere, once step next_step - 1 was answered: the last
    min(next_step, context_len) records, oldest first, and the rewards reported so far."""

    model_version: str
    next_step: int
    history: Sequence[StepRecord]
    total_reward: float


@dataclass(frozen=True)
class SessionCreated:
    session_id: str
    target_return: float
    context_length: int
    idle_timeout_s: int
    model_version: str  # the model this session runs on, for its whole life


@dataclass(frozen=True)
class SessionSummary:
    steps: int
    total_reward: float
    model_version: str


class _Pending:
    """A step being computed: a retry of the same step waits for it instead of recomputing."""

    __slots__ = ("step", "waiters", "result", "error")

    def __init__(self, step: int):
        self.step = step
        self.waiters: list[Callable[[], None]] = []  # wake-ups of the retries that wait
        self.result: StepResult | None = None
        self.error: ServingError | None = None

    def finish(self) -> None:  # with the store's lock held
        for wake in self.waiters:
            wake()

    def outcome(self) -> StepResult:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class Model:
    """One version a store serves: the metadata its windows are built from, and its
    inference. The counters are the store's (changed under its lock)."""

    def __init__(self, metadata, infer: Infer | None, infer_async: InferAsync | None = None):
        self.meta = metadata
        self.version = str(getattr(metadata, "model_version", ""))
        self.infer = infer
        self.infer_async = infer_async
        self.sessions = 0  # open now
        self.created = 0
        self.steps = 0
        self.idle_since = time.monotonic()  # since when it has had no session

    def __repr__(self) -> str:
        return f"Model({self.version!r}, sessions={self.sessions})"


def route_fraction(key: str) -> float:
    """A route key's place in [0, 1): the same on every replica and in every run, so that a
    canary share sends each key (a robot) to one side, always."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


class _Session:
    __slots__ = ("id", "window", "last_used", "last", "pending", "model")

    def __init__(self, sid: str, window: ContextWindow, now: float, model: Model):
        self.id, self.window, self.last_used, self.model = sid, window, now, model
        self.last: StepResult | None = None  # the answer to the last step (for retries)
        self.pending: _Pending | None = None


class SessionStore:
    """Thread-safe sessions over one policy (and later versions of it, `add_model`).
    `metadata` needs obs_dim, act_dim, context_len, eval_context_len, default_target_return,
    action_low and action_high (a PolicyMetadata)."""

    def __init__(self, metadata, infer: Infer, *, max_sessions: int = 1024,
                 idle_timeout_s: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 ended_memory: int = 65536, infer_async: InferAsync | None = None):
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        self.meta = metadata  # its sizes and bounds are every version's
        first = Model(metadata, infer, infer_async)
        self._models: dict[str, Model] = {first.version: first}
        self._current = first  # what new sessions get
        self._canary: Model | None = None  # what new sessions of a `canary_fraction` share get
        self.canary_fraction = 0.0
        self.max_sessions = int(max_sessions)
        self.idle_timeout_s = float(idle_timeout_s)
        self.clock = clock
        self._low = np.asarray(metadata.action_low, dtype=np.float32)
        self._high = np.asarray(metadata.action_high, dtype=np.float32)
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        # id -> "closed" | "expired", bounded: NOT_FOUND can say why for recent ids.
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._ended_memory = int(ended_memory)
        self._draining = False
        self.created_total = 0  # resumed sessions included
        self.resumed_total = 0
        self.closed_total = 0
        self.expired_total = 0
        self.steps_total = 0

    # ---- versions ---------------------------------------------------------------------
    @property
    def current(self) -> Model:
        return self._current

    @property
    def canary(self) -> Model | None:
        return self._canary

    @property
    def model_version(self) -> str:
        """The current version: what a new session gets unless it pins one (or is canary)."""
        return self._current.version

    def models(self) -> list[Model]:
        """The versions held, the current one first."""
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m is not self._current)

    def holds(self, version: str) -> bool:
        return version in self._models

    def add_model(self, model: Model) -> None:
        """Hold another version (its sessions come by `route`, a pin or a resume)."""
        m, n = self.meta, model.meta
        if (n.obs_dim, n.act_dim) != (m.obs_dim, m.act_dim) or not (
                np.array_equal(np.asarray(n.action_low, np.float32), self._low)
                and np.array_equal(np.asarray(n.action_high, np.float32), self._high)):
            raise ValueError(f"model {model.version} has other sizes or action bounds than "
                             f"this store's ({m.obs_dim} -> {m.act_dim})")
        with self._lock:
            self._models.setdefault(model.version, model)

    def route(self, current: str, canary: str | None = None, fraction: float = 0.0) -> None:
        """New sessions from now on: `current`'s, or `canary`'s for a `fraction` of route keys.
        Both must be held. Open sessions keep their version."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"canary fraction must be in [0, 1], got {fraction}")
        with self._lock:
            cur = self._models[current]
            can = self._models[canary] if canary and fraction > 0 else None
            self._current, self._canary = cur, can
            self.canary_fraction = fraction if can is not None else 0.0

    def unload_idle(self, idle_s: float = 0.0) -> list[Model]:
        """Drop the versions that are neither current nor canary and have had no session
        for `idle_s`; returns them (their inference is the caller's to free)."""
        now = time.monotonic()
        with self._lock:
            gone = [m for m in self._models.values()
                    if m is not self._current and m is not self._canary and m.sessions == 0
                    and now - m.idle_since >= idle_s]
            for m in gone:
                del self._models[m.version]
        return gone

    def _held(self) -> str:
        return ", ".join(_quote(v) for v in self._models)

    def _pick(self, model_version: str, route: str | None) -> Model:
        """The version a new session runs on."""
        if model_version:
            model = self._models.get(model_version)
            if model is None:
                raise FailedPrecondition(
                    f"model_version {_quote(model_version)} is not held by this server (it "
                    f"holds {self._held()}): no session created")
            return model
        canary, fraction = self._canary, self.canary_fraction
        if canary is not None:
            place = route_fraction(route) if route else secrets.randbelow(2**53) / 2.0**53
            if place < fraction:
                return canary
        return self._current

    # ---- sessions ---------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._sessions)

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Refuse new sessions from now on (shutdown); open sessions may still step."""
        self._draining = True

    def create(self, target_return: float | None = None, model_version: str = "",
               route: str | None = None) -> SessionCreated:
        """A new episode, conditioned on `target_return` (default: the model's), on
        `model_version` if given (FAILED_PRECONDITION, nothing created, for a version this
        store does not hold), else on the version `route` (a route key) is sent to."""
        if target_return is not None and not (math.isfinite(target_return)
                                              and abs(target_return) <= F32_MAX):
            raise InvalidArgument(f"target_return must be finite (as a float32), got "
                                  f"{target_return}")
        model = self._pick(model_version, route)
        if target_return is None:
            target_return = float(model.meta.default_target_return)
        window = model.meta.new_window(float(target_return))
        sid, n_open = self._admit(model, window, None)
        log.info("session %s opened on %s (target return %g; %d open)", sid, model.version,
                 target_return, n_open)
        return self._created(sid, window, model)

    def resume(self, state: ResumeState) -> SessionCreated:
        """A new session that goes on with an episode begun on another server (or before a
        restart): its answer to step `state.next_step` is the one the old session would have
        given, and a repeat of step next_step - 1 gets the last record's answer. Refused with
        nothing created: INVALID_ARGUMENT naming the field, FAILED_PRECONDITION for another
        model."""
        model = self._models.get(state.model_version)
        if model is None:
            raise FailedPrecondition(
                f"resume.model_version {_quote(state.model_version)} is not held by this "
                f"server (it holds {self._held()}): an episode can only go on with the same "
                "model")
        window, last = self._restored_window(state, model.meta)
        sid, n_open = self._admit(model, window, last)
        log.info("session %s resumed at step %d on %s (%d open)", sid, window.step,
                 model.version, n_open)
        return self._created(sid, window, model)

    def _restored_window(self, state: ResumeState, m) -> tuple[ContextWindow, StepResult]:
        step = state.next_step
        if not 1 <= step < 2**62:
            raise InvalidArgument(f"resume.next_step must be >= 1 (the step the next Act "
                                  f"carries), got {step}")
        n, want = len(state.history), min(step, m.context_len)
        if n != want:
            why = (f"more than the context length {m.context_len}" if n > m.context_len else
                   f"more than the {step} steps before resume.next_step" if n > step else
                   f"expected the last {want} (min(next_step, context_length))")
            raise InvalidArgument(f"resume.history has {n} records, {why}")
        if not math.isfinite(state.total_reward):
            raise InvalidArgument(f"resume.total_reward must be finite, got "
                                  f"{state.total_reward}")
        S, A = m.obs_dim, m.act_dim
        obs = np.empty((n, S), np.float32)
        act = np.empty((n, A), np.float32)
        rtg = np.empty(n, np.float64)
        for i, rec in enumerate(state.history):
            at = f"resume.history[{i}]"
            with np.errstate(over="ignore"):
                o = np.asarray(rec.observation, dtype=np.float32).reshape(-1)
                a = np.asarray(rec.action, dtype=np.float32).reshape(-1)
            if o.shape[0] != S:
                raise InvalidArgument(f"{at}.observation has {o.shape[0]} values, expected {S}")
            if a.shape[0] != A:
                raise InvalidArgument(f"{at}.action has {a.shape[0]} values, expected {A}")
            if not (np.isfinite(o).all() and np.isfinite(a).all()):
                raise InvalidArgument(f"{at}: observation or action has NaN or infinite values")
            if (a < self._low).any() or (a > self._high).any():
                raise InvalidArgument(f"{at}.action is outside the action bounds: no server of "
                                      "this model answered it")
            if not abs(rec.return_to_go) <= F32_MAX:
                raise InvalidArgument(f"{at}.return_to_go must be finite (as a float32), got "
                                      f"{rec.return_to_go}")
            obs[i], act[i], rtg[i] = o, a, rec.return_to_go
        window = m.new_window()
        window.restore(step, obs, act, rtg, state.total_reward)
        return window, StepResult("", step - 1, act[-1].copy(), float(rtg[-1]))

    def _admit(self, model: Model, window: ContextWindow,
               last: StepResult | None) -> tuple[str, int]:
        """Register a new session on `model` holding `window` (and the answer to its last
        step); returns its id and the number open."""
        with self._lock:
            if self._models.get(model.version) is not model:  # unloaded since it was picked
                raise Unavailable(f"model_version {_quote(model.version)} was unloaded "
                                  "meanwhile: try again")
            if self._draining:
                raise Unavailable(DRAINING)
            if len(self._sessions) >= self.max_sessions:
                self._expire_locked(self.clock())
            if len(self._sessions) >= self.max_sessions:
                raise ResourceExhausted(
                    f"session limit reached ({self.max_sessions} open): close finished "
                    f"sessions, or wait for idle ones to expire after {self.idle_timeout_s:g} s")
            sid = secrets.token_urlsafe(12)
            s = _Session(sid, window, self.clock(), model)
            if last is not None:
                s.last = replace(last, session_id=sid)
                self.resumed_total += 1
            self._sessions[sid] = s
            self.created_total += 1
            model.sessions += 1
            model.created += 1
            return sid, len(self._sessions)

    def _created(self, sid: str, window: ContextWindow, model: Model) -> SessionCreated:
        return SessionCreated(sid, window.target_return, int(model.meta.context_len),
                              int(math.ceil(self.idle_timeout_s)), model.version)

    def close(self, session_id: str) -> SessionSummary:
        with self._lock:
            s = self._get_locked(session_id, self.clock())
            self._drop_locked(s)
            self._remember_locked(session_id, "closed")
            self.closed_total += 1
        log.info("session %s closed after %d steps (return %g)", session_id, s.window.step,
                 s.window.total_reward)
        return SessionSummary(s.window.step, s.window.total_reward, s.model.version)

    def expire_idle(self) -> int:
        """Free the sessions idle longer than the timeout; returns how many."""
        with self._lock:
            return self._expire_locked(self.clock())

    # ---- steps ------------------------------------------------------------------------
    def act(self, request: StepRequest) -> StepResult:
        return self._act([request], batch=False)[0]

    def act_batch(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        """One step each for distinct sessions, all-or-nothing; errors name the bad index."""
        return self._act(_nonempty(requests), batch=True)

    async def act_async(self, request: StepRequest) -> StepResult:
        """`act` for callers on an event loop (inference through `infer_async`)."""
        return (await self._act_async([request], batch=False))[0]

    async def act_batch_async(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        return await self._act_async(_nonempty(requests), batch=True)

    def _act(self, requests: list[StepRequest], batch: bool) -> list[StepResult]:
        results, waits, new = self._begin(requests, batch)
        if new:
            groups = _by_model(new)
            try:
                out = _join(len(new), [(idx, model.infer(inputs))
                                       for model, idx, inputs in groups])
            except Exception as e:
                out = e
            self._settle(new, results, batch, out)
        for i, p in waits:
            done = threading.Event()
            if self._wait_for(p, done.set):
                done.wait()
            results[i] = p.outcome()
        return results  # type: ignore[return-value]

    async def _act_async(self, requests: list[StepRequest], batch: bool) -> list[StepResult]:
        results, waits, new = self._begin(requests, batch)
        loop = asyncio.get_running_loop()
        if new:
            # Settled (kept, or undone on failure) in the inference's callback, not in this
            # coroutine: a caller cancelled while the batch runs (its deadline passed) must not
            # leave its session pending forever. Its retry then gets the stored answer.
            done = loop.create_future()

            def settle(inference: asyncio.Future) -> None:
                try:
                    out = (Unavailable("the server stopped during inference")
                           if inference.cancelled() else inference.exception())
                    if out is None:
                        out = inference.result()
                        if len(groups) > 1:
                            out = _join(len(new), [(idx, o) for (_, idx, _), o
                                                   in zip(groups, out)])
                    self._settle(new, results, batch, out)
                except BaseException as e:  # noqa: BLE001  (handed to the caller)
                    if not done.done():
                        done.set_exception(e)
                else:
                    if not done.done():
                        done.set_result(None)

            groups = _by_model(new)
            try:
                if len(groups) == 1:
                    inference = groups[0][0].infer_async(groups[0][2])
                else:  # one batch per version, joined in `settle` (`_join` below)
                    inference = asyncio.gather(*(m.infer_async(inputs)
                                                 for m, _, inputs in groups))
            except Exception as e:  # failed before it began: undo now, as the sync path does
                self._settle(new, results, batch, e)
            inference.add_done_callback(settle)
            await done
        for i, p in waits:
            done = loop.create_future()
            if self._wait_for(p, lambda f=done: loop.call_soon_threadsafe(_resolve, f)):
                await done
            results[i] = p.outcome()
        return results  # type: ignore[return-value]

    def _wait_for(self, p: _Pending, wake: Callable[[], None]) -> bool:
        """Whether the step `p` is still being computed; if so, `wake` is called once it is
        settled (from the thread or task that settles it)."""
        with self._lock:
            if p.result is None and p.error is None:
                p.waiters.append(wake)
                return True
        return False

    def _begin(self, requests: list[StepRequest], batch: bool):
        """Check every request and decide what each is (stored answer, in flight, new),
        before any window changes. Returns (results, waits, new); `new` steps are pending
        until `_settle`."""
        S = self.meta.obs_dim
        where = (lambda i: f"requests[{i}]: ") if batch else (lambda i: "")
        # Check everything that does not need the lock first.
        observations = []
        for i, r in enumerate(requests):
            obs = r.observation
            if type(obs) is not np.ndarray or obs.dtype != np.float32:  # (the server's are)
                with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
                    obs = np.asarray(obs, dtype=np.float32)
            obs = obs.reshape(-1)
            if obs.shape[0] != S:
                raise InvalidArgument(f"{where(i)}observation has {obs.shape[0]} values, "
                                      f"expected {S}")
            # A finite sum means finite values; the exact check runs only when it is not.
            if not math.isfinite(obs.sum()) and not np.isfinite(obs).all():
                raise InvalidArgument(f"{where(i)}observation has NaN or infinite values")
            if not math.isfinite(r.reward):
                raise InvalidArgument(f"{where(i)}reward must be finite, got {r.reward}")
            observations.append(obs)
        if batch:
            seen: dict[str, int] = {}
            for i, r in enumerate(requests):
                if r.session_id in seen:
                    raise InvalidArgument(f"requests[{i}]: session {_quote(r.session_id)} "
                                          f"repeats requests[{seen[r.session_id]}]; a batch "
                                          "steps distinct sessions")
                seen[r.session_id] = i

        # Decide what each request is (stored answer, in flight, new) before changing anything.
        results: list[StepResult | None] = [None] * len(requests)
        waits: list[tuple[int, _Pending]] = []
        new: list[tuple[int, _Session, _Pending, ContextWindow, WindowInputs]] = []
        with self._lock:
            now = self.clock()
            plan = []
            for i, r in enumerate(requests):
                try:
                    s = self._get_locked(r.session_id, now)
                except NotFound as e:
                    raise NotFound(f"{where(i)}{e}") from None
                if s.pending is not None and r.step == s.pending.step:
                    plan.append(("wait", s))
                elif s.pending is None and s.last is not None and r.step == s.last.step:
                    plan.append(("stored", s))
                elif s.pending is None and r.step == s.window.step:
                    if r.step > 0 and not abs(s.window.return_to_go - r.reward) <= F32_MAX:
                        raise InvalidArgument(
                            f"{where(i)}reward {r.reward:g} would take the return-to-go "
                            f"beyond the float32 range the actor sees")
                    plan.append(("new", s))
                else:
                    expected = s.pending.step + 1 if s.pending else s.window.step
                    answered = f"; step {s.last.step} was the last answered" if s.last else ""
                    raise FailedPrecondition(
                        f"{where(i)}session {_quote(r.session_id)}: step {r.step} is out of "
                        f"order, expected step {expected}{answered}")
            for i, ((kind, s), r) in enumerate(zip(plan, requests)):
                s.last_used = now
                if kind == "stored":
                    results[i] = s.last
                elif kind == "wait":
                    waits.append((i, s.pending))
                else:
                    w = s.window.copy()  # stepped on; kept only if inference succeeds
                    inputs = w.observe(observations[i], r.reward)
                    s.pending = _Pending(r.step)
                    new.append((i, s, s.pending, w, inputs))

        return results, waits, new

    def _settle(self, new, results, batch: bool, out) -> None:
        """Keep the `new` steps' answers, given inference's output `out` (or the exception it
        raised), or undo them all and raise."""
        try:
            if isinstance(out, BaseException):
                raise out
            actions = np.asarray(out, dtype=np.float32)
            if actions.shape != (len(new), self.meta.act_dim):
                raise ValueError(f"inference returned shape {actions.shape}, expected "
                                 f"{(len(new), self.meta.act_dim)}")
            # A finite sum means finite values (~1 us; the exact check alone costs ~4 us).
            if not math.isfinite(actions.sum()) and not np.isfinite(actions).all():
                bad = np.flatnonzero(~np.isfinite(actions).all(axis=1))
                # Finite but extreme inputs (e.g. 3e38) overflow inside a transformer; a NaN
                # must never reach a robot, and np.minimum/maximum would let it through.
                at = f"requests[{new[bad[0]][0]}]: " if batch else ""
                raise InvalidArgument(f"{at}the policy's action is not finite for this "
                                      "observation (values beyond the range the model handles)")
        except Exception as e:
            err = e if isinstance(e, InvalidArgument) else ServingError(
                f"inference failed: {type(e).__name__}: {e}")
            with self._lock:
                for _, s, p, _, _ in new:
                    s.pending = None  # the window is untouched: the client may retry
                    p.error = err
                    p.finish()
            raise err from (None if err is e else e)
        # np.clip costs ~15 us on tiny arrays; two ufuncs cost ~2 us.
        actions = np.minimum(np.maximum(actions, self._low), self._high)
        with self._lock:
            now = self.clock()
            for j, (i, s, p, w, _) in enumerate(new):
                w.record_action(actions[j])
                res = StepResult(s.id, p.step, actions[j].copy(), float(w.return_to_go))
                s.window, s.last, s.pending, s.last_used = w, res, None, now
                s.model.steps += 1
                p.result = res
                p.finish()
                results[i] = res
            self.steps_total += len(new)

    # ---- internals (hold self._lock) -----------------------------------------------------
    def _get_locked(self, sid: str, now: float) -> _Session:
        s = self._sessions.get(sid)
        if s is not None and s.pending is None and now - s.last_used > self.idle_timeout_s:
            self._expire_one_locked(s)
            s = None
        if s is None:
            why = self._ended.get(sid)
            if why == "closed":
                raise NotFound(f"session {_quote(sid)} was closed")
            if why == "expired":
                raise NotFound(f"session {_quote(sid)} expired (idle for more than "
                               f"{self.idle_timeout_s:g} s)")
            raise NotFound(f"unknown session {_quote(sid)}")
        return s

    def _expire_locked(self, now: float) -> int:
        idle = [s for s in self._sessions.values()
                if s.pending is None and now - s.last_used > self.idle_timeout_s]
        for s in idle:
            self._expire_one_locked(s)
        return len(idle)

    def _drop_locked(self, s: _Session) -> None:
        del self._sessions[s.id]
        s.model.sessions -= 1
        if s.model.sessions == 0:
            s.model.idle_since = time.monotonic()

    def _expire_one_locked(self, s: _Session) -> None:
        self._drop_locked(s)
        self._remember_locked(s.id, "expired")
        self.expired_total += 1
        log.info("session %s expired after %g s idle (%d steps)", s.id, self.idle_timeout_s,
                 s.window.step)

    def _remember_locked(self, sid: str, why: str) -> None:
        self._ended[sid] = why
        while len(self._ended) > self._ended_memory:
            self._ended.popitem(last=False)
