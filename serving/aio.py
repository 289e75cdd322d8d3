"""The asyncio transport (`vidt serve --transport asyncio`): grpc.aio on one event loop.

The threads transport holds a worker thread per call in progress; under many concurrent
sessions those threads hand the GIL to each other around every lock, wait and onnxruntime
call. Here every call is a coroutine on one loop, awaiting the core's RPC; windows that
arrive while onnxruntime runs (the batcher's worker thread, which releases the GIL) form the
next batch, so a waiting caller costs no thread switch. benchmarks/RESULTS.md ("Serving
latency and throughput") measures both transports side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vidt.v1 import policy_pb2_grpc as pb_grpc

from .auth import AioBearerAuth
from .core import HEALTH_NAMES, IDLE_STREAM, REFLECTED, STREAM_RPC, PolicyCore, handlers


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a dependency except on Windows): about 10% less server
    CPU per step under load than asyncio's own loop (benchmarks/RESULTS.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class AioTransport:
    """A grpc.aio server on an event loop in a thread of its own, driven from other threads
    with the same verbs as the threads transport."""

    asynchronous = True

    def __init__(self, core: PolicyCore, options, auth_token: str | None, threads: int = 0):
        self.core = core
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vidt-aio",
                                        daemon=True)
        self._thread.start()
        self._stopped = False
        self._lock = threading.RLock()  # call() against stop(): none may wait on a dead loop

        async def build():  # grpc.aio binds a server to the loop it is made on
            interceptors = [AioBearerAuth(auth_token, core.metrics)] if auth_token else []
            server = grpc.aio.server(interceptors=interceptors, options=options)
            pb_grpc.add_PolicyServiceServicer_to_server(
                handlers(core, self._unary, self._stream), server)
            self.health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection.enable_server_reflection(REFLECTED, server)
            return server

        self.server = self.call(build())

    async def _call(self, method: str, rpc, request, context):
        t0 = time.perf_counter()
        try:
            answer = await rpc(request, context)
        except Exception as e:
            await context.abort(*self.core.failed(method, e))
        self.core.succeeded(method, t0)
        return answer

    def _unary(self, method: str, rpc):
        async def unary(request, context):
            return await self._call(method, rpc, request, context)
        return unary

    async def _stream(self, request_iterator, context):
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        ended_idle = []

        def end_idle():  # from the sweeper's thread
            ended_idle.append(True)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

        streams = self.core.streams
        entry = streams.open(end_idle)
        try:
            async for request in request_iterator:
                streams.busy(entry)
                yield await self._call(STREAM_RPC, self.core.Act, request, context)
                streams.idle(entry)
        except asyncio.CancelledError:
            if not ended_idle:
                raise
            # A cancelled handler alone leaves the call open on the wire: end it, as the
            # threads transport's context.cancel() does.
            await context.abort(grpc.StatusCode.CANCELLED, IDLE_STREAM)
        finally:
            streams.close(entry)

    # ---- driven from other threads ----------------------------------------------------------
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
            for name in HEALTH_NAMES:
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
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self.loop.close()

    def wait(self, timeout: float | None = None) -> bool:
        """grpc's wait_for_termination: True if `timeout` passed before the server stopped."""
        self._thread.join(timeout)
        return self._thread.is_alive()
