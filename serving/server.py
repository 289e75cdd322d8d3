"""The gRPC server: a thin layer over SessionStore (sessions.py) and Batcher (batcher.py).

What this file adds to the core is transport: status codes, health and reflection, bearer
tokens, TLS, message size limits, metrics, and a graceful drain on SIGTERM/SIGINT.

Two transports (`ServerConfig.transport`). "threads", the default: grpc's synchronous server
(a ThreadPoolExecutor), whose loopback round trip measured 0.58-0.66 ms p50 against
0.75-0.89 ms for grpc.aio (grpcio 1.85, 2026-11); the batcher's leader/follower scheme needs
callers in threads. Every call in progress holds one worker thread, an open ActStream for its
whole life: `threads` bounds the concurrent calls, and so the sessions one batch can gather.
"asyncio" (aio.py): grpc.aio on one event loop, for many concurrent sessions, where the
threads' GIL hand-offs bound the server (benchmarks/RESULTS.md, "Serving throughput").
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import math
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vidt.errors import ConfigError
from vidt.v1 import policy_pb2 as pb
from vidt.v1 import policy_pb2_grpc as pb_grpc

from .batcher import Batcher
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
# Health stays reachable without a token: orchestrators' probes (e.g. Kubernetes' grpc probe)
# cannot send metadata, and the answer (SERVING or not) reveals nothing.
AUTH_EXEMPT = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback: exposing a robot policy is an explicit decision
    port: int = 50051  # gRPC's customary port; 0 picks a free one (tests)
    max_sessions: int = 1024  # a window is a few KB, so this bounds memory, not speed
    idle_timeout_s: float = 300.0  # a crashed client's session is freed after 5 minutes
    max_batch: int = 64  # rows per onnxruntime call; 64 small-DT windows run in ~1-2 ms on CPU
    batch_window_us: int = 200  # extra wait for a batch to fill, only under concurrent load
    threads: int = 64  # concurrent calls (each open ActStream holds one): batches need callers
    metrics_port: int | None = None  # Prometheus /metrics over HTTP, off unless asked
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, serve TLS only
    tls_key: str | None = None
    auth_token: str | None = field(default=None, repr=False)  # bearer token; never logged
    insecure: bool = False  # allow a non-loopback address without TLS or token
    grace_s: float = 10.0  # on SIGTERM: time for open episodes and calls to finish
    max_batch_requests: int = 1024  # most requests in one ActBatch; sizes the message limit
    transport: str = "threads"  # or "asyncio" (aio.py): more steps/s under many clients

    TRANSPORTS = ("threads", "asyncio")

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        for name in ("max_sessions", "max_batch", "threads", "max_batch_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.batch_window_us < 0 or not self.idle_timeout_s > 0 or self.grace_s < 0:
            raise ConfigError("batch_window_us and grace_s must be >= 0, idle_timeout_s > 0 "
                              f"(got {self.batch_window_us}, {self.grace_s}, "
                              f"{self.idle_timeout_s})")
        if self.transport not in self.TRANSPORTS:
            raise ConfigError(f"transport must be one of {', '.join(self.TRANSPORTS)}, got "
                              f"{self.transport!r}")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("the auth token is empty")
        if not (is_loopback(self.host) or self.tls_cert or self.auth_token or self.insecure):
            raise ConfigError(
                f"refusing to listen on {self.host} (beyond loopback) without TLS or a token: "
                "give --tls-cert/--tls-key and/or --auth-token-file, or --insecure to accept "
                "unauthenticated plaintext on the network")


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is a loopback one (a name is resolved: a
    hosts-file alias of 127.0.0.1 is loopback, a name that does not resolve is not)."""
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(h, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def message_limits(obs_dim: int, act_dim: int, max_batch_requests: int) -> tuple[int, int]:
    """(receive, send) byte limits: the largest valid ActBatch either way, with room for ids
    and framing (a packed float is 4 bytes; the rest of a request is under 96 bytes)."""
    recv = max_batch_requests * (96 + 4 * obs_dim) + 4096
    send = max_batch_requests * (96 + 4 * act_dim) + 4096 + 8 * act_dim  # + PolicyInfo bounds
    return recv, send


def _policy_info(policy) -> pb.PolicyInfo:
    m = policy.metadata
    return pb.PolicyInfo(
        model_name=m.model_name, model_version=m.model_version, env_id=m.env_id,
        observation_dim=m.obs_dim, action_dim=m.act_dim, action_low=list(m.action_low),
        action_high=list(m.action_high), context_length=m.context_len,
        max_episode_steps=m.max_episode_steps, default_target_return=m.default_target_return,
        execution_provider=policy.provider)


def _step(req: pb.ActRequest) -> StepRequest:
    return StepRequest(req.session_id, int(req.step), _floats(req.observation),
                       float(req.reward))


def _floats(values) -> np.ndarray:
    return np.fromiter(values, dtype=np.float32, count=len(values))


def _resume_state(r: pb.ResumeState) -> ResumeState:
    return ResumeState(r.model_version, int(r.next_step),
                       [StepRecord(_floats(h.observation), _floats(h.action), h.return_to_go)
                        for h in r.history], r.total_reward)


def _answer(r: StepResult) -> pb.ActResponse:
    return pb.ActResponse(session_id=r.session_id, step=r.step, action=r.action.tolist(),
                          return_to_go=r.return_to_go)


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    """vidt.v1.PolicyService: request conversion and status codes; the rules live in the store."""

    def __init__(self, store: SessionStore, info: pb.PolicyInfo, metrics: Metrics,
                 max_batch_requests: int = 1024):
        self.store, self.info, self.metrics = store, info, metrics
        self.max_batch_requests = max_batch_requests
        # Labelled children bound once: a labels() lookup per call costs ~8 us.
        self._act_latency = metrics.act_latency.labels("Act")
        self._act_ok = metrics.requests.labels("Act", "OK")
        self._stream_latency = metrics.act_latency.labels("ActStream")
        self._stream_ok = metrics.requests.labels("ActStream", "OK")
        # Open streams: id -> [context, when it last went idle (inf while a step runs)].
        self._streams: dict[int, list] = {}
        self._streams_lock = threading.Lock()

    def _status(self, method: str, e: Exception) -> tuple[grpc.StatusCode, str]:
        """The status a failed call ends with (counted in the metrics)."""
        if isinstance(e, ServingError):
            code, msg = e.code, str(e)
        else:  # a bug: log it here, and tell the client no more than that
            log.exception("%s failed", method)
            code, msg = "INTERNAL", f"internal error ({type(e).__name__}); see the server log"
        self.metrics.record(method, code)
        return grpc.StatusCode[code], msg

    def _fail(self, context, method: str, e: Exception):
        context.abort(*self._status(method, e))

    # The parts of the calls that do not wait for inference, shared with the asyncio servicer.
    def _create(self, request) -> pb.CreateSessionResponse:
        if request.HasField("resume"):
            c = self.store.resume(_resume_state(request.resume))
        else:
            target = request.target_return if request.HasField("target_return") else None
            c = self.store.create(target)
        self.metrics.record("CreateSession", "OK")
        return pb.CreateSessionResponse(session_id=c.session_id, target_return=c.target_return,
                                        context_length=c.context_length,
                                        idle_timeout_s=c.idle_timeout_s)

    def _close(self, request) -> pb.CloseSessionResponse:
        s = self.store.close(request.session_id)
        self.metrics.record("CloseSession", "OK")
        return pb.CloseSessionResponse(steps=s.steps, total_reward=s.total_reward)

    def _batch_steps(self, request) -> list[StepRequest]:
        n = len(request.requests)
        if n > self.max_batch_requests:
            raise InvalidArgument(f"{n} requests in one ActBatch; this server takes at "
                                  f"most {self.max_batch_requests}")
        return [_step(r) for r in request.requests]

    def _batch_done(self, results, t0: float) -> pb.ActBatchResponse:
        answer = pb.ActBatchResponse(responses=[_answer(r) for r in results])
        self.metrics.act_latency.labels("ActBatch").observe(time.perf_counter() - t0)
        self.metrics.record("ActBatch", "OK")
        return answer

    def GetPolicyInfo(self, request, context):
        self.metrics.record("GetPolicyInfo", "OK")
        return self.info

    def CreateSession(self, request, context):
        try:
            return self._create(request)
        except Exception as e:
            self._fail(context, "CreateSession", e)

    def Act(self, request, context):
        t0 = time.perf_counter()
        try:
            answer = _answer(self.store.act(_step(request)))
        except Exception as e:
            self._fail(context, "Act", e)
        self._act_latency.observe(time.perf_counter() - t0)
        self._act_ok.inc()
        return answer

    def ActBatch(self, request, context):
        t0 = time.perf_counter()
        try:
            return self._batch_done(self.store.act_batch(self._batch_steps(request)), t0)
        except Exception as e:
            self._fail(context, "ActBatch", e)

    def ActStream(self, request_iterator, context):
        entry = [context.cancel, time.monotonic()]
        with self._streams_lock:
            self._streams[id(entry)] = entry
        try:
            for request in request_iterator:
                entry[1] = math.inf
                t0 = time.perf_counter()
                try:
                    answer = _answer(self.store.act(_step(request)))
                except Exception as e:
                    self._fail(context, "ActStream", e)
                self._stream_latency.observe(time.perf_counter() - t0)
                self._stream_ok.inc()
                yield answer
                entry[1] = time.monotonic()
        finally:
            with self._streams_lock:
                self._streams.pop(id(entry), None)

    def end_idle_streams(self, idle_s: float) -> int:
        """Cancel the streams that sent nothing for `idle_s`: each holds a worker thread,
        and a client gone silent without closing its connection (a dead link, no FIN)
        would otherwise hold it until TCP keepalive notices, hours later."""
        now = time.monotonic()
        with self._streams_lock:
            idle = [e for e in self._streams.values() if now - e[1] > idle_s]
        for cancel, _ in idle:
            cancel()
        return len(idle)

    def CloseSession(self, request, context):
        try:
            return self._close(request)
        except Exception as e:
            self._fail(context, "CloseSession", e)


class BearerAuth(grpc.ServerInterceptor):
    """Every call but health's must carry `authorization: Bearer <token>`; unary and streaming
    handlers alike get UNAUTHENTICATED otherwise. Constant-time comparison; the token is
    never logged or echoed."""

    def __init__(self, token: str, metrics: Metrics | None = None):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def _ok(self, details) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(got, self._expected)
        return False

    def intercept_service(self, continuation, details):
        if details.method.startswith(AUTH_EXEMPT) or self._ok(details):
            return continuation(details)
        handler = continuation(details)
        if handler is None:  # unknown method: let grpc say UNIMPLEMENTED
            return None
        method = details.method.rsplit("/", 1)[-1]

        def deny(_request, context):
            if self._metrics is not None:
                self._metrics.record(method, "UNAUTHENTICATED")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

        return handler_like(handler, deny)


DENIED = "missing or wrong bearer token (metadata 'authorization: Bearer ...')"
IDLE_STREAM = "stream ended: idle for longer than the server's idle timeout"


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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now: for starting a server whose address a caller must know
    beforehand (the demo, benchmarks, tests). A `vidt serve --port 0` picks its own instead."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_bindable(host: str, port: int, option: str) -> None:
    """ConfigError naming the port and the cause when nothing can listen on host:port."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"{option} {port}: cannot listen on {host}:{port}: the port "
                                  f"is in use by another process; choose another (0 picks a "
                                  f"free one)") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"{option} {port}: this machine has no address {host} to "
                                  f"listen on") from None
            raise ConfigError(f"{option} {port}: cannot listen on {host}:{port}: "
                              f"{e.strerror or e}") from None


class _ThreadsTransport:
    """grpc's synchronous server: a worker thread per call in progress."""

    def __init__(self, servicer: PolicyServicer, options, auth_token: str | None, metrics,
                 health_names, reflected, threads: int):
        self.health_names = health_names
        interceptors = [BearerAuth(auth_token, metrics)] if auth_token else []
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vidt-grpc"),
            interceptors=interceptors, options=options)
        pb_grpc.add_PolicyServiceServicer_to_server(servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(reflected, self.server)

    def add_port(self, address: str, creds=None) -> int:
        if creds is None:
            return self.server.add_insecure_port(address)
        return self.server.add_secure_port(address, creds)

    def start(self) -> None:
        self.server.start()

    def set_health(self, status) -> None:
        for name in self.health_names:
            self.health.set(name, status)

    def health_shutdown(self) -> None:
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None) -> None:
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


