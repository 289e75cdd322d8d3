"""Python client of a vidt policy server.

    from vidt.serving.client import PolicyClient

    with PolicyClient("127.0.0.1:50051") as client, client.session() as s:
        obs, _ = env.reset(seed=0)
        reward, done = 0.0, False
        while not done:
            action = s.act(obs, reward)
            obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated

Sessions count their steps themselves. A call that fails with UNAVAILABLE, DEADLINE_EXCEEDED
or CANCELLED (reset on the way by a proxy) is sent again with the same step index: the server
answers a repeated step with the answer it already gave and appends nothing, so a retry can
never advance the episode twice.
Three forms of the same episode loop: `session()` (Act), `sessions(n)` (ActBatch, for vector
envs) and `stream()` (ActStream, one stream per episode).

Replicas. Every call carries the metadata `x-vidt-route` (one random key per client unless
`route=` names one, e.g. a robot's id), so a proxy keeps a client's sessions on one server.
Each session keeps what a resume needs (its last context_length steps: a few KB). When its
server is gone (UNAVAILABLE or CANCELLED after the retries, or NOT_FOUND "unknown session"
once the proxy has sent it to another replica), the session goes on with
`CreateSession.resume` through the same address, and the step is sent again: the new server
answers exactly as the old one would have. A new session is asked for again while the
server is UNAVAILABLE (a draining replica the proxy has not taken out yet, a server
restarting). On by default, for up to `failover_timeout_s` (`failover=False` turns it off);
`client.failovers` counts the resumes.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import deque
from pathlib import Path

import grpc
import numpy as np

from vidt.errors import VidtError
from vidt.v1 import policy_pb2 as pb
from vidt.v1 import policy_pb2_grpc as pb_grpc

from .sessions import DRAINING

log = logging.getLogger(__name__)

# A call this client did not cancel itself but that ends CANCELLED was reset on the way: HAProxy
# 2.6 resets the h2 stream of a replica that died or went away mid-call (seen on CreateSession
# during a rolling restart), so it is retried like UNAVAILABLE. Every call is safe to send
# twice: a step is answered once per step number, and a session created twice leaves one idle
# session to expire. HAProxy also turns a stream's error status into a reset, so a broken
# stream asks the step again as a unary Act, whose status comes through.
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.CANCELLED)
ROUTE_KEY = "x-vidt-route"
# grpc waits 1 s (then longer) before reconnecting after a failed connect; a controller
# that retries within its retry budget needs the channel back sooner.
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 2000))


class ServerError(VidtError):
    """A call the server refused or could not answer; `code` is the grpc.StatusCode."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{method} failed: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details


def check_address(address: str) -> str:
    """HOST:PORT (or [IPv6]:PORT, or a gRPC target such as unix:PATH) as given; a VidtError
    for a missing port, which gRPC would otherwise take as 443 and wait on."""
    if "://" in address or address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or "]" in port or not port.isdigit():
        raise VidtError(f"server address {address!r} needs a port: HOST:PORT, e.g. "
                        f"127.0.0.1:50051")
    return address


