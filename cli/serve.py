"""`vidt serve`: one ONNX policy behind the vidt.v1 gRPC service."""

from __future__ import annotations

import logging
import sys
from dataclasses import fields
from pathlib import Path

import click

from vidt.errors import ConfigError
from vidt.serving.server import ServerConfig

from .options import DiskPath, InputPath

DEFAULTS = {f.name: f.default for f in fields(ServerConfig)}  # the one place they are written


def _read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the token file {path}: {e.strerror}") from None
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


@click.command("serve")
@click.option("--model", type=DiskPath(dir_okay=False), default=None,
              help="Exported policy (vidt export). With --model-repo, this file is the "
                   "current version and the repository serves resumes and pins of others.")
@click.option("--model-repo", type=DiskPath(file_okay=False), default=None,
              help="Model repository: a directory of exported files and a pointer naming the "
                   "current version and a canary (`vidt models`). Without --model, the server "
                   "follows the pointer, rereading it on SIGHUP and every few seconds: new "
                   "sessions get the new version, open episodes finish on theirs. An episode "
                   "begun on any version in DIR can resume here.")
@click.option("--max-versions", type=click.IntRange(min=1), default=DEFAULTS["max_versions"],
              show_default=True,
              help="Model versions resident at once; loading one more while all are in use "
                   "is refused (RESOURCE_EXHAUSTED), never by evicting one.")
@click.option("--host", default=DEFAULTS["host"], show_default=True,
              help="Address to listen on. Beyond loopback needs TLS or a token (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULTS["port"], show_default=True,
              envvar="VIDT_PORT", show_envvar=True,
              help="Port to listen on (0: any free one). The image's HEALTHCHECK reads the "
                   "same VIDT_PORT.")
@click.option("--max-sessions", type=click.IntRange(min=1), default=DEFAULTS["max_sessions"],
              show_default=True,
              help="Open sessions at most; more get RESOURCE_EXHAUSTED.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULTS["idle_timeout_s"],
              show_default=True, help="Seconds after which an idle session is freed.")
@click.option("--max-batch", type=click.IntRange(min=1), default=DEFAULTS["max_batch"],
              show_default=True,
              help="Windows per onnxruntime call (1 turns batching off).")
@click.option("--batch-window-us", type=click.IntRange(min=0), default=DEFAULTS["batch_window_us"],
              show_default=True,
              help="Longest wait for a batch to fill, used only under concurrent load.")
@click.option("--threads", type=click.IntRange(min=1), default=DEFAULTS["threads"],
              show_default=True,
              help="gRPC worker threads = concurrent calls (each open ActStream holds one).")
@click.option("--transport", type=click.Choice(ServerConfig.TRANSPORTS),
              default=DEFAULTS["transport"], show_default=True,
              help="threads: a worker thread per call; pick it for one client or a few, "
                   "where it answers soonest. asyncio: every call a task on one event loop "
                   "(grpc.aio); pick it for many sessions stepping at once (a fleet, vector "
                   "envs), where it serves more steps/s; --threads and --batch-window-us do "
                   "not apply to it. Measurements: benchmarks/RESULTS.md.")
@click.option("--ort-threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime intra-op threads  [default: onnxruntime's choice]")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve HTTP on this port (same --host): /metrics in Prometheus' "
                   "format, and /ready for readiness probes: 200 while serving, 503 until the "
                   "model has answered its warm-up call and again while draining after "
                   "SIGTERM/SIGINT.")
@click.option("--tls-cert", type=InputPath(dir_okay=False), default=None,
              help="PEM certificate chain (with --tls-key).")
@click.option("--tls-key", type=InputPath(dir_okay=False), default=None,
              help="PEM private key.")
@click.option("--auth-token-file", type=DiskPath(dir_okay=False), default=None,
              help="File holding the bearer token every call must carry.")
@click.option("--insecure", is_flag=True,
              help="Allow a non-loopback --host without TLS or token.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="onnxruntime execution provider.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True,
              help="info logs start-up, shutdown and each session opened, closed or expired; "
                   "errors are logged at every level.")
@click.option("--grace", type=click.FloatRange(min=0), default=DEFAULTS["grace_s"],
              show_default=True,
              help="Seconds open episodes get to finish after SIGTERM/SIGINT.")
def serve(model, model_repo, max_versions, host, port, max_sessions, idle_timeout, max_batch, batch_window_us, threads,
          transport, ort_threads, metrics_port, tls_cert, tls_key, auth_token_file, insecure, provider,
          log_level, grace):
    """Serve an ONNX policy over gRPC until SIGTERM/SIGINT (then drain and exit 0).

    \b
    Example:
      vidt serve --model policy.onnx --port 50051
      vidt serve --model policy.onnx --transport asyncio   # many robots at once
      vidt serve --model-repo models/   # follows `vidt models promote models/ new.onnx`
      grpcurl -plaintext 127.0.0.1:50051 list

    \b
    Signals:
      SIGTERM, SIGINT  drain (no new sessions, open ones get --grace), then exit 0
      SIGHUP           reread the model repository's pointer now
      SIGUSR1          take no new sessions, keep serving the open ones, and log
                       "drained" when the last one ends (then stop it: nothing is lost)
    """
    from vidt.serving.server import serve as run

    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if model is None and model_repo is None:
        raise click.UsageError("give --model FILE, --model-repo DIR, or both")
    token = _read_token(auth_token_file)  # an unreadable file is the file's problem: exit 1
    try:
        config = ServerConfig(
            host=host, port=port, max_sessions=max_sessions, idle_timeout_s=idle_timeout,
            max_batch=max_batch, batch_window_us=batch_window_us, threads=threads,
            metrics_port=metrics_port, tls_cert=tls_cert, tls_key=tls_key, auth_token=token,
            insecure=insecure, grace_s=grace, transport=transport, max_versions=max_versions)
    except ConfigError as e:  # made of the options alone: options that do not go together
        raise click.UsageError(str(e)) from None
    code = run(model, config, provider=provider, ort_threads=ort_threads, model_repo=model_repo)
    if code:
        sys.exit(code)