class PolicyServer:
    """A PolicyService for one loaded policy (an OnnxPolicy, or anything with `metadata`,
    `provider` and `predict`). Binds in the constructor (a taken port fails there), serves
    from `start()`."""

    def __init__(self, policy, config: ServerConfig | None = None):
        self.policy = policy
        self.config = c = config or ServerConfig()
        m = policy.metadata
        self.metrics = Metrics()
        # The threads transport's batcher; the asyncio one brings its own (AsyncBatcher).
        self.batcher = None if c.transport == "asyncio" else Batcher(
            policy.predict, c.max_batch, c.batch_window_us,
            on_batch=self.metrics.batch_size.observe)
        self.store = SessionStore(m, self.batcher, max_sessions=c.max_sessions,
                                  idle_timeout_s=c.idle_timeout_s)
        self.metrics.watch_store(self.store)
        self.info = _policy_info(policy)

        recv, send = message_limits(m.obs_dim, m.act_dim, c.max_batch_requests)
        options = [
            ("grpc.so_reuseport", 0),  # a second server on this port must fail, not share it
            ("grpc.max_receive_message_length", recv),
            ("grpc.max_send_message_length", send),
        ]
        reflected = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        if c.transport == "asyncio":
            from .aio import AioPolicyServicer, AioTransport

            self.servicer = AioPolicyServicer(self.store, self.info, self.metrics,
                                              c.max_batch_requests)
            self._transport = AioTransport(
                self.servicer, options, c.auth_token, self.metrics, HEALTH_NAMES, reflected,
                c.max_batch, policy.predict, self.metrics.batch_size.observe)
            self.batcher = self._transport.batcher
        else:
            self.servicer = PolicyServicer(self.store, self.info, self.metrics,
                                           c.max_batch_requests)
            self._transport = _ThreadsTransport(self.servicer, options, c.auth_token,
                                                self.metrics, HEALTH_NAMES, reflected, c.threads)
        # "" starts SERVING in grpc's servicer: not before the warm-up.
        self._transport.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

        try:
            host, port = self._bind(c)
        except BaseException:
            self._transport.stop(0)  # the asyncio loop's thread must not outlive a failed start
            raise
        self.port = port
        self.address = f"{host}:{port}"
        self._stopping = threading.Event()
        self.serving = False  # health SERVING: loaded, warmed up, not draining
        self._sweeper: threading.Thread | None = None
        self.metrics_port: int | None = None

    def _bind(self, c: ServerConfig) -> tuple[str, int]:
        host = f"[{c.host}]" if ":" in c.host and not c.host.startswith("[") else c.host
        address = f"{host}:{c.port}"
        check_bindable(c.host, c.port, "--port")  # before grpc, which only logs "Failed to bind"
        if c.metrics_port is not None:
            check_bindable(c.host, c.metrics_port, "--metrics-port")
        try:
            if c.tls_cert:
                key, cert = Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes()
                # grpc reports a bad pair only as "Failed to bind": say what is wrong here.
                if b"-----BEGIN CERTIFICATE-----" not in cert:
                    raise ConfigError(f"{c.tls_cert} is not a PEM certificate (chain)")
                if b"PRIVATE KEY-----" not in key:
                    raise ConfigError(f"{c.tls_key} is not a PEM private key")
                port = self._transport.add_port(address,
                                                grpc.ssl_server_credentials([(key, cert)]))
            else:
                port = self._transport.add_port(address)
        except OSError as e:
            raise ConfigError(f"cannot read the TLS files: {e}") from None
        except RuntimeError as e:
            why = ("port in use by another server, an address this machine does not have"
                   + (", or a TLS key that does not match the certificate (grpc's log above "
                      "says which)" if c.tls_cert else ""))
            raise ConfigError(f"cannot listen on {address}: {e} ({why})") from None
        if port == 0:
            raise ConfigError(f"cannot listen on {address} (port in use?)")
        return host, port

    def start(self) -> None:
        self._transport.start()
        if self.config.metrics_port is not None:  # /ready says 503 until the warm-up is done
            self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.host,
                                                   ready=lambda: self.serving)
        # Warm-up: onnxruntime's first run allocates and optimises; no client should pay it.
        m = self.policy.metadata
        self.policy.predict(m.new_window().observe(np.zeros(m.obs_dim, np.float32)))
        self._sweeper = threading.Thread(target=self._sweep, name="vidt-expiry", daemon=True)
        self._sweeper.start()
        self._transport.set_health(health_pb2.HealthCheckResponse.SERVING)
        self.serving = True

    def _sweep(self) -> None:
        interval = min(1.0, self.config.idle_timeout_s / 4)
        while not self._stopping.wait(interval):
            n = self.store.expire_idle()
            if n:
                log.info("expired %d idle session(s)", n)
            n = self.servicer.end_idle_streams(self.config.idle_timeout_s)
            if n:
                log.info("ended %d stream(s) idle for more than %g s", n,
                         self.config.idle_timeout_s)

    def drain(self, grace_s: float | None = None, force: threading.Event | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING and no new sessions at once; open sessions
        may step until they are all closed or `grace_s` has passed (or `force` is set); then
        calls in flight get up to a second to finish, and the server stops."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        self.serving = False
        self._transport.health_shutdown()
        self.store.drain()
        deadline = time.monotonic() + grace_s
        while self.store.active and time.monotonic() < deadline:
            if force is not None and force.wait(0.05):
                break
            if force is None:
                time.sleep(0.05)
        if self.store.active:
            log.warning("stopping with %d session(s) still open", self.store.active)
        self.stop(grace=min(1.0, max(0.0, deadline - time.monotonic())))

    def stop(self, grace: float | None = 0) -> None:
        self.serving = False
        self._transport.health_shutdown()
        self.store.drain()
        self._stopping.set()
        self._transport.stop(grace)
        self.metrics.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops or `timeout` passes; as grpc's wait_for_termination,
        True if the timeout passed first."""
        return self._transport.wait(timeout)


def serve(model: str | Path, config: ServerConfig, provider: str = "auto",
          ort_threads: int | None = None) -> int:
    """Load `model`, serve until SIGTERM/SIGINT, drain, return the exit status (0).
    A second signal during the drain stops at once."""
    from vidt.errors import ModelFileError, VidtError

    from .runtime import OnnxPolicy

    try:
        policy = OnnxPolicy(model, provider=provider, intra_op_threads=ort_threads)
    except VidtError:
        raise
    except Exception as e:  # e.g. invalid UTF-8 in a corrupted file's metadata: still the file
        raise ModelFileError(f"{model}: not a loadable vidt policy file ({type(e).__name__}: "
                             f"{e})") from None
    server = PolicyServer(policy, config)
    signals = threading.Event()
    force = threading.Event()

    def on_signal(signum, _frame):
        (force if signals.is_set() else signals).set()
        log.info("%s received: draining (up to %g s)", signal.Signals(signum).name,
                 config.grace_s)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        m = policy.metadata
        log.info("serving %s (env %s, model_version %s, K=%d) from %s on %s with %s; tls=%s "
                 "auth=%s max_batch=%d transport=%s%s", m.model_name,
                 m.env_id or "unknown", m.model_version, m.context_len, model, server.address,
                 policy.provider, "on" if config.tls_cert else "off",
                 "token" if config.auth_token else "off", config.max_batch,
                 config.transport if config.transport != "threads" else
                 f"threads ({config.threads}, batch_window_us={config.batch_window_us})",
                 f" metrics=:{server.metrics_port}" if server.metrics_port else "")
        while not signals.wait(0.5):
            pass
        server.drain(config.grace_s, force=force)
        log.info("stopped after %d step(s) in %d session(s)", server.store.steps_total,
                 server.store.created_total)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


