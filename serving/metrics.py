"""Prometheus metrics of one server, in a registry of its own (several servers can live in one
process, e.g. in tests, without clashing in prometheus-client's global registry).

    vidt_requests_total{method,code}     every RPC, by gRPC method and status code
    vidt_errors_total{method,code}       the RPCs that did not end OK
    vidt_act_latency_seconds             time in the server per Act / ActBatch / stream step
    vidt_batch_size                      rows per onnxruntime call
    vidt_active_sessions                 open sessions (read from the store at scrape time)
    vidt_draining                        1 while new sessions are refused (SIGUSR1, SIGTERM)
    vidt_sessions_created_total, vidt_sessions_resumed_total, vidt_sessions_expired_total,
    vidt_sessions_closed_total
    vidt_version_sessions{version,role}  open sessions per model version held (role: current,
                                         canary or old)
    vidt_version_sessions_created_total{version}, vidt_version_steps_total{version}
    vidt_episode_return{version}         total reward of each closed session (its client's
                                         reports), per version: _sum / _count is the mean
    vidt_model_events_total{event,version}  versions loaded, refused and unloaded

The same port answers GET /ready: 200 while the server is SERVING, 503 while loading or
draining.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, Summary, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Act latency on a loopback CPU server is ~0.1-1 ms; a GPU batch of 64 a few ms.
LATENCY_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up shutdown


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # a probe every second would flood the log
        pass


class _StoreCollector:
    """Session gauges and counters read from the SessionStore when scraped, so the store stays
    free of metrics code."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        s = self.store
        g = GaugeMetricFamily("vidt_active_sessions", "Open sessions.")
        g.add_metric([], s.active)
        yield g
        g = GaugeMetricFamily("vidt_draining", "1 while new sessions are refused (SIGUSR1, "
                              "SIGTERM).")
        g.add_metric([], int(s.draining))
        yield g
        for name, value, doc in (
            ("vidt_sessions_created", s.created_total, "Sessions created (resumed included)."),
            ("vidt_sessions_resumed", s.resumed_total,
             "Sessions that went on with an episode begun elsewhere (CreateSession.resume)."),
            ("vidt_sessions_closed", s.closed_total, "Sessions closed by their client."),
            ("vidt_sessions_expired", s.expired_total, "Sessions freed after idling too long."),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        models = s.models()
        g = GaugeMetricFamily("vidt_version_sessions", "Open sessions per model version held.",
                              labels=["version", "role"])
        created = CounterMetricFamily("vidt_version_sessions_created",
                                      "Sessions created per model version held.",
                                      labels=["version"])
        steps = CounterMetricFamily("vidt_version_steps", "Steps answered per model version "
                                    "held.", labels=["version"])
        for m in models:
            role = ("current" if m is s.current else "canary" if m is s.canary else "old")
            g.add_metric([m.version, role], m.sessions)
            created.add_metric([m.version], m.created)
            steps.add_metric([m.version], m.steps)
        yield from (g, created, steps)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("vidt_requests", "RPCs by method and status code.",
                                ["method", "code"], registry=r)
        self.errors = Counter("vidt_errors", "RPCs that did not end OK, by method and code.",
                              ["method", "code"], registry=r)
        self.act_latency = Histogram("vidt_act_latency_seconds",
                                     "Server time per Act call (and per ActBatch call, per "
                                     "stream step).", ["method"], buckets=LATENCY_BUCKETS,
                                     registry=r)
        self.batch_size = Histogram("vidt_batch_size", "Windows per onnxruntime call.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.episode_return = Summary("vidt_episode_return", "Total reward of each closed "
                                      "session, per model version.", ["version"], registry=r)
        self.model_events = Counter("vidt_model_events", "Model versions loaded, refused "
                                    "and unloaded.", ["event", "version"], registry=r)
        self._http = None

    def watch_store(self, store) -> None:
        self.registry.register(_StoreCollector(store))

    def record(self, method: str, code: str) -> None:
        self.requests.labels(method, code).inc()
        if code != "OK":
            self.errors.labels(method, code).inc()

    def serve(self, port: int, host: str = "127.0.0.1",
              ready: Callable[[], bool] | None = None) -> int:
        """Serve over HTTP on host:port (0 = any free port); returns the port.
        /metrics (and any other path): Prometheus' text format. /ready: 200 while ready()
        (the server is SERVING), 503 otherwise: a readiness probe for proxies that cannot
        speak gRPC health (HAProxy 2.6) and for Kubernetes."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") != "/ready":
                return metrics_app(environ, start_response)
            ok = ready is not None and ready()
            body = b"SERVING\n" if ok else b"NOT_SERVING\n"
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
            return [body]

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_HTTPServer", (_ThreadingWSGIServer,), {"address_family": family})
        server = make_server(host.strip("[]"), port, app, server_class, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, name="vidt-metrics", daemon=True).start()
        self._http = server
        return server.server_address[1]

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
