"""The threads transport (`vidt serve --transport threads`, the default): grpc's synchronous
server, a worker thread per call in progress, each running the core's RPC in its own thread
(`run_now`). The batcher's leader/follower scheme lets a lone caller run onnxruntime in its
own thread, with no hand-off. Every call in progress holds a worker, an open ActStream for
its whole life: `threads` bounds the concurrent calls, and so the sessions one batch can
gather."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vidt.v1 import policy_pb2_grpc as pb_grpc

from .auth import BearerAuth
from .core import HEALTH_NAMES, REFLECTED, STREAM_RPC, PolicyCore, handlers, run_now


class ThreadsTransport:
    asynchronous = False

    def __init__(self, core: PolicyCore, options, auth_token: str | None,
                 threads: int = 64):
        self.core = core
        interceptors = [BearerAuth(auth_token, core.metrics)] if auth_token else []
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vidt-grpc"),
            interceptors=interceptors, options=options)
        pb_grpc.add_PolicyServiceServicer_to_server(
            handlers(core, self._unary, self._stream), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(REFLECTED, self.server)

    def _call(self, method: str, rpc, request, context):
        t0 = time.perf_counter()
        try:
            answer = run_now(rpc(request, context))
        except Exception as e:
            context.abort(*self.core.failed(method, e))
        self.core.succeeded(method, t0)
        return answer

    def _unary(self, method: str, rpc):
        return lambda request, context: self._call(method, rpc, request, context)

    def _stream(self, request_iterator, context):
        streams = self.core.streams
        entry = streams.open(context.cancel)
        try:
            for request in request_iterator:
                streams.busy(entry)
                yield self._call(STREAM_RPC, self.core.Act, request, context)
                streams.idle(entry)
        finally:
            streams.close(entry)

    def add_port(self, address: str, creds=None) -> int:
        if creds is None:
            return self.server.add_insecure_port(address)
        return self.server.add_secure_port(address, creds)

    def start(self) -> None:
        self.server.start()

    def set_health(self, status) -> None:
        for name in HEALTH_NAMES:
            self.health.set(name, status)

    def health_shutdown(self) -> None:
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None) -> None:
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)
