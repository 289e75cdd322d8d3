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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from vidt.errors import ConfigError
from vidt.policy_file import OnnxPolicy
from vidt.v1 import policy_pb2 as pb

from .aio import AioTransport
from .auth import BearerAuth  # noqa: F401  (part of this module's interface)
from .core import PolicyCore, Transport, message_limits, policy_info
from .metrics import Metrics
from .repository import ModelRepository
from .threads import ThreadsTransport
from .versions import Versions

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
    max_versions: int = 4  # model versions resident at once (a model repository's)
    model_poll_s: float = 2.0  # how often a model repository's pointer is reread
    unload_after_s: float = 5.0  # an old version leaves this long after its last session

    TRANSPORTS = tuple(TRANSPORTS)

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        for name in ("max_sessions", "max_batch", "threads", "max_batch_requests",
                     "max_versions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if not (self.model_poll_s > 0 and self.unload_after_s >= 0):
            raise ConfigError(f"model_poll_s must be > 0 and unload_after_s >= 0, got "
                              f"{self.model_poll_s}, {self.unload_after_s}")
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
    """A PolicyService for a loaded policy (an OnnxPolicy, or anything with `metadata`,
    `provider` and `predict`), and the later versions of it that `repo` (a ModelRepository)
    holds (versions.py). Binds in the constructor (a taken port fails there), serves from
    `start()`.

    follow_pointer: new sessions go where the repository's pointer says, reread on
    `reread()` (SIGHUP) and every `config.model_poll_s`. open_policy(path): how a version
    from the repository is opened (default: onnxruntime on the first policy's provider)."""

    def __init__(self, policy, config: ServerConfig | None = None, *,
                 repo: ModelRepository | None = None, follow_pointer: bool = False,
                 open_policy: Callable[[Path], object] | None = None):
        self.policy = policy
        self.config = c = config or ServerConfig()
        m = policy.metadata
        self.metrics = Metrics()
        if open_policy is None:
            provider = "cuda" if policy.provider == "CUDAExecutionProvider" else "cpu"
            open_policy = partial(OnnxPolicy, provider=provider)
        # Each version has one batcher: the threads transport calls it, asyncio awaits submit().
        self.versions = Versions(
            policy, dict(max_sessions=c.max_sessions, idle_timeout_s=c.idle_timeout_s),
            metrics=self.metrics, max_batch=c.max_batch, batch_window_us=c.batch_window_us,
            repo=repo, follow_pointer=follow_pointer, max_versions=c.max_versions,
            unload_after_s=c.unload_after_s, open_policy=open_policy)
        self.store = self.versions.store
        self.batcher = self.versions.policies[m.model_version][1]  # the first version's
        self.metrics.watch_store(self.store)
        self._reread = threading.Event()

        recv, send = message_limits(m.obs_dim, m.act_dim, c.max_batch_requests)
        options = [
            ("grpc.so_reuseport", 0),  # a second server on this port must fail, not share it
            ("grpc.max_receive_message_length", recv),
            ("grpc.max_send_message_length", send),
        ]
        transport = TRANSPORTS[c.transport]
        self.core = PolicyCore(self.store, self.describe, self.metrics, c.max_batch_requests,
                               asynchronous=transport.asynchronous,
                               load=self.versions.load if repo is not None else None)
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
        self._watcher: threading.Thread | None = None
        self.metrics_port: int | None = None

    def describe(self) -> pb.PolicyInfo:
        """GetPolicyInfo's answer: the current version's, with every version held."""
        s = self.store
        info = policy_info(self.versions.current_policy())
        info.loaded_versions[:] = [m.version for m in s.models()]
        if s.canary is not None:
            info.canary_version, info.canary_fraction = s.canary.version, s.canary_fraction
        return info

    def drain_sessions(self) -> None:
        """Take no new sessions from now on (they are refused, UNAVAILABLE, so that clients
        go elsewhere), keep serving the open ones, and log when the last one has ended.
        Health and readiness stay SERVING: the proxy must still route the open episodes
        here. `vidt serve` does this on SIGUSR1."""
        if self.store.draining:
            return
        self.store.drain()
        log.info("draining: no new sessions; %d open", self.store.active)
        threading.Thread(target=self._report_drained, name="vidt-drained", daemon=True).start()

    def _report_drained(self) -> None:
        while self.store.active and not self._stopping.wait(0.2):
            pass
        if not self.store.active:
            log.info("drained: no session open (stop this server now to lose no episode)")

    def reread(self) -> None:
        """Reread the model repository's pointer now (SIGHUP), not at the next poll."""
        self._reread.set()

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
        self.versions.follow()  # a canary the pointer names at start serves from the start
        self._sweeper = threading.Thread(target=self._sweep, name="vidt-expiry", daemon=True)
        self._sweeper.start()
        if self.versions.repo is not None:
            self._watcher = threading.Thread(target=self._watch, name="vidt-models",
                                             daemon=True)
            self._watcher.start()
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

    def _watch(self) -> None:
        """Loads and unloads run here, so neither holds up session expiry."""
        while not self._stopping.is_set():
            self._reread.wait(self.config.model_poll_s)
            self._reread.clear()
            if self._stopping.is_set():
                break
            try:
                self.versions.follow()
                self.versions.unload()
            except Exception:  # a bug: keep serving what is held, say so
                log.exception("model repository watch failed")

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
        self._reread.set()
        self._transport.stop(grace)
        self.versions.close()
        self.metrics.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops or `timeout` passes; as grpc's wait_for_termination,
        True if the timeout passed first."""
        return self._transport.wait(timeout)


def open_policy(path: str | Path, provider: str = "auto",
                ort_threads: int | None = None) -> OnnxPolicy:
    """An exported file in onnxruntime; ModelFileError, one line, for a file that is not one."""
    from vidt.errors import ModelFileError, VidtError

    try:
        return OnnxPolicy(path, provider=provider, intra_op_threads=ort_threads)
    except VidtError:
        raise
    except Exception as e:  # e.g. invalid UTF-8 in a corrupted file's metadata: still the file
        raise ModelFileError(f"{path}: not a loadable vidt policy file ({type(e).__name__}: "
                             f"{e})") from None


def serve(model: str | Path | None, config: ServerConfig, provider: str = "auto",
          ort_threads: int | None = None, model_repo: str | Path | None = None) -> int:
    """Load `model` (or the current version of `model_repo`'s pointer), serve until
    SIGTERM/SIGINT, drain, return the exit status (0). A second signal during the drain
    stops at once; SIGHUP rereads the repository's pointer."""
    repo = ModelRepository(model_repo) if model_repo is not None else None
    follow = model is None  # with --model, the file is current and the pointer is not read
    if model is None:
        if repo is None:
            raise ConfigError("give --model FILE or --model-repo DIR")
        current = repo.read_pointer().current
        if current is None:
            raise ConfigError(f"{repo.root}: the pointer names no current version: make one "
                              f"with `vidt models promote {repo.root} FILE`")
        model = repo.resolve(current).path
    opener = partial(open_policy, provider=provider, ort_threads=ort_threads)
    policy = opener(model)
    server = PolicyServer(policy, config, repo=repo, follow_pointer=follow, open_policy=opener)
    signals = threading.Event()
    force = threading.Event()

    def on_signal(signum, _frame):
        (force if signals.is_set() else signals).set()
        log.info("%s received: draining (up to %g s)", signal.Signals(signum).name,
                 config.grace_s)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: server.reread())
    old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: server.drain_sessions())
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
        if repo is not None:
            log.info("model repository %s: %s", repo.root,
                     "following its pointer (SIGHUP rereads it)" if follow else
                     "for resumes and pinned sessions of other versions")
        while not signals.wait(0.5):
            pass
        server.drain(config.grace_s, force=force)
        log.info("stopped after %d step(s) in %d session(s)", server.store.steps_total,
                 server.store.created_total)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


