"""`make image-fleet-smoke`: the Kubernetes manifests (deploy/kubernetes/) run on this machine
with `podman kube play`, and a model promoted under running episodes.

    python scripts/fleet_smoke.py [--engine podman] [--image vidt-serve:cpu] \
        [--haproxy-image vidt-haproxy:bookworm] [-n 3] [--run-flags "..."] [--keep]

What is played is made from the real manifests, changed only where one machine differs from
a cluster: each replica of the vidt-serve Deployment becomes a pod on the host's network with
its own loopback address (127.x.y.1, .2, ...: what pod addresses are on a cluster), all on
the same gRPC and metrics ports; the model repository's volume and the token's Secret become
host directories; the HAProxy Deployment runs the ConfigMap's haproxy.cfg with only its
nameserver and listening addresses changed, and a stand-in for the cluster's DNS (in this
script, on 127.0.0.1) answers the headless Service's name with the replicas' addresses, so
HAProxy's server-template fills its slots as on a cluster. Probes are left out (kube play
runs none here): this script asks /ready and the gRPC health service itself. Nothing listens
beyond 127.0.0.0/8.

Then: every replica ready (start-to-SERVING timed from `kube play`), HAProxy sees each UP in
a server-template slot, robots run episodes through the proxy (token and route key as a
client sends them) and spread over every replica, `vidt models promote` on the repository's
directory switches every replica (GetPolicyInfo asked of each) while episodes run, episodes
begun after the switch run the new version, none fails, and `podman kube down` after a stop
finds every replica drained and exited 0. One line per check; exit status 1 on the first
failure, with the containers' logs.

`podman kube play` has no flags for the runtime or limits: --run-flags (the same as
image-smoke's, e.g. "--runtime runc --ulimit nofile=20000:20000") are written into a
containers.conf that the engine reads through CONTAINERS_CONF (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import secrets
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import image_smoke  # noqa: E402  (scripts/: its engine checks and helpers)
from image_smoke import GID, VIDT, Failed, sh  # noqa: E402

MANIFESTS = ROOT / "deploy" / "kubernetes"
SERVICE_NAME = "vidt-serve.vidt.svc.cluster.local"  # the headless Service (haproxy.yaml)
STEPS = 40  # steps per episode


# ---- the manifests, made local ----------------------------------------------------------------
def _docs(name: str) -> list[dict]:
    import yaml  # PyYAML: the dev install has it (through Ray)

    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        raise Failed(f"deploy/kubernetes: expected one {kind} {name}, found {len(found)}")
    return copy.deepcopy(found[0])


def _set_arg(args: list[str], flag: str, value: str) -> list[str]:
    """args with `flag=value` (replacing `flag=...` or `flag ...` when present)."""
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == flag:
            skip = i + 1 < len(args)
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return [*out, f"{flag}={value}"]


def _local_pod(name: str, spec: dict, image: str | None) -> dict:
    spec = copy.deepcopy(spec)
    spec["hostNetwork"] = True
    spec["restartPolicy"] = "Never"  # a replica that dies stays dead: the smoke should see it
    for c in spec["containers"]:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            c.pop(probe, None)
        # On the host's network nothing is published (podman 4.3 refuses port mappings
        # there); the ports are the ones the arguments name.
        c.pop("ports", None)
        if image:
            c["image"] = image
        c["imagePullPolicy"] = "Never"  # images of this machine's only
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "vidt-smoke"}},
            "spec": spec}


def haproxy_config(cfg: str, *, dns_port: int, proxy: str, monitor: str, grpc_port: int,
                   metrics_port: int) -> str:
    """The ConfigMap's haproxy.cfg with the cluster's DNS replaced by 127.0.0.1:dns_port, the
    binds on loopback, and the replicas' gRPC and check ports; every other line as
    written."""
    out = []
    for line in cfg.splitlines():
        s = line.strip()
        if s == "parse-resolv-conf":
            line = line.replace(s, f"nameserver local 127.0.0.1:{dns_port}")
        elif s.startswith("bind :50051"):
            line = line.replace("bind :50051", f"bind {proxy}")
        elif s.startswith("bind :8404"):
            line = line.replace("bind :8404", f"bind {monitor}")
        elif s.startswith("server-template "):
            if f"{SERVICE_NAME}:50051" not in s:
                raise Failed(f"haproxy.yaml's server-template is not as expected: {s}")
            line = line.replace(f"{SERVICE_NAME}:50051", f"{SERVICE_NAME}:{grpc_port}")
        elif s.startswith("http-check connect ") and " port 9090" in s:
            line = line.replace(" port 9090", f" port {metrics_port}")
        out.append(line)
    return "\n".join(out) + "\n"


def local_fleet(*, hosts: list[str], grpc_port: int, metrics_port: int, models: Path,
                secrets_dir: Path, dns_port: int, proxy: str, monitor: str,
                image: str | None = None, haproxy_image: str | None = None) -> list[dict]:
    """The kube-play YAML's documents, from deploy/kubernetes/: one pod per replica address in
    `hosts`, HAProxy's ConfigMap and pod."""
    serve = _one(_docs("vidt-serve.yaml"), "Deployment", "vidt-serve")
    hap_docs = _docs("haproxy.yaml")
    config_map = _one(hap_docs, "ConfigMap", "vidt-haproxy")
    hap = _one(hap_docs, "Deployment", "vidt-haproxy")
    out = []
    for i, host in enumerate(hosts):
        pod = _local_pod(f"vidt-serve-{i + 1}", serve["spec"]["template"]["spec"], image)
        c = pod["spec"]["containers"][0]
        args = _set_arg(c["args"], "--host", host)
        c["args"] = _set_arg(args, "--metrics-port", str(metrics_port))
        c["env"] = [e for e in c.get("env", []) if e["name"] != "VIDT_PORT"] + [
            {"name": "VIDT_PORT", "value": str(grpc_port)}]
        for v in pod["spec"]["volumes"]:
            if "persistentVolumeClaim" in v:  # the repository: a directory of this machine
                v.pop("persistentVolumeClaim")
                v["hostPath"] = {"path": str(models), "type": "Directory"}
            elif "secret" in v:  # the token: a directory holding vidt_token
                v.pop("secret")
                v["hostPath"] = {"path": str(secrets_dir), "type": "Directory"}
        out.append(pod)
    config_map["metadata"].pop("namespace", None)
    config_map["data"]["haproxy.cfg"] = haproxy_config(
        config_map["data"]["haproxy.cfg"], dns_port=dns_port, proxy=proxy, monitor=monitor,
        grpc_port=grpc_port, metrics_port=metrics_port)
    out.append(config_map)
    pod = _local_pod("vidt-haproxy", hap["spec"]["template"]["spec"], haproxy_image)
    # The image's own haproxy user (Debian's uid is not the haproxy image's 99).
    for key in ("runAsUser", "runAsGroup"):
        pod["spec"].get("securityContext", {}).pop(key, None)
    out.append(pod)
    return out


