"""The asyncio transport (`vidt serve --transport asyncio`): grpc.aio on one event loop.

The threads transport (server.py) holds a worker thread per call in progress; under many
concurrent sessions those threads hand the GIL to each other around every lock, wait and
onnxruntime call, and the server process, bound by its GIL, spends about twice the echo
server's CPU per step. Here every call is a coroutine on one loop; windows that arrive while
onnxruntime runs (in one worker thread, which releases the GIL) form the next batch, so a
waiting caller costs no thread switch. Measured on 16 cores with the load's clients on cores
of their own (benchmarks/RESULTS.md, "Serving throughput"), that gave 1.6-1.8x the steps per
second; a lone client paid 0.15-0.4 ms more per Act than on threads, which is why threads stay
the default.

The contract, the session rules (SessionStore), health, reflection, bearer tokens, TLS,
message limits, metrics and draining are the same as on threads: PolicyServer picks the
transport and keeps the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vidt.v1 import policy_pb2_grpc as pb_grpc
from vidt.window import WindowInputs

from .server import (
    AUTH_EXEMPT,
    DENIED,
    IDLE_STREAM,
    BearerAuth,
    PolicyServicer,
    _answer,
    _step,
    handler_like,
)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a dependency except on Windows): about 10% less server
    CPU per step under load than asyncio's own loop (benchmarks/RESULTS.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class AsyncBatcher:
    """`batcher(list_of_windows) -> Future of (n, A)`, on the running event loop; the windows
    queued while a batch runs (up to `max_batch` rows) go through the next `predict` call, in
    one worker thread. No batch window: a timed wait on an event loop lasts at least a
    millisecond, and the calls that arrive during inference already fill the next batch."""

    def __init__(self, predict: Callable[[WindowInputs], np.ndarray], max_batch: int = 64,
                 on_batch: Callable[[int], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.predict = predict
        self.max_batch = int(max_batch)
        self.on_batch = on_batch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vidt-onnxruntime")
        self._queue: deque[tuple[WindowInputs, int, asyncio.Future]] = deque()
        self._running = False
        self.batches = 0  # counters for tests and benchmarks
        self.rows = 0

    def __call__(self, windows: list[WindowInputs]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        inputs = windows[0] if len(windows) == 1 else WindowInputs.stack(list(windows))
        fut = loop.create_future()
        self._queue.append((inputs, int(inputs.observations.shape[0]), fut))
        if not self._running:
            self._running = True
            loop.create_task(self._run())
        return fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # the calls already received join the first batch
        try:
            while self._queue:
                batch, rows = [], 0
                while self._queue and (not batch or rows + self._queue[0][1] <= self.max_batch):
                    batch.append(self._queue.popleft())
                    rows += batch[-1][1]
                try:
                    inputs = batch[0][0] if len(batch) == 1 else WindowInputs.stack(
                        [b[0] for b in batch])
                    out = np.asarray(await loop.run_in_executor(self._pool, self.predict,
                                                                inputs))
                    if out.ndim != 2 or out.shape[0] != rows:
                        raise ValueError(f"predict returned shape {out.shape} for {rows} "
                                         "windows")
                    start = 0
                    for _, n, fut in batch:
                        if not fut.done():
                            fut.set_result(out[start:start + n])
                        start += n
                except Exception as e:  # every caller must hear, whatever happened
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                except BaseException:  # the loop is going away: the steps are undone
                    for _, _, fut in batch:
                        fut.cancel()
                    raise
                self.batches += 1
                self.rows += rows
                if self.on_batch is not None:
                    self.on_batch(rows)
        finally:
            self._running = False

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class AioPolicyServicer(PolicyServicer):
    """PolicyServicer's calls as coroutines; the shared parts live in PolicyServicer."""

    async def _afail(self, context, method: str, e: Exception):
        await context.abort(*self._status(method, e))

    async def GetPolicyInfo(self, request, context):
        self.metrics.record("GetPolicyInfo", "OK")
        return self.info

    async def CreateSession(self, request, context):
        try:
            return self._create(request)
        except Exception as e:
            await self._afail(context, "CreateSession", e)

    async def Act(self, request, context):
        t0 = time.perf_counter()
        try:
            answer = _answer(await self.store.act_async(_step(request)))
        except Exception as e:
            await self._afail(context, "Act", e)
        self._act_latency.observe(time.perf_counter() - t0)
        self._act_ok.inc()
        return answer

    async def ActBatch(self, request, context):
        t0 = time.perf_counter()
        try:
            steps = self._batch_steps(request)
            return self._batch_done(await self.store.act_batch_async(steps), t0)
        except Exception as e:
            await self._afail(context, "ActBatch", e)

    async def ActStream(self, request_iterator, context):
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        ended_idle = []

        def end_idle():  # from the sweeper's thread
            ended_idle.append(True)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

        entry = [end_idle, time.monotonic()]
        with self._streams_lock:
            self._streams[id(entry)] = entry
        try:
            async for request in request_iterator:
                entry[1] = math.inf
                t0 = time.perf_counter()
                try:
                    answer = _answer(await self.store.act_async(_step(request)))
                except Exception as e:
                    await self._afail(context, "ActStream", e)
                self._stream_latency.observe(time.perf_counter() - t0)
                self._stream_ok.inc()
                yield answer
                entry[1] = time.monotonic()
        except asyncio.CancelledError:
            if not ended_idle:
                raise
            # A cancelled handler alone leaves the call open on the wire: end it, as the
            # threads transport's context.cancel() does.
            await context.abort(grpc.StatusCode.CANCELLED, IDLE_STREAM)
        finally:
            with self._streams_lock:
                self._streams.pop(id(entry), None)

    async def CloseSession(self, request, context):
        try:
            return self._close(request)
        except Exception as e:
            await self._afail(context, "CloseSession", e)