def wait_serving(address: str, timeout: float = 60.0, alive=None,
                 service: str = "vidt.v1.PolicyService") -> bool:
    """Poll grpc health until `service` is SERVING at `address` (plaintext). False when
    `timeout` seconds pass first, or as soon as alive() (e.g. a server process still
    running) turns False."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                return False
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def _obs_list(observation) -> list[float]:
    return np.asarray(observation, dtype=np.float32).reshape(-1).tolist()


def _server_lost(e: ServerError) -> bool:
    """Whether a failed call means the session's server is gone (so the episode must go on
    elsewhere): UNAVAILABLE or a reset (CANCELLED) once the retries are spent, or a server
    that never heard of the session. A session that server closed or expired was really
    ended: no resume."""
    if e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return True
    return e.code == grpc.StatusCode.NOT_FOUND and "unknown session" in e.details


class PolicyClient:
    """A channel to one server.

    token: bearer token sent with every call. tls: None for plaintext, True for TLS checked
    against the system's roots, or a PEM file path / PEM bytes of the certificate (or CA) to
    trust. timeout_s: deadline of each unary call. retries: extra attempts on UNAVAILABLE,
    DEADLINE_EXCEEDED and CANCELLED, `backoff_s` doubling between them. route: the
    `x-vidt-route` value sent with every call (default: a random key for this client).
    failover: resume sessions whose server is gone, trying for up to `failover_timeout_s`.
    """

    def __init__(self, address: str, token: str | None = None,
                 tls: bool | str | Path | bytes | None = None, *, timeout_s: float = 10.0,
                 retries: int = 5, backoff_s: float = 0.05, options=(),
                 route: str | None = None, failover: bool = True,
                 failover_timeout_s: float = 30.0):
        self.address = check_address(address)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, int(retries), backoff_s
        options = [*CHANNEL_OPTIONS, *options]
        if tls is None or tls is False:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            if tls is True:
                root = None
            elif isinstance(tls, bytes):
                root = tls
            else:
                root = Path(tls).read_bytes()
            self.channel = grpc.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=root), options)
        self.route = route if route is not None else secrets.token_hex(8)
        self.metadata = ((ROUTE_KEY, self.route),
                         *((("authorization", f"Bearer {token}"),) if token else ()))
        self.stub = pb_grpc.PolicyServiceStub(self.channel)
        self._info: pb.PolicyInfo | None = None
        # Counters for monitoring, bumped by sessions on any thread (+= alone can lose counts).
        self._count_lock = threading.Lock()
        self.retried = 0  # calls sent again after a transient failure
        self.failover, self.failover_timeout_s = bool(failover), float(failover_timeout_s)
        self.failovers = 0  # sessions resumed after their server was lost

    def __repr__(self) -> str:  # no token here
        return f"PolicyClient({self.address!r})"

    def _count(self, name: str) -> None:
        with self._count_lock:
            setattr(self, name, getattr(self, name) + 1)

    def call(self, method: str, request, *, retry: bool = True, timeout_s: float | None = None):
        """Unary call `method` with the token, a deadline, and retries on transient codes."""
        fn = getattr(self.stub, method)
        attempts = 1 + (self.retries if retry else 0)
        delay = self.backoff_s
        for attempt in range(attempts):
            try:
                return fn(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)
            except grpc.RpcError as e:
                code = e.code()
                if code in RETRY_CODES and attempt + 1 < attempts:
                    log.debug("%s: %s, retrying in %.3f s", method, code.name, delay)
                    self._count("retried")
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise ServerError(method, code, e.details() or "") from None
        raise AssertionError("unreachable")

    def route_elsewhere(self) -> None:
        """Use a new route key from now on: a proxy sends it wherever it likes (the client's
        open sessions follow, by resume, at their next call)."""
        self.route = secrets.token_hex(8)
        self.metadata = ((ROUTE_KEY, self.route), *self.metadata[1:])

    def create(self, request: pb.CreateSessionRequest) -> pb.CreateSessionResponse:
        """CreateSession; a refusal from a draining server moves this client's route key
        first, so that the proxy's stickiness does not bring the retry back to it."""
        for _ in range(8):  # a new key lands on a draining server again with 1/replicas odds
            try:
                return self.call("CreateSession", request, retry=False)
            except ServerError as e:
                if not (e.code == grpc.StatusCode.UNAVAILABLE and DRAINING in e.details):
                    if e.code not in RETRY_CODES:
                        raise
                    break  # another transient failure: the usual retries
                self.route_elsewhere()
        return self.call("CreateSession", request)

    def with_failover(self, sessions: list[Session], send):
        """send() for `sessions`; if their server is gone, resume them all through this
        address (a proxy sends them to a live replica) and send again, until it goes
        through or `failover_timeout_s` has passed."""
        try:
            return send()
        except ServerError as e:
            if not (self.failover and _server_lost(e)):
                raise
            error = e
        deadline = time.monotonic() + self.failover_timeout_s
        delay = self.backoff_s
        while True:
            if sessions:
                log.warning("%s: %s; resuming %d session(s) through %s", error.method,
                            error.code.name, len(sessions), self.address)
            else:
                log.info("%s: %s; trying again through %s", error.method, error.code.name,
                         self.address)
            try:
                for s in sessions:
                    s.resume()
                return send()
            except ServerError as e:
                if not _server_lost(e) or time.monotonic() + delay > deadline:
                    raise
                error = e
            time.sleep(delay)
            delay = min(2 * delay, 1.0)

    def info(self, refresh: bool = False) -> pb.PolicyInfo:
        if self._info is None or refresh:
            self._info = self.call("GetPolicyInfo", pb.GetPolicyInfoRequest())
        return self._info

    def session(self, target_return: float | None = None, model_version: str = "") -> Session:
        """A new episode; `model_version` pins it to that model (FAILED_PRECONDITION from a
        server that does not hold it)."""
        return Session(self, target_return, model_version)

    def sessions(self, n: int, target_return: float | None = None,
                 model_version: str = "") -> SessionBatch:
        return SessionBatch(self, n, target_return, model_version)

    def stream(self, target_return: float | None = None) -> StreamSession:
        return StreamSession(self, target_return)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Session:
    """One episode on the server (Act). Use as a context manager, or call close()."""

    def __init__(self, client: PolicyClient, target_return: float | None = None,
                 model_version: str = ""):
        self.client = client
        self.pinned = model_version  # kept by a resume before the first step too
        req = pb.CreateSessionRequest(model_version=model_version)
        if target_return is not None:
            req.target_return = float(target_return)
        # Through a proxy, a replica that is draining refuses new sessions until the proxy
        # has taken it out (about a second): with failover on, keep asking.
        r = client.with_failover([], lambda: client.create(req))
        # The model the episode runs on, as the server that created it says (a server's
        # version can change between two episodes): a resume elsewhere must find the same
        # one. Servers from before this field answer "", and then hold one model only.
        self.model_version: str = r.model_version or (
            client.info(refresh=True).model_version if client.failover else "")
        self.id: str = r.session_id
        self.target_return: float = r.target_return
        self.context_length: int = r.context_length
        self.idle_timeout_s: int = r.idle_timeout_s
        self.step = 0  # index of the next step to send
        self.return_to_go = r.target_return
        self.total_reward = 0.0  # rewards reported in answered steps, summed as the server does
        self.closed = False
        # What a resume needs: (observation sent, action answered, return-to-go answered) of
        # the last context_length steps.
        self._history: deque = deque(maxlen=max(1, self.context_length))

    def request(self, observation, reward: float = 0.0) -> pb.ActRequest:
        return pb.ActRequest(session_id=self.id, step=self.step,
                             observation=_obs_list(observation), reward=float(reward))

    def _advance(self, r: pb.ActResponse, req: pb.ActRequest) -> np.ndarray:
        if r.step == self.step:  # (not a stored answer to an earlier step)
            if r.step > 0:
                self.total_reward += req.reward
            if self.client.failover:
                self._history.append((req.observation, r.action, r.return_to_go))
        self.step = r.step + 1
        self.return_to_go = r.return_to_go
        return np.asarray(r.action, dtype=np.float32)

    def resume(self) -> None:
        """Go on with this episode in a new server session (its server was lost): through
        CreateSession.resume once a step was answered, as a new session before that. The
        server answers the next step exactly as the lost session would have."""
        req = pb.CreateSessionRequest()
        if self.step == 0:
            req.target_return = self.target_return
            req.model_version = self.pinned
        else:
            req.resume.CopyFrom(pb.ResumeState(
                model_version=self.model_version, next_step=self.step,
                total_reward=self.total_reward,
                history=[pb.StepRecord(observation=o, action=a, return_to_go=g)
                         for o, a, g in self._history]))
        r = self.client.create(req)
        if self.step == 0:  # nothing acted yet: a new episode, on whatever that server runs
            self.model_version = r.model_version or self.model_version
        log.info("session %s resumed at step %d as %s", self.id, self.step, r.session_id)
        self.id = r.session_id
        self.client._count("failovers")

    def act(self, observation, reward: float = 0.0) -> np.ndarray:
        """Send o_t and the reward for the previous action (ignored at step 0); returns a_t."""
        obs = _obs_list(observation)

        def send():  # built anew on each try: a resume changes the session id
            req = pb.ActRequest(session_id=self.id, step=self.step, observation=obs,
                                reward=float(reward))
            return self._send(req), req

        return self._advance(*self.client.with_failover([self], send))

    def _send(self, req: pb.ActRequest) -> pb.ActResponse:
        return self.client.call("Act", req)

    def close(self) -> tuple[int, float]:
        """Close on the server; returns (steps, total reward the server saw)."""
        self.closed = True
        r = self.client.call("CloseSession", pb.CloseSessionRequest(session_id=self.id))
        return r.steps, r.total_reward

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if self.closed:
            return
        try:
            self.close()
        except ServerError as e:
            # An expired session is already gone; and never mask the error that got us here.
            if exc_type is None and e.code != grpc.StatusCode.NOT_FOUND:
                raise
            log.debug("closing session %s: %s", self.id, e)