# ---- a stand-in for the cluster's DNS ---------------------------------------------------------
class DnsStandIn(threading.Thread):
    """Answers A queries for one name with a list of addresses (what a headless Service's
    name resolves to), NXDOMAIN for any other name, on a UDP port of 127.0.0.1."""

    def __init__(self, name: str, addresses: list[str]):
        super().__init__(name="dns-stand-in", daemon=True)
        self.name, self.addresses = name.lower().rstrip("."), list(addresses)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._done = threading.Event()

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 17:
            return None
        qid, flags, qdcount = struct.unpack(">HHH", query[:6])
        if qdcount != 1 or flags & 0x8000:
            return None
        i, labels = 12, []
        while i < len(query) and query[i]:
            n = query[i]
            labels.append(query[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        end = i + 5
        if end > len(query):
            return None
        qtype, _qclass = struct.unpack(">HH", query[i + 1:end])
        known = ".".join(labels).lower() == self.name
        answers = [b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 1, 4) + socket.inet_aton(a)
                   for a in self.addresses] if known and qtype == 1 else []
        # QR, AA, the query's RD, RA; NXDOMAIN (3) for a name we do not hold.
        reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | (0 if known else 3)
        header = struct.pack(">HHHHHH", qid, reply_flags, 1, len(answers), 0, 0)
        return header + query[12:end] + b"".join(answers)

    def run(self) -> None:
        while not self._done.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(data)
            if reply is not None:
                self.queries += 1
                self.sock.sendto(reply, peer)

    def stop(self) -> None:
        self._done.set()
        self.join(2)
        self.sock.close()


# ---- the engine ---------------------------------------------------------------------------------
def containers_conf(run_flags: list[str]) -> str:
    """image-smoke's run flags (--runtime R, --ulimit NAME=SOFT:HARD) as a containers.conf,
    for `podman kube play`, which takes neither flag."""
    runtime, ulimits, rest = None, [], list(run_flags)
    while rest:
        flag = rest.pop(0)
        name, eq, value = flag.partition("=")
        if not eq:
            if not rest:
                raise Failed(f"run flag {flag} needs a value")
            value = rest.pop(0)
        if name == "--runtime":
            runtime = value
        elif name == "--ulimit":
            ulimits.append(value)
        else:
            raise Failed(f"podman kube play has no equivalent of the run flag {name}: only "
                         "--runtime and --ulimit can be passed (through containers.conf)")
    lines = []
    if ulimits:
        lines += ["[containers]", "default_ulimits = " + json.dumps(ulimits)]
    if runtime:
        lines += ["[engine]", f"runtime = {json.dumps(runtime)}"]
    return "\n".join(lines) + "\n"


class Engine:
    def __init__(self, engine: str, conf: Path | None):
        self.engine = engine
        self.env = {**os.environ, **({"CONTAINERS_CONF": str(conf)} if conf else {})}

    def run(self, *args: str, check: bool = True, timeout: float = 300):
        p = subprocess.run([self.engine, *args], capture_output=True, text=True,
                           timeout=timeout, env=self.env)
        if check and p.returncode != 0:
            err = "\n".join(ln for ln in p.stderr.strip().splitlines() if "level=" not in ln)
            raise Failed(f"{self.engine} {shlex.join(args)} exited {p.returncode}: "
                         f"{err[-2000:]}")
        return p


# ---- loopback addresses and ports ---------------------------------------------------------------
def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def pick_hosts_and_ports(n: int) -> tuple[list[str], int, int]:
    """n loopback addresses 127.a.b.1..n and two ports free on every one of them."""
    rnd = random.Random()
    for _ in range(50):
        a, b = rnd.randrange(100, 250), rnd.randrange(1, 250)
        hosts = [f"127.{a}.{b}.{i + 1}" for i in range(n)]
        g, m = image_smoke.free_port(), image_smoke.free_port()
        if g != m and all(_bindable(h, p) for h in hosts for p in (g, m)):
            return hosts, g, m
    raise Failed("found no loopback addresses with two free ports")


# ---- checks ---------------------------------------------------------------------------------------
def _ready(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=1) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def haproxy_states(monitor: str) -> dict[str, str]:
    """Server slot -> HAProxy's state ('UP', 'DOWN', 'MAINT', ...), from its stats page."""
    with urllib.request.urlopen(f"http://{monitor}/stats;csv", timeout=2) as r:
        lines = r.read().decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") == "vidt" and row.get("svname") not in ("FRONTEND", "BACKEND"):
            out[row["svname"]] = " ".join(x for x in (
                row["status"], row.get("addr", ""), row.get("check_status", ""),
                row.get("last_chk", "")) if x)
    return out


class Replicas:
    """One channel to each replica, straight (not through the proxy), for GetPolicyInfo."""

    def __init__(self, addresses: list[str], token: str):
        from vidt.serving.client import PolicyClient

        self.clients = {a: PolicyClient(a, token=token, failover=False) for a in addresses}

    def version(self, address: str) -> str:
        return self.clients[address].info(refresh=True).model_version

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def metric(host: str, port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


class Robots:
    """Robots on threads, each its own PolicyClient (route key robot-i) through the proxy,
    running STEPS-step episodes until stopped. done: (robot, version, began, ended)."""

    def __init__(self, address: str, token: str, n: int, obs_dim: int):
        self.address, self.token, self.obs_dim = address, token, obs_dim
        self.done: list[tuple[int, str, float, float]] = []
        self.errors: list[str] = []
        self.failovers = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]

    def _run(self, i: int) -> None:
        import numpy as np

        from vidt.serving.client import PolicyClient

        rng = np.random.default_rng(i)
        try:
            with PolicyClient(self.address, token=self.token, route=f"robot-{i}") as c:
                while not self.stop.is_set():
                    began = time.monotonic()
                    with c.session() as s:
                        for _ in range(STEPS):
                            s.act(rng.normal(size=self.obs_dim), float(rng.normal()))
                        steps, _ = s.close()
                    if steps != STEPS:
                        raise Failed(f"robot {i}: the server saw {steps} steps of {STEPS}")
                    with self.lock:
                        self.done.append((i, s.model_version, began, time.monotonic()))
                with self.lock:
                    self.failovers += c.failovers
        except Exception as e:  # noqa: BLE001  every failure is reported, none lost
            with self.lock:
                self.errors.append(f"robot {i}: {type(e).__name__}: {e}")

    def start(self) -> Robots:
        for t in self.threads:
            t.start()
        return self

    def episodes_after(self, t: float) -> dict[int, list[str]]:
        with self.lock:
            out: dict[int, list[str]] = {}
            for i, v, began, _ in self.done:
                if began > t:
                    out.setdefault(i, []).append(v)
            return out

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def _until(what: str, cond, timeout: float, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not after {timeout:g} s")
        time.sleep(poll)


# ---- the smoke ------------------------------------------------------------------------------------
def export_versions(out: Path) -> list[Path]:
    """Two versions of an untrained Decision Transformer for Pendulum-v1 (seeds 0 and 1), by
    vidt's exporter (tests/serving_util.py's helper, as `make soak` uses it)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from serving_util import make_dt_onnx

    return [make_dt_onnx(out / f"policy-v{s + 1}.onnx", obs_dim=3, act_dim=1, K=4,
                         eval_len=4, env_id="Pendulum-v1", act_bound=2.0, seed=s)
            for s in (0, 1)]


def vidt_models(*args: str) -> dict:
    r = sh(VIDT, "models", *args, "--json")
    return json.loads(r.stdout)


def smoke(engine: str, image: str, haproxy_image: str, run_flags: list[str], n: int = 3,
          robots: int = 6, log=print, keep: bool = False) -> dict:
    """Returns the figures measured (seconds): kube_play, ready (per replica), haproxy_up,
    switch."""
    work = Path(tempfile.mkdtemp(prefix="vidt-fleet-smoke-"))
    os.chmod(work, 0o755)  # the containers' users read the repository and the token below
    models, secrets_dir, files = work / "models", work / "secrets", work / "files"
    for d in (models, secrets_dir, files):
        d.mkdir()
        os.chmod(d, 0o755)
    conf = None
    if run_flags:
        conf = work / "containers.conf"
        conf.write_text(containers_conf(run_flags))
    eng = Engine(engine, conf)
    token = secrets.token_urlsafe(24)
    tok = secrets_dir / "vidt_token"
    tok.write_text(token + "\n")
    # SECURITY.md's recipe: readable by the image's group (gid 10001), by nobody else.
    os.chmod(tok, 0o640)
    if os.geteuid() == 0:
        os.chown(tok, 0, GID)
    else:
        os.chmod(tok, 0o644)  # a rootless engine maps ids: see SECURITY.md
    v1_file, v2_file = export_versions(files)
    v1 = vidt_models("promote", str(models), str(v1_file))["after"]["current"]
    hosts, grpc_port, metrics_port = pick_hosts_and_ports(n)
    proxy = f"127.0.0.1:{image_smoke.free_port()}"
    monitor = f"127.0.0.1:{image_smoke.free_port()}"
    dns = DnsStandIn(SERVICE_NAME, hosts)
    docs = local_fleet(hosts=hosts, grpc_port=grpc_port, metrics_port=metrics_port,
                       models=models, secrets_dir=secrets_dir, dns_port=dns.port, proxy=proxy,
                       monitor=monitor, image=image, haproxy_image=haproxy_image)
    played = work / "fleet.yaml"
    import yaml

    played.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    names = [d["metadata"]["name"] for d in docs if d["kind"] == "Pod"]
    containers = [f"{d['metadata']['name']}-{c['name']}" for d in docs if d["kind"] == "Pod"
                  for c in d["spec"]["containers"]]
    figures: dict = {}
    dns.start()
    try:
        t0 = time.monotonic()
        ready: dict[str, float] = {}
        watching = threading.Event()

        def watch_ready():  # from the moment kube play starts, every 50 ms
            while not watching.is_set() and len(ready) < n:
                for h in hosts:
                    if h not in ready and _ready(h, metrics_port):
                        ready[h] = time.monotonic() - t0
                time.sleep(0.05)

        watcher = threading.Thread(target=watch_ready, daemon=True)
        watcher.start()
        try:
            eng.run("kube", "play", str(played), timeout=600)
            figures["kube_play"] = time.monotonic() - t0
            log(f"ok: podman kube play {', '.join(names)} in {figures['kube_play']:.1f} s "
                f"(replicas on {', '.join(hosts)} port {grpc_port}, metrics {metrics_port})")
            _until("every replica's /ready", lambda: len(ready) == n, 120)
        finally:
            watching.set()
            watcher.join(5)
        figures["ready"] = dict(ready)
        log("ok: every replica ready (start-to-SERVING from kube play's start: "
            + ", ".join(f"{ready[h]:.1f} s" for h in hosts) + ")")
        direct = Replicas([f"{h}:{grpc_port}" for h in hosts], token)
        for h in hosts:
            if (got := direct.version(f"{h}:{grpc_port}")) != v1:
                raise Failed(f"replica {h} serves {got}, not {v1}")
        seen: dict[str, str] = {}

        def all_up():
            seen.update(haproxy_states(monitor))
            return sum(v.startswith("UP") for v in seen.values()) == n

        try:
            _until("HAProxy sees every replica UP", all_up, 60, 0.2)
        except Failed as e:
            raise Failed(f"{e}: {seen}") from None
        up = dict(seen)
        figures["haproxy_up"] = time.monotonic() - t0
        slots = sorted(k for k, v in up.items() if v.startswith("UP"))
        log(f"ok: HAProxy resolved {SERVICE_NAME} to {n} slots ({', '.join(slots)}) and sees "
            f"each UP, {figures['haproxy_up']:.1f} s after kube play; {len(up) - n} slots "
            "free")
        before = {h: metric(h, metrics_port, "vidt_sessions_created_total") for h in hosts}
        fleet = Robots(proxy, token, robots, obs_dim=3).start()
        _until("episodes through the proxy", lambda: len(fleet.done) >= 2 * robots or
               fleet.errors, 120)
        if fleet.errors:
            raise Failed("; ".join(fleet.errors))
        spread = {h: metric(h, metrics_port, "vidt_sessions_created_total") - before[h]
                  for h in hosts}
        if not all(spread.values()):
            raise Failed(f"the proxy sent no episode to some replica: {spread}")
        log(f"ok: {len(fleet.done)} episodes of {STEPS} steps through the proxy by {robots} "
            f"robots; sessions on every replica ("
            f"{', '.join(f'{int(v)}' for v in spread.values())})")
        t_promote = time.monotonic()
        v2 = vidt_models("promote", str(models), str(v2_file))["after"]["current"]
        switched = {}

        def all_switched():
            for h in hosts:
                if h not in switched and direct.version(f"{h}:{grpc_port}") == v2:
                    switched[h] = time.monotonic() - t_promote
            return len(switched) == n

        _until("every replica on the promoted version", all_switched, 30, 0.1)
        direct.close()
        figures["switch"] = max(switched.values())
        log(f"ok: vidt models promote {v2}: every replica's GetPolicyInfo says it within "
            f"{figures['switch']:.1f} s (" + ", ".join(f"{v:.1f}" for v in switched.values())
            + ")")
        t_all = t_promote + figures["switch"]
        _until("an episode on the new version from every robot",
               lambda: len(fleet.episodes_after(t_all)) == robots or fleet.errors, 120)
        fleet.join()
        if fleet.errors:
            raise Failed("; ".join(fleet.errors))
        after = fleet.episodes_after(t_all)
        wrong = {i: vs for i, vs in after.items() if set(vs) != {v2}}
        if wrong:
            raise Failed(f"episodes begun after the switch on another version: {wrong}")
        versions = sorted({v for _, v, _, _ in fleet.done})
        log(f"ok: {len(fleet.done)} episodes, none failed ({fleet.failovers} resumed), on "
            f"{versions}; every one begun after the switch on {v2}")
        eng.run("pod", "stop", "-t", "30", *names, timeout=120)
        bad = []
        for c in containers:
            if not c.startswith("vidt-serve-"):
                continue
            code = eng.run("inspect", "--format", "{{.State.ExitCode}}", c).stdout.strip()
            logs = eng.run("logs", c, check=False)
            text = logs.stdout + logs.stderr
            if code != "0" or "draining" not in text:
                bad.append(f"{c}: exit {code}")
        if bad:
            raise Failed(f"SIGTERM: {bad}")
        log("ok: every replica drained on SIGTERM and exited 0")
    except Exception as e:
        for c in containers:
            p = eng.run("logs", "--tail", "30", c, check=False)
            log(f"--- {c}\n{(p.stdout + p.stderr).strip()[-3000:]}")
        if isinstance(e, Failed):
            raise
        raise Failed(f"{type(e).__name__}: {e}") from e
    finally:
        dns.stop()
        p = eng.run("kube", "down", str(played), check=False, timeout=300)
        if p.returncode != 0:
            log(f"warning: podman kube down {played}: {p.stderr.strip()[-500:]}")
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return figures


def cannot_play(engine: str) -> str | None:
    """None when `engine` has `kube play` (podman), else why not."""
    if not Path(engine).name.startswith("podman"):
        return f"{engine} has no `kube play` (podman does)"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default="podman")
    ap.add_argument("--image", default="vidt-serve:cpu")
    ap.add_argument("--haproxy-image", default="vidt-haproxy:bookworm",
                    help="HAProxy 2.6 with /usr/local/etc/haproxy/haproxy.cfg as its config "
                         "(`make image-haproxy`)")
    ap.add_argument("-n", type=int, default=3, help="replicas (default 3)")
    ap.add_argument("--robots", type=int, default=6, help="clients running episodes")
    ap.add_argument("--run-flags", default="", help="--runtime and --ulimit flags, as "
                                                     "image-smoke takes them")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (the played "
                                                         "YAML, the repository)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = ap.parse_args()
    flags = shlex.split(a.run_flags)
    why = image_smoke.engine_usable(a.engine) or cannot_play(a.engine)
    for img in (a.image, a.haproxy_image):
        if not why and not image_smoke.image_present(a.engine, img):
            why = (f"no image {img}: run `make "
                   f"{'image-haproxy' if img == a.haproxy_image else 'image'}` first")
    if not why:
        why = image_smoke.cannot_run(a.engine, a.image, flags)
        why = why and (f"{a.engine} cannot start {a.image} here: {why} (see docs/deploy.md for "
                       "RUN_FLAGS)")
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    log = (lambda s: print(s, file=sys.stderr)) if a.json else print
    try:
        figures = smoke(a.engine, a.image, a.haproxy_image, flags, n=a.n, robots=a.robots,
                        log=log, keep=a.keep)
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(figures))
    else:
        print("fleet smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
