"""The serving core: each RPC of vidt.v1.PolicyService written once, over the SessionStore.

A transport (threads.py, aio.py) only moves bytes and threads or tasks; everything a call
means lives here or in the store: converting messages, the batch size limit, status codes
(`failed`), metrics (`succeeded`, `failed`), the streams an idle client holds open. The shape
is grpc's route_guide servicer, a thin layer over plain helpers, split so that neither
transport writes an RPC body.

Each RPC is a coroutine. On the asyncio transport it is awaited, and its steps go through the
store's `act_async` (inference in the batcher's worker thread). On the threads transport it is
run by `run_now` in the calling thread, without an event loop: there the store's steps are the
blocking `act`/`act_batch`, handed to the coroutine already done (`_Done`), so it never
suspends. One body, two ways of running it; a reader finds ActBatch's rules in `ActBatch`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from vidt.v1 import policy_pb2 as pb

from .client import ROUTE_KEY
from .metrics import Metrics
from .sessions import (
    InvalidArgument,
    ResumeState,
    ServingError,
    SessionStore,
    StepRecord,
    StepRequest,
    StepResult,
)

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name  # "vidt.v1.PolicyService"
HEALTH_NAMES = ("", SERVICE_NAME)
REFLECTED = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
UNARY_RPCS = ("GetPolicyInfo", "CreateSession", "Act", "ActBatch", "CloseSession")
STREAM_RPC = "ActStream"  # each message is one Act
TIMED_RPCS = ("Act", "ActBatch", "ActStream")  # vidt_act_latency_seconds{method}
IDLE_STREAM = "stream ended: idle for longer than the server's idle timeout"


class Transport(Protocol):
    """What PolicyServer asks of a transport: a gRPC server carrying `core`'s RPCs, health
    and reflection, with bearer-token auth when given a token. Nothing about what a call
    means: that is the core's."""

    asynchronous: bool  # whether the core's steps are awaited on an event loop

    def add_port(self, address: str, creds: grpc.ServerCredentials | None = None) -> int: ...
    def start(self) -> None: ...
    def set_health(self, status: int) -> None: ...
    def health_shutdown(self) -> None: ...
    def stop(self, grace: float | None) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


# ---- messages <-> the store's plain types ---------------------------------------------------

def _floats(values) -> np.ndarray:
    return np.fromiter(values, dtype=np.float32, count=len(values))


def _step(req: pb.ActRequest) -> StepRequest:
    return StepRequest(req.session_id, int(req.step), _floats(req.observation),
                       float(req.reward))


def _answer(r: StepResult) -> pb.ActResponse:
    return pb.ActResponse(session_id=r.session_id, step=r.step, action=r.action.tolist(),
                          return_to_go=r.return_to_go)


def _resume_state(r: pb.ResumeState) -> ResumeState:
    return ResumeState(r.model_version, int(r.next_step),
                       [StepRecord(_floats(h.observation), _floats(h.action), h.return_to_go)
                        for h in r.history], r.total_reward)


def route_key(context) -> str | None:
    """The call's `x-vidt-route` metadata (the client's key: a robot's id): a canary share
    sends each key to one side, always."""
    if context is None:
        return None
    for key, value in context.invocation_metadata() or ():
        if key == ROUTE_KEY:
            return value
    return None


def policy_info(policy) -> pb.PolicyInfo:
    m = policy.metadata
    return pb.PolicyInfo(
        model_name=m.model_name, model_version=m.model_version, env_id=m.env_id,
        observation_dim=m.obs_dim, action_dim=m.act_dim, action_low=list(m.action_low),
        action_high=list(m.action_high), context_length=m.context_len,
        max_episode_steps=m.max_episode_steps, default_target_return=m.default_target_return,
        execution_provider=policy.provider, loaded_versions=[m.model_version])


def message_limits(obs_dim: int, act_dim: int, max_batch_requests: int) -> tuple[int, int]:
    """(receive, send) byte limits: the largest valid ActBatch either way, with room for ids
    and framing (a packed float is 4 bytes; the rest of a request is under 96 bytes)."""
    recv = max_batch_requests * (96 + 4 * obs_dim) + 4096
    send = max_batch_requests * (96 + 4 * act_dim) + 4096 + 8 * act_dim  # + PolicyInfo bounds
    return recv, send


# ---- running a core coroutine without an event loop -----------------------------------------

class _Done:
    """An awaitable whose value is already there: awaiting it never suspends."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __await__(self):
        return self.value
        yield  # unreachable: makes __await__ a generator  # noqa: B901


def run_now(coro: Coroutine[Any, Any, Any]):
    """The result of a core coroutine run in this thread, for the threads transport. Its
    awaits are `_Done`, so it completes at the first send."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise RuntimeError("a core call suspended outside an event loop")


# ---- the RPCs ----------------------------------------------------------------------------------