class SessionBatch:
    """n sessions stepped together with ActBatch, e.g. one per sub-env of a vector env."""

    def __init__(self, client: PolicyClient, n: int, target_return: float | None = None,
                 model_version: str = ""):
        self.client, self.target_return = client, target_return
        self.model_version = model_version
        self.sessions: list[Session] = []
        try:
            for _ in range(n):
                self.sessions.append(Session(client, target_return, model_version))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.sessions)

    def act(self, observations, rewards=None, indices=None) -> np.ndarray:
        """One step for the sessions `indices` (default: all): observations (m, S), rewards
        (m,); returns actions (m, A) in the same order."""
        idx = list(range(len(self.sessions))) if indices is None else list(indices)
        obs = np.asarray(observations, dtype=np.float32).reshape(len(idx), -1)
        rew = np.zeros(len(idx)) if rewards is None else np.asarray(rewards, dtype=np.float64)
        members = [self.sessions[i] for i in idx]

        def send():  # requests built anew: a resume changes session ids
            reqs = [s.request(obs[j], float(rew[j])) for j, s in enumerate(members)]
            return self.client.call("ActBatch", pb.ActBatchRequest(requests=reqs)), reqs

        r, reqs = self.client.with_failover(members, send)
        return np.stack([s._advance(a, q) for s, a, q in zip(members, r.responses, reqs)])

    def reset(self, i: int, target_return: float | None = None) -> Session:
        """Close session i (its episode ended) and start a new one in its place."""
        old = self.sessions[i]
        old.__exit__(None)
        self.sessions[i] = Session(self.client, self.target_return if target_return is None
                                   else target_return, self.model_version)
        return self.sessions[i]

    def close(self) -> None:
        for s in self.sessions:
            s.__exit__(None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_END = object()


class StreamSession(Session):
    """One episode over one ActStream: each act() writes a request and reads its answer. If
    the stream breaks (UNAVAILABLE, DEADLINE_EXCEEDED, or CANCELLED by something on the way),
    the same step is sent again as a unary Act, and the next step opens a new stream."""

    def __init__(self, client: PolicyClient, target_return: float | None = None):
        super().__init__(client, target_return)
        self._open()

    def _open(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._responses = self.client.stub.ActStream(iter(self._q.get, _END),
                                                     metadata=self.client.metadata)

    def _send(self, req: pb.ActRequest) -> pb.ActResponse:
        self._q.put(req)
        try:
            return next(self._responses)
        except grpc.RpcError as e:
            self._open()  # a failed stream is over: the next step goes on a new one
            if e.code() not in RETRY_CODES:
                raise ServerError("ActStream", e.code(), e.details() or "") from None
            # The same step again as a unary Act, with the client's retries (a repeated step
            # gets the answer already given). Unary calls also carry the server's status
            # through a proxy that resets a failed stream instead (HAProxy 2.6: CANCELLED).
            self.client._count("retried")
            return self.client.call("Act", req)

    def close(self) -> tuple[int, float]:
        self._q.put(_END)
        self._responses.cancel()
        return super().close()
