"""Bearer tokens for both transports: every call but health's carries
`authorization: Bearer <token>`, unary and streaming handlers alike, or ends UNAUTHENTICATED.
Constant-time comparison; the token is never logged or echoed."""

from __future__ import annotations

import hmac

import grpc

from .metrics import Metrics

# Health stays reachable without a token: orchestrators' probes (e.g. Kubernetes' grpc probe)
# cannot send metadata, and the answer (SERVING or not) reveals nothing.
AUTH_EXEMPT = ("/grpc.health.v1.Health/",)
DENIED = "missing or wrong bearer token (metadata 'authorization: Bearer ...')"


def handler_like(handler: grpc.RpcMethodHandler, behaviour) -> grpc.RpcMethodHandler:
    """A method handler of `handler`'s kind (unary or streaming either way) and (de)serializers
    that runs `behaviour` instead: how an interceptor refuses a call."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class BearerAuth(grpc.ServerInterceptor):
    """The token check, as an interceptor of grpc's synchronous server."""

    def __init__(self, token: str, metrics: Metrics | None = None):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def _ok(self, details) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(got, self._expected)
        return False

    def _refused(self, details) -> bool:
        return not (details.method.startswith(AUTH_EXEMPT) or self._ok(details))

    def _count(self, details) -> None:
        if self._metrics is not None:
            self._metrics.record(details.method.rsplit("/", 1)[-1], "UNAUTHENTICATED")

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not self._refused(details):  # None: grpc says UNIMPLEMENTED
            return handler

        def deny(_request, context):
            self._count(details)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

        return handler_like(handler, deny)


class AioBearerAuth(BearerAuth, grpc.aio.ServerInterceptor):
    """The same check for grpc.aio."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not self._refused(details):
            return handler

        async def deny(_request, context):
            self._count(details)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

        return handler_like(handler, deny)