class PolicyCore:
    """vidt.v1.PolicyService's RPCs over one SessionStore, for either transport.

    describe(): GetPolicyInfo's answer. asynchronous: steps are awaited on an event loop (the
    store's `act_async`, inference through its `infer_async`), else they block the calling
    thread (`act`, `infer`). load(version): makes the store hold a version a resume or a
    pinned CreateSession asks for, if it can (versions.py); blocking, so on an event loop it
    runs in a worker thread."""

    def __init__(self, store: SessionStore, describe: Callable[[], pb.PolicyInfo],
                 metrics: Metrics, max_batch_requests: int = 1024, *,
                 asynchronous: bool = False, load: Callable[[str], None] | None = None):
        self.store, self.describe, self.metrics = store, describe, metrics
        self.max_batch_requests = int(max_batch_requests)
        self.asynchronous = asynchronous
        if asynchronous:
            self._act, self._act_batch = store.act_async, store.act_batch_async
            self._load = load and (lambda v: asyncio.get_running_loop().run_in_executor(
                None, load, v))
        else:
            self._act = lambda request: _Done(store.act(request))
            self._act_batch = lambda requests: _Done(store.act_batch(requests))
            self._load = load and (lambda v: _Done(load(v)))
        # Labelled children bound once: a labels() lookup per call costs ~8 us.
        self._ok = {m: metrics.requests.labels(m, "OK") for m in (*UNARY_RPCS, STREAM_RPC)}
        self._latency = {m: metrics.act_latency.labels(m) for m in TIMED_RPCS}
        self.streams = Streams()

    # Every RPC: the request message (and the call's context, for its metadata) in, the
    # response message out, ServingError for a request the contract refuses.
    async def GetPolicyInfo(self, request: pb.GetPolicyInfoRequest, context=None) -> pb.PolicyInfo:
        return self.describe()

    async def CreateSession(self, request: pb.CreateSessionRequest,
                            context=None) -> pb.CreateSessionResponse:
        resume = request.HasField("resume")
        version = request.resume.model_version if resume else request.model_version
        if version and self._load is not None and not self.store.holds(version):
            await self._load(version)
        if resume:
            c = self.store.resume(_resume_state(request.resume))
        else:
            target = request.target_return if request.HasField("target_return") else None
            c = self.store.create(target, request.model_version, route_key(context))
        return pb.CreateSessionResponse(session_id=c.session_id, target_return=c.target_return,
                                        context_length=c.context_length,
                                        idle_timeout_s=c.idle_timeout_s,
                                        model_version=c.model_version)

    async def Act(self, request: pb.ActRequest, context=None) -> pb.ActResponse:
        """One step; also each message of an ActStream."""
        return _answer(await self._act(_step(request)))

    async def ActBatch(self, request: pb.ActBatchRequest, context=None) -> pb.ActBatchResponse:
        n = len(request.requests)
        if n > self.max_batch_requests:
            raise InvalidArgument(f"{n} requests in one ActBatch; this server takes at most "
                                  f"{self.max_batch_requests}")
        results = await self._act_batch([_step(r) for r in request.requests])
        return pb.ActBatchResponse(responses=[_answer(r) for r in results])

    async def CloseSession(self, request: pb.CloseSessionRequest,
                           context=None) -> pb.CloseSessionResponse:
        s = self.store.close(request.session_id)
        self.metrics.episode_return.labels(s.model_version).observe(s.total_reward)
        return pb.CloseSessionResponse(steps=s.steps, total_reward=s.total_reward)

    # What became of a call, for the metrics and the status it ends with.
    def succeeded(self, method: str, t0: float) -> None:
        self._ok[method].inc()
        timer = self._latency.get(method)
        if timer is not None:
            timer.observe(time.perf_counter() - t0)

    def failed(self, method: str, e: Exception) -> tuple[grpc.StatusCode, str]:
        """The status a failed call ends with (counted in the metrics)."""
        if isinstance(e, ServingError):
            code, msg = e.code, str(e)
        else:  # a bug: log it here, and tell the client no more than that
            log.exception("%s failed", method)
            code, msg = "INTERNAL", f"internal error ({type(e).__name__}); see the server log"
        self.metrics.record(method, code)
        return grpc.StatusCode[code], msg


def handlers(core: PolicyCore, unary: Callable[[str, Callable], Callable],
             stream: Callable) -> SimpleNamespace:
    """One handler per RPC, for the generated `add_PolicyServiceServicer_to_server`: each
    unary RPC of `core` wrapped by the transport's `unary(name, rpc)`, and its `stream` for
    ActStream."""
    return SimpleNamespace(**{name: unary(name, getattr(core, name)) for name in UNARY_RPCS},
                           ActStream=stream)


class Streams:
    """The open ActStreams, so that those idle for too long can be ended: each holds a worker
    thread (threads) or a task (asyncio), and a client gone silent without closing its
    connection (a dead link, no FIN) would otherwise hold it until TCP keepalive notices,
    hours later."""

    def __init__(self):
        self._open: dict[int, list] = {}  # id -> [end it, when it last went idle (inf: busy)]
        self._lock = threading.Lock()

    def open(self, end: Callable[[], None]) -> list:
        entry = [end, time.monotonic()]
        with self._lock:
            self._open[id(entry)] = entry
        return entry

    @staticmethod
    def busy(entry: list) -> None:
        entry[1] = float("inf")

    @staticmethod
    def idle(entry: list) -> None:
        entry[1] = time.monotonic()

    def close(self, entry: list) -> None:
        with self._lock:
            self._open.pop(id(entry), None)

    def end_idle(self, idle_s: float) -> int:
        """End the streams that sent nothing for `idle_s`; returns how many."""
        now = time.monotonic()
        with self._lock:
            idle = [e for e in self._open.values() if now - e[1] > idle_s]
        for end, _ in idle:
            end()
        return len(idle)