class AioBearerAuth(BearerAuth, grpc.aio.ServerInterceptor):
    """BearerAuth's rule for grpc.aio: every call but health's carries the token."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(AUTH_EXEMPT) or self._ok(details):
            return handler
        method = details.method.rsplit("/", 1)[-1]

        async def deny(_request, context):
            if self._metrics is not None:
                self._metrics.record(method, "UNAUTHENTICATED")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

        return handler_like(handler, deny)


class AioTransport:
    """A grpc.aio server on an event loop in a thread of its own, driven from other threads
    with the same verbs as the threads transport (PolicyServer uses either)."""

    def __init__(self, servicer: AioPolicyServicer, options, auth_token: str | None, metrics,
                 health_names, reflected, max_batch: int, predict, on_batch):
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vidt-aio",
                                        daemon=True)
        self._thread.start()
        self._stopped = False
        self._lock = threading.RLock()  # call() against stop(): none may wait on a dead loop
        self.health_names = health_names
        self.batcher = AsyncBatcher(predict, max_batch, on_batch=on_batch)
        servicer.store.infer_async = self.batcher

        async def build():  # grpc.aio binds a server to the loop it is made on
            interceptors = [AioBearerAuth(auth_token, metrics)] if auth_token else []
            server = grpc.aio.server(interceptors=interceptors, options=options)
            pb_grpc.add_PolicyServiceServicer_to_server(servicer, server)
            self.health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection.enable_server_reflection(reflected, server)
            return server

        self.server = self.call(build())

    def call(self, coro, timeout: float | None = None):
        """Run `coro` on the loop; its result here (None once stopped: the loop is gone)."""
        with self._lock:
            if self._stopped:
                coro.close()
                return None
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def in_loop(self, fn, *args):
        async def run():
            return fn(*args)
        return self.call(run())

    def add_port(self, address: str, creds=None) -> int:
        if creds is None:
            return self.in_loop(self.server.add_insecure_port, address)
        return self.in_loop(self.server.add_secure_port, address, creds)

    def start(self) -> None:
        self.call(self.server.start())

    def set_health(self, status) -> None:
        async def set_all():
            for name in self.health_names:
                await self.health.set(name, status)
        self.call(set_all())

    def health_shutdown(self) -> None:
        self.call(self.health.enter_graceful_shutdown())

    def stop(self, grace: float | None) -> None:
        with self._lock:
            if self._stopped:
                return
            self.call(self.server.stop(grace))
            self._stopped = True
            self.batcher.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self.loop.close()

    def wait(self, timeout: float | None = None) -> bool:
        """grpc's wait_for_termination: True if `timeout` passed before the server stopped."""
        self._thread.join(timeout)
        return self._thread.is_alive()
