"""The gRPC server: a PolicyCore (core.py) over a SessionStore (sessions.py) and a Batcher
(batcher.py), carried by one of two transports.

What this file adds is assembly and lifecycle: the configuration, health and the warm-up,
TLS, message size limits, metrics over HTTP, the idle sweeper, and a graceful drain on
SIGTERM/SIGINT. The transports (`ServerConfig.transport`) only move bytes:
"threads" (threads.py, the default): grpc's synchronous server, the lowest latency for a few
clients; "asyncio" (aio.py): grpc.aio on one event loop, for many concurrent sessions.
benchmarks/RESULTS.md ("Serving latency and throughput") compares them.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from vidt.errors import ConfigError

from .aio import AioTransport
from .auth import BearerAuth  # noqa: F401  (part of this module's interface)
from .batcher import Batcher
from .core import PolicyCore, Transport, message_limits, policy_info
from .metrics import Metrics
from .sessions import SessionStore
from .threads import ThreadsTransport

log = logging.getLogger(__name__)

TRANSPORTS: dict[str, type[Transport]] = {"threads": ThreadsTransport, "asyncio": AioTransport}


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

    TRANSPORTS = tuple(TRANSPORTS)

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


class PolicyServer:
    """A PolicyService for one loaded policy (an OnnxPolicy, or anything with `metadata`,
    `provider` and `predict`). Binds in the constructor (a taken port fails there), serves
    from `start()`."""

    def __init__(self, policy, config: ServerConfig | None = None):
        self.policy = policy
        self.config = c = config or ServerConfig()
        m = policy.metadata
        self.metrics = Metrics()
        # One batcher: the threads transport calls it, the asyncio one awaits its submit().
        self.batcher = Batcher(policy.predict, c.max_batch, c.batch_window_us,
                               on_batch=self.metrics.batch_size.observe)
        self.store = SessionStore(m, self.batcher, infer_async=self.batcher.submit,
                                  max_sessions=c.max_sessions, idle_timeout_s=c.idle_timeout_s)
        self.metrics.watch_store(self.store)
        self.info = policy_info(policy)

        recv, send = message_limits(m.obs_dim, m.act_dim, c.max_batch_requests)
        options = [
            ("grpc.so_reuseport", 0),  # a second server on this port must fail, not share it
            ("grpc.max_receive_message_length", recv),
            ("grpc.max_send_message_length", send),
        ]
        transport = TRANSPORTS[c.transport]
        self.core = PolicyCore(self.store, self.info, self.metrics, c.max_batch_requests,
                               asynchronous=transport.asynchronous)
        self._transport: Transport = transport(self.core, options, c.auth_token, c.threads)
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
            n = self.core.streams.end_idle(self.config.idle_timeout_s)
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
        self.batcher.close()
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


