"""N `vidt serve` replicas of one model behind HAProxy, on this machine's loopback: for trying
the many-robots setup on one machine, and for the tests that kill replicas under load.

    python deploy/haproxy/replicas.py --model policy.onnx -n 3 --port 50051 \
        --workdir runs/replicas [-- SERVE_OPTIONS...]
    python deploy/haproxy/replicas.py --model-repo models/ -n 3    # one shared repository
    vidt eval --server 127.0.0.1:50051 --episodes 10     # in another shell
    python deploy/haproxy/replicas.py admin runs/replicas/haproxy.sock "show stat"

The options after `--` go to every `vidt serve` (e.g. `-- --auth-token-file token.txt`).
With `--model-repo DIR` every replica follows DIR's pointer (`vidt models promote DIR FILE`
upgrades the fleet, `vidt models rollback DIR` goes back) and any replica can resume an
episode on any version in DIR; with both `--model` and `--model-repo`, each replica serves the
file and loads other versions from DIR only for resumes.
`admin SOCKET COMMAND` sends one command to HAProxy's admin socket (what `socat` would).

The proxy's configuration is deploy/haproxy/haproxy.cfg with its bind, server and socket lines
rewritten for the ports chosen here; nothing else changes. Ctrl-C stops everything. Needs
`haproxy` (2.6 or newer) on the PATH: `apt-get install haproxy` on Debian and Ubuntu.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from vidt.procs import with_parent  # replicas and proxy end with this launcher

CONFIG = Path(__file__).with_name("haproxy.cfg")
BACKEND = "vidt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template: str, proxy_port: int, replicas: list[tuple[int, int]],
           admin_socket: str) -> str:
    """haproxy.cfg for proxy_port and replicas [(grpc_port, metrics_port)], all on 127.0.0.1;
    every other line as written."""
    out = []
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("server "):
            continue  # replaced below, after the backend's last line
        if stripped.startswith("bind "):
            line = re.sub(r"\S+:\d+", f"127.0.0.1:{proxy_port}", line, count=1)
        elif stripped.startswith("stats socket "):
            line = re.sub(r"stats socket \S+", f"stats socket {admin_socket}", line)
        out.append(line)
    out += [f"    server r{i + 1} 127.0.0.1:{g} proto h2 check-proto h1 port {m}"
            for i, (g, m) in enumerate(replicas)]
    return "\n".join(out) + "\n"


class Replica:
    """One `vidt serve` process; restart() brings it back on the same ports."""

    def __init__(self, name: str, model: str | None, log_dir: Path, args: list[str]):
        self.name, self.model, self.log_dir, self.args = name, model, log_dir, args
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, model: str | None = None) -> Replica:
        """Start (again) on the same ports; on `model` from now on when given."""
        self.model = model or self.model
        self.starts += 1
        log = open(self.log_dir / f"{self.name}-{self.starts}.log", "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "vidt.cli.main", "serve",
               *(("--model", self.model) if self.model else ()),
               "--port", str(self.port), "--metrics-port", str(self.metrics_port), *self.args]
        self.proc = subprocess.Popen(with_parent(cmd), stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()  # the child holds its own descriptor
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/ready",
                                        timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> Replica:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited with {self.proc.returncode}; "
                                   f"see {self.log_dir}")
            if self.ready():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"replica {self.name} not ready after {timeout:g} s")

    def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics, e.g. 'vidt_active_sessions'."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Replicas:
    """n replicas and one HAProxy in front of them; a context manager that leaves nothing
    running. `address` is the proxy's."""

    def __init__(self, model: str | Path | None, n: int = 3, *, port: int = 0,
                 serve_args: tuple[str, ...] = ("--ort-threads", "1"),
                 workdir: str | Path | None = None, model_repo: str | Path | None = None):
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is not on the PATH (Debian/Ubuntu: apt-get install "
                               "haproxy)")
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="vidt-replicas-")
        self.dir = Path(workdir or self._tmp.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        if model is None and model_repo is None:
            raise ValueError("give a model, a model repository, or both")
        repo_args = ["--model-repo", str(Path(model_repo).resolve())] if model_repo else []
        self.replicas = [Replica(f"r{i + 1}", str(model) if model else None, self.dir,
                                 [*repo_args, *serve_args]) for i in range(n)]
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.admin_socket = str(self.dir.resolve() / "haproxy.sock")  # haproxy: absolute
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(render(CONFIG.read_text(), self.port,
                                      [(r.port, r.metrics_port) for r in self.replicas],
                                      self.admin_socket))
        self.haproxy: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Replicas:
        try:
            for r in self.replicas:
                r.start()
            for r in self.replicas:
                r.wait_ready(timeout)
            log = open(self.dir / "haproxy.log", "w")  # noqa: SIM115
            self.haproxy = subprocess.Popen(with_parent(["haproxy", "-db", "-f",
                                                         str(self.config)]),
                                            stdout=log, stderr=subprocess.STDOUT)
            log.close()
            self.wait_up([r.name for r in self.replicas], timeout)
        except BaseException:
            self.stop()
            raise
        return self

    # ---- HAProxy's admin socket -------------------------------------------------------------
    def admin(self, command: str) -> str:
        return admin(self.admin_socket, command)

    def states(self) -> dict[str, str]:
        """Replica name -> HAProxy's view: 'UP', 'DOWN', 'DRAIN', 'MAINT', ..."""
        lines = self.admin("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == BACKEND and row.get("svname", "").startswith("r"):
                out[row["svname"]] = row["status"]
        return out

    def stuck(self) -> dict[str, str]:
        """Route key -> the replica the stick table sends it to."""
        ids = {}
        for line in self.admin("show servers state " + BACKEND).splitlines()[2:]:
            parts = line.split()
            if len(parts) > 3:
                ids[parts[2]] = parts[3]  # srv_id -> srv_name
        out = {}
        for line in self.admin("show table " + BACKEND).splitlines():
            key = re.search(r"\bkey=(\S+)", line)
            sid = re.search(r"\bserver_id=(\d+)", line)
            if key and sid:
                out[key.group(1)] = ids.get(sid.group(1), sid.group(1))
        return out

    def wait_up(self, names: list[str], timeout: float = 30.0) -> None:
        """Until HAProxy's checks see each of `names` UP."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.haproxy is not None and self.haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited: {(self.dir / 'haproxy.log').read_text()}")
            try:
                states = self.states()
                if all(states.get(n) == "UP" for n in names):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"replicas {names} not UP in HAProxy after {timeout:g} s")

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.states().get(name) != state:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not {state} in HAProxy after {timeout:g} s: "
                                   f"{self.states()}")
            time.sleep(0.05)

    def restart(self, i: int, timeout: float = 60.0, model: str | Path | None = None) -> Replica:
        """Start replica i again on its ports (after it was killed or stopped), on `model`
        when given, and wait until HAProxy sees it UP. A state set through the admin socket
        (drain, maint) outlives the process in HAProxy: the new process is put back in
        rotation."""
        r = self.replicas[i]
        r.stop()
        r.start(None if model is None else str(model)).wait_ready(timeout)
        self.admin(f"set server {BACKEND}/{r.name} state ready")
        self.wait_up([r.name], timeout)
        return r

    def supervise_once(self, log=print) -> list[str]:
        """Restart every replica whose process has exited; one that fails to come back is
        reported (and tried again on the next call), never a reason to stop the others.
        Returns the names that are still down."""
        down = []
        for i, r in enumerate(self.replicas):
            if r.proc is not None and r.proc.poll() is None:
                continue
            log(f"{r.name} exited ({r.proc.returncode if r.proc else 'never started'}); "
                "restarting")
            try:
                self.restart(i)
            except RuntimeError as e:
                log(f"{r.name} did not come back: {e}")
                down.append(r.name)
        return down

    def stop(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
        for r in self.replicas:
            r.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Replicas:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def admin(socket_path: str, command: str) -> str:
    """One command to HAProxy's admin socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(socket_path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["admin"]:
        if len(argv) != 3:
            print("usage: replicas.py admin SOCKET COMMAND", file=sys.stderr)
            return 2
        try:
            print(admin(argv[1], argv[2]), end="")
        except OSError as e:
            print(f"error: {argv[1]}: {e.strerror or e}", file=sys.stderr)
            return 1
        return 0
    serve_args = ["--ort-threads", "1"]
    if "--" in argv:
        cut = argv.index("--")
        argv, serve_args = argv[:cut], serve_args + argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the exported policy.onnx every replica serves")
    p.add_argument("--model-repo", help="a model repository every replica follows (vidt models)")
    p.add_argument("-n", type=int, default=3, help="replicas (default 3)")
    p.add_argument("--port", type=int, default=50051, help="the proxy's port (default 50051)")
    p.add_argument("--workdir", default=None,
                   help="where the generated haproxy.cfg and the logs go (default: a temp dir)")
    a = p.parse_args(argv)
    if a.model is None and a.model_repo is None:
        p.error("give --model FILE, --model-repo DIR, or both")
    if a.model is not None and not Path(a.model).is_file():
        p.error(f"--model {a.model}: no such file")
    if a.model_repo is not None and not Path(a.model_repo).is_dir():
        p.error(f"--model-repo {a.model_repo}: no such directory")
    if a.n < 1:
        p.error("-n must be >= 1")
    try:
        cluster = Replicas(a.model, a.n, port=a.port, workdir=a.workdir,
                           serve_args=tuple(serve_args), model_repo=a.model_repo).start()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stop = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.append(1))
    try:
        print(f"HAProxy on {cluster.address}; replicas:")
        for r in cluster.replicas:
            print(f"  {r.name}: grpc {r.address}, metrics and readiness "
                  f"http://127.0.0.1:{r.metrics_port}/ready (pid {r.proc.pid})")
        print(f"config and logs in {cluster.dir}; admin socket {cluster.admin_socket}\n"
              "Ctrl-C stops all.", flush=True)
        while not stop:
            down = cluster.supervise_once(lambda msg: print(msg, flush=True))
            time.sleep(5.0 if down else 0.5)  # a replica that will not start: try less often
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
