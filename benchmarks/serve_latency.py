"""Latency and throughput of `vidt serve`, against its floor, all in one run.

    python benchmarks/serve_latency.py                    # Hopper-v5, `small` preset DT (untrained)
    python benchmarks/serve_latency.py --size paper       # the paper's size (d512, 4 layers, K 20)
    python benchmarks/serve_latency.py --model policy.onnx

1. Floor: a trivial gRPC echo server with the same server settings (sync, same thread pool
   and options) answering Act with a constant; onnxruntime batch 1 alone, same threads.
2. One client: Act p50/p99, unary and stream, and the ratio
   Act p50 / (echo p50 + onnxruntime p50)                  target <= 1.15
   for each transport (threads, the default; asyncio).
3. 64 concurrent sessions (client processes x threads): steps/s with batching (the default
   flags) vs --max-batch 1                                  target >= 3x
   and against the echo server under the same load (the ceiling the clients and gRPC leave)
   batched / echo                                           target >= 0.8
   for each transport, with the server process's CPU per step in each (and with a zero
   model).
4. Where Act's time goes beyond the floor: the same server with a zero model (sessions,
   batcher and servicer, no onnxruntime), and onnxruntime batch 1 after 8 MB of other memory
   traffic (as between two requests in a server; the floor's loop keeps its caches hot).
5. Replicas (needs `haproxy`): 3 replicas behind HAProxy (deploy/haproxy/), Act p50/p99
   through the proxy vs straight to the replica the session sticks to, and
   proxy p50 / direct p50                                   target <= 1.15
   and what a resume costs: CreateSession plain vs with a resume (a full context of history),
   and one failover step as the client lives it (Act -> NOT_FOUND -> resume -> Act again).

6. Model versions (`--parts versions`; `vidt serve --model-repo`): lone-client Act p50 on a
   server holding a second version (one idle session pinned to it) vs one holding one,
   in rounds                                                with / without  target <= 1.05
   the time a CreateSession pinned to a version not yet held takes (load and warm-up
   included), and Act p50/p99 of running sessions while the pointer is promoted to a new
   version every second, against the same load without promotions.

`--parts` picks sections (latency, throughput, proxy, versions; default the first three). `--aio-echo` adds the echo
server on grpc.aio (the asyncio transport's own ceiling) to the latency and throughput parts.
`--baseline-python PY` also runs `vidt serve` from another install (e.g. a checkout of an
earlier commit in its own venv) beside this one, in the same rounds: before/after on the same
machine in the same run.

Servers run in their own processes, as in production. The measurements alternate in rounds
(these shared machines are noisy) and percentiles pool the rounds. The machine and versions
are printed with the results; --json prints one object instead of the text report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vidt.serving.server import free_port

# The child processes (echo server, zero-model server, load client) live in their own script.
ROLES = Path(__file__).resolve().with_name("serve_roles.py")


# ---- helpers ---------------------------------------------------------------------------------

def wait_serving(address: str, proc, timeout: float = 120.0) -> None:
    from vidt.serving.client import wait_serving as healthy

    if not healthy(address, timeout, alive=lambda: proc.poll() is None, service=""):
        raise SystemExit(f"server at {address} did not become SERVING "
                         f"(exit code {proc.poll()})")


def wait_port(address: str, proc, timeout: float = 60.0) -> None:
    import grpc

    with grpc.insecure_channel(address) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise SystemExit(f"echo server at {address} did not start") from None


class Proc:
    def __init__(self, args):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        return self.p

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def make_model(out: Path, env_id: str, size: str, seed: int = 0) -> Path:
    import torch

    from vidt.envs import env_dims, get_family
    from vidt.export.export import export_actor
    from vidt.model.dt import Actor, DecisionTransformer, ModelConfig, ModelSpec

    fam = get_family(env_id)
    S, A = env_dims(env_id)
    width, layers, heads, K = {"paper": (512, 4, 4, fam.context_len),
                               "small": (64, 2, 2, min(fam.context_len, 5))}[size]
    torch.manual_seed(seed)
    dt = DecisionTransformer(ModelSpec(S, A), ModelConfig(context_len=K, d_model=width,
                                                          n_layer=layers, n_head=heads))
    from vidt.envs import make_env

    env = make_env(env_id)
    low, high = env.action_space.low, env.action_space.high
    env.close()
    actor = Actor(dt, np.zeros(S), np.ones(S), fam.reward_scale, low, high)
    export_actor(actor, dict(env_id=env_id, algo="vidt",
                             eval_context_len=min(fam.eval_context_len, K),
                             eval_target_return=fam.eval_target_return, max_episode_steps=1000),
                 out, n_windows=16)
    return out


# ---- measurements ----------------------------------------------------------------------------

def stepper(session, obs: np.ndarray, k: list[int]):
    """A call that steps `session` with the next of `obs` (k[0]: the count the timed calls
    share)."""
    def step():
        session.act(obs[k[0] % len(obs)], 0.1)
        k[0] += 1
    return step


def time_calls(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def serve_cmd(py: str, model: Path, port: int, args, *extra: str) -> list[str]:
    return [py, "-m", "vidt.cli.main", "serve", "--model", str(model), "--port", str(port),
            "--provider", "cpu", "--ort-threads", str(args.ort_threads), *extra]


def servers(args, model: Path, meta, threads: int) -> dict[str, tuple[list[str], bool]]:
    """name -> (command, whether it answers health): every server a part measures."""
    py = sys.executable
    S, A = str(meta.obs_dim), str(meta.act_dim)
    t = ("--threads", str(threads))
    out = {"echo": ([py, str(ROLES), "echo-server", "{port}", "--obs-dim", S, "--act-dim", A,
                     *t], False),
           "threads": (serve_cmd(py, model, "{port}", args, *t), True),
           "asyncio": (serve_cmd(py, model, "{port}", args, "--transport", "asyncio"), True),
           "zero_model": ([py, str(ROLES), "zero-server", "{port}", "--model", str(model), *t],
                          False)}
    if args.aio_echo:
        out["aio_echo"] = ([py, str(ROLES), "echo-server", "{port}", "--obs-dim", S,
                            "--act-dim", A, "--transport", "asyncio"], False)
    if args.baseline_python:
        out["threads_before"] = (serve_cmd(args.baseline_python, model, "{port}", args, *t),
                                 True)
        out["asyncio_before"] = (serve_cmd(args.baseline_python, model, "{port}", args,
                                           "--transport", "asyncio"), True)
    return out


def start(stack, cmd: list[str], health: bool) -> str:
    port = free_port()
    proc = stack.enter_context(Proc([str(port) if c == "{port}" else c for c in cmd]))
    address = f"127.0.0.1:{port}"
    (wait_serving if health else wait_port)(address, proc)
    return address


def latency(args, model: Path, meta) -> dict:
    """One client, each kind of call in turn, in rounds: the floor (echo, onnxruntime alone)
    and Act/ActStream on every server."""
    from vidt.serving.client import PolicyClient
    from vidt.serving.runtime import OnnxPolicy
    from vidt.v1 import policy_pb2 as pb

    S = meta.obs_dim
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(256, S)).astype(np.float32)
    policy = OnnxPolicy(model, provider="cpu", intra_op_threads=args.ort_threads)
    window = policy.new_window()
    for t in range(meta.eval_context_len):
        inp = window.observe(obs[t], 0.1)
        window.record_action(policy.predict(inp)[0])
    inp = window.observe(obs[0], 0.1)
    big = np.ones(8 << 20, np.uint8)
    scratch = np.empty_like(big)
    k = [0]  # step counter shared by the timed calls

    def echo_caller(client):
        def echo_call():
            # Built and sent like the client's Act (its route key and all), so both pay
            # the same.
            r = pb.ActRequest(session_id="echo", step=k[0], observation=obs[k[0] % 256].tolist(),
                              reward=0.1)
            client.stub.Act(r, timeout=10, metadata=client.metadata)
            k[0] += 1
        return echo_call

    def ort_cold():
        np.copyto(scratch, big)  # untimed: evicts the model from the caches
        t0 = time.perf_counter()
        policy.predict(inp)
        return time.perf_counter() - t0

    with contextlib.ExitStack() as stack:
        timed, cold, opened = {"ort": lambda: policy.predict(inp)}, {}, []
        for name, (cmd, health) in servers(args, model, meta, args.threads).items():
            client = stack.enter_context(PolicyClient(start(stack, cmd, health)))
            if name in ("echo", "aio_echo"):
                timed[name] = echo_caller(client)
                continue
            key = "act" if name == "threads" else f"act_{name}"
            opened += [client.session(), *([] if name == "zero_model" else [client.stream()])]
            timed[key] = stepper(opened[-1 if name == "zero_model" else -2], obs, k)
            if name != "zero_model":
                timed[key.replace("act", "stream", 1)] = stepper(opened[-1], obs, k)
        cold["ort_cold"] = ort_cold
        for fn in timed.values():
            time_calls(fn, 200)  # warm-up
        res = {key: [] for key in (*timed, *cold)}
        n = args.requests // args.rounds
        for _ in range(args.rounds):
            for key, fn in timed.items():
                res[key] += time_calls(fn, n)
            res["ort_cold"] += [ort_cold() for _ in range(n)]
        for x in opened:
            x.close()
    out = {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for k, v in res.items()}
    floor = out["echo"]["p50"] + out["ort"]["p50"]
    for key in list(out):
        if key.startswith(("act", "stream")):
            out[f"ratio_{key}_p50_over_floor"] = out[key]["p50"] / floor
    return out


def proxy(args, model: Path, meta) -> dict:
    """Act through HAProxy vs straight to the replica the session sticks to, alternating in
    rounds; CreateSession plain vs resumed; one failover step."""
    import importlib.util
    import shutil

    from vidt.serving.client import PolicyClient
    from vidt.v1 import policy_pb2 as pb

    if shutil.which("haproxy") is None:
        return {"skipped": "haproxy is not on the PATH (apt-get install haproxy)"}
    spec = importlib.util.spec_from_file_location(
        "replicas", Path(__file__).resolve().parents[1] / "deploy" / "haproxy" / "replicas.py")
    replicas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replicas)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(256, meta.obs_dim)).astype(np.float32)
    res = {"act_proxy": [], "act_direct": [], "create": [], "create_resume": [],
           "failover_step": []}
    serve_args = ("--threads", str(args.threads), "--provider", "cpu", "--ort-threads",
                  str(args.ort_threads))
    with replicas.Replicas(model, 3, serve_args=serve_args) as cluster, \
            PolicyClient(cluster.address, route="bench") as pc:
        sp = pc.session()
        sp.act(obs[0], 0.1)
        home = next(r for r in cluster.replicas if r.name == cluster.stuck()["bench"])
        with PolicyClient(home.address, route="bench") as dc:
            sd = dc.session()
            k = [0]
            for sess in (sp, sd):  # warm-up, and a full context of history for the resumes
                time_calls(stepper(sess, obs, k), 200)
            n = args.requests // args.rounds
            for _ in range(args.rounds):
                res["act_proxy"] += time_calls(stepper(sp, obs, k), n)
                res["act_direct"] += time_calls(stepper(sd, obs, k), n)
            m = max(50, n // 10)
            state = pb.ResumeState(model_version=sd.model_version, next_step=sd.step,
                                   total_reward=sd.total_reward,
                                   history=[pb.StepRecord(observation=o, action=a,
                                                          return_to_go=g)
                                            for o, a, g in sd._history])
            opened = []
            for _ in range(args.rounds):
                res["create"] += time_calls(lambda: opened.append(
                    dc.call("CreateSession", pb.CreateSessionRequest())), m)
                res["create_resume"] += time_calls(lambda: opened.append(
                    dc.call("CreateSession", pb.CreateSessionRequest(resume=state))), m)
            for r in opened:
                dc.call("CloseSession", pb.CloseSessionRequest(session_id=r.session_id))

            def failover_step():
                sd.id = "gone"  # what a client sees once its server is lost: NOT_FOUND
                sd.act(obs[k[0] % 256], 0.1)
                k[0] += 1

            logging.getLogger("vidt.serving.client").setLevel(logging.ERROR)
            res["failover_step"] = time_calls(failover_step, m)
            sd.close()
        sp.close()
    out = {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for k, v in res.items()}
    out["history_steps"] = len(state.history)
    out["ratio_proxy_p50_over_direct"] = out["act_proxy"]["p50"] / out["act_direct"]["p50"]
    return out


def versions(args, model: Path, meta) -> dict:
    """Part 6: what holding, loading and switching model versions costs running sessions."""
    import signal
    import threading

    from vidt.serving.client import PolicyClient
    from vidt.serving.repository import ModelRepository

    obs = np.random.default_rng(0).normal(size=(256, meta.obs_dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        repo = ModelRepository(tmp)
        # v[0]: the model; v[1]: resident beside it; v[2:5]: loaded on demand; v[5:8]: promoted.
        v = [repo.add(model).version] + [
            repo.add(make_model(Path(tmp) / f"seed{i}.x", args.env, args.size, seed=i)).version
            for i in range(1, 8)]
        repo.promote(v[0])
        procs = {}
        clients = {}
        for name in ("one", "two"):
            port = free_port()
            cmd = [sys.executable, "-m", "vidt.cli.main", "serve", "--model-repo", tmp,
                   "--port", str(port), "--provider", "cpu", "--ort-threads",
                   str(args.ort_threads), "--threads", str(args.threads), "--max-versions", "16"]
            procs[name] = stack.enter_context(Proc(cmd))
            wait_serving(f"127.0.0.1:{port}", procs[name])
            clients[name] = stack.enter_context(PolicyClient(f"127.0.0.1:{port}"))
        resident = clients["two"].session(model_version=v[1])  # holds v[1] there, idle
        k = [0]
        timed = {name: stepper(c.session(), obs, k) for name, c in clients.items()}
        for fn in timed.values():
            time_calls(fn, 200)
        lat = {name: [] for name in timed}
        n = args.requests // args.rounds
        for _ in range(args.rounds):
            for name, fn in timed.items():
                lat[name] += time_calls(fn, n)
        held = list(clients["two"].info(refresh=True).loaded_versions)
        assert held == [v[0], v[1]], held
        resident.close()

        loads = []
        for ver in v[2:5]:
            t0 = time.perf_counter()
            s = clients["one"].session(model_version=ver)
            loads.append(time.perf_counter() - t0)
            s.close()

        # Running sessions, quiet and then while the pointer moves to a new version each second.
        c = clients["one"]
        phase = {"now": "warm-up"}
        seen: dict[str, list[float]] = {"quiet": [], "promoting": []}
        stop = threading.Event()

        def run():
            s = c.session()
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                s.act(obs[i % 256], 0.1)
                dt = time.perf_counter() - t0
                if phase["now"] in seen:
                    seen[phase["now"]].append(dt)
                i += 1
            s.close()

        threads = [threading.Thread(target=run) for _ in range(4)]
        for th in threads:
            th.start()
        time.sleep(1.0)
        phase["now"] = "quiet"
        time.sleep(3.0)
        phase["now"] = "promoting"
        switched = []
        for ver in v[5:8]:
            t0 = time.perf_counter()
            repo.promote(ver)
            procs["one"].send_signal(signal.SIGHUP)
            while c.info(refresh=True).model_version != ver:
                time.sleep(0.005)
            switched.append(time.perf_counter() - t0)
            time.sleep(max(0.0, 1.0 - switched[-1]))
        stop.set()
        for th in threads:
            th.join()
    out = {name: {"p50": pct(x, 50), "p99": pct(x, 99), "n": len(x)} for name, x in lat.items()}
    out["ratio_two_over_one_p50"] = out["two"]["p50"] / out["one"]["p50"]
    out["pinned_create_with_load_ms"] = [round(x * 1e3, 1) for x in loads]
    out["promote_to_serving_ms"] = [round(x * 1e3, 1) for x in switched]
    for name, x in seen.items():
        out[f"running_{name}"] = {"p50": pct(x, 50), "p99": pct(x, 99), "n": len(x)}
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(args, model: Path, meta) -> dict:
    """Steps/s of `sessions` concurrent sessions against: each transport with batching
    (default flags), the threads server with --max-batch 1, the server with a zero model (no
    onnxruntime), and the echo server (the ceiling that the client processes and gRPC leave
    on this machine, whatever the server does). For each, the server process's CPU per step
    while the load runs: on a machine the clients share, that is what a server can still cut."""
    py = sys.executable
    per = args.sessions // args.workers
    threads = max(args.threads, args.sessions + 8)
    named = servers(args, model, meta, threads)
    modes = {"batched": named["threads"], "batched_asyncio": named["asyncio"],
             "max_batch_1": (named["threads"][0] + ["--max-batch", "1"], True),
             "zero_model": named["zero_model"], "echo_ceiling": named["echo"],
             **{f"batched_{k}" if "before" in k else k: v for k, v in named.items()
                if "before" in k or k == "aio_echo"}}
    runs = {k: [] for k in modes}
    cpu_us = {k: [] for k in modes}
    for _ in range(args.tp_rounds):
        for mode, (cmd, health) in modes.items():
            port = free_port()
            with Proc([str(port) if c == "{port}" else c for c in cmd]) as ps:
                (wait_serving if health else wait_port)(f"127.0.0.1:{port}", ps)
                workers = [subprocess.Popen(
                    [py, str(ROLES), "load-worker", f"127.0.0.1:{port}", "--sessions",
                     str(per), "--seconds", str(args.seconds), "--obs-dim", str(meta.obs_dim)],
                    stdout=subprocess.PIPE, text=True) for _ in range(args.workers)]
                # The server's CPU over the middle of the timed part (the workers warm up 1 s).
                time.sleep(1.5)
                c0, t0 = _cpu_seconds(ps.pid), time.perf_counter()
                time.sleep(max(0.5, args.seconds - 1.0))
                c1, t1 = _cpu_seconds(ps.pid), time.perf_counter()
                got = [json.loads(w.communicate(timeout=args.seconds + 120)[0]) for w in workers]
            rate = sum(g["steps"] for g in got) / max(g["seconds"] for g in got)
            runs[mode].append(rate)
            cpu_us[mode].append((c1 - c0) / (t1 - t0) / rate * 1e6)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"sessions": per * args.workers, "workers": args.workers, "runs": runs,
            "steps_per_s": med, "max_batch_1_steps_per_s": med["max_batch_1"],
            "batched_steps_per_s": med["batched"],
            "echo_ceiling_steps_per_s": med["echo_ceiling"],
            "ceiling_share": {k: v / med["echo_ceiling"] for k, v in med.items()
                              if k.startswith("batched")},
            "server_cpu_us_per_step": {k: statistics.median(v) for k, v in cpu_us.items()},
            "speedup": med["batched"] / med["max_batch_1"],
            "speedup_possible_at_most": med["echo_ceiling"] / med["max_batch_1"]}


def machine() -> dict:
    import grpc
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "grpcio": grpc.__version__, "onnxruntime": onnxruntime.__version__,
            "platform": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="an exported policy (else made)")
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--size", choices=["paper", "small"], default="small",
                    help="paper: d512, 4 layers, K 20; small: the `small` preset (d64, 2, K 5)")
    ap.add_argument("--requests", type=int, default=2000, help="latency samples per kind")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4, help="client processes for the load")
    ap.add_argument("--seconds", type=float, default=4.0, help="per throughput run")
    ap.add_argument("--tp-rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=64, help="server worker threads")
    ap.add_argument("--ort-threads", type=int, default=1)
    ap.add_argument("--parts", default="latency,throughput,proxy",
                    help="comma list of latency, throughput, proxy, versions")
    ap.add_argument("--aio-echo", action="store_true",
                    help="also the echo server on grpc.aio (the asyncio transport's ceiling)")
    ap.add_argument("--baseline-python", default=None,
                    help="also `vidt serve` run by this interpreter (an earlier install), "
                         "reported as *_before")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    known = {"latency", "throughput", "proxy", "versions"}
    if not parts <= known:
        ap.error(f"--parts: unknown {sorted(parts - known)}")

    from vidt.serving.runtime import OnnxPolicy

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(Path(tmp) / f"{args.env}-{args.size}.onnx", args.env,
                                         args.size)
        meta = OnnxPolicy(model, provider="cpu").metadata
        t0 = time.time()
        lat = latency(args, model, meta) if "latency" in parts else None
        tp = throughput(args, model, meta) if "throughput" in parts else None
        px = proxy(args, model, meta) if "proxy" in parts else None
        vs = versions(args, model, meta) if "versions" in parts else None
    report = {"machine": machine(), "model": {"file": str(args.model or f"{args.env} {args.size}"),
              "obs_dim": meta.obs_dim, "act_dim": meta.act_dim, "K": meta.context_len,
              "eval_K": meta.eval_context_len}, "ort_threads": args.ort_threads,
              "server_threads": args.threads, "latency_ms": lat, "throughput": tp,
              "proxy_ms": px, "versions_ms": vs, "seconds": time.time() - t0}
    if args.json:
        print(json.dumps(report))
        return
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, grpcio "
          f"{m['grpcio']}, onnxruntime {m['onnxruntime']}")
    print(f"model: {report['model']['file']} (obs {meta.obs_dim}, act {meta.act_dim}, "
          f"K {meta.context_len}, T_eval {meta.eval_context_len}), onnxruntime threads "
          f"{args.ort_threads}, server threads {args.threads}")
    if lat is not None:
        print_latency(lat)
    if tp is not None:
        print_throughput(tp)
    if px is not None:
        print_proxy(px)
    if vs is not None:
        print_versions(vs)


NAMES = {"echo": "floor: gRPC echo, same server settings",
         "ort": "floor: onnxruntime batch 1 alone",
         "ort_cold": "onnxruntime batch 1 after 8 MB of other memory traffic",
         "aio_echo": "gRPC echo on grpc.aio",
         "act_zero_model": "Act, threads server with a zero model (no onnxruntime)"}


def _name(key: str) -> str:
    if key in NAMES:
        return NAMES[key]
    call, _, rest = key.partition("_")
    transport = "asyncio" if "asyncio" in rest else "threads"
    return (f"{'Act (unary)' if call == 'act' else 'ActStream'}, one client, {transport}"
            f"{' (before)' if rest.endswith('before') else ''}")


def print_latency(L: dict) -> None:
    print("| measurement | p50 ms | p99 ms | p50 / floor |\n|---|---|---|---|")
    for key, v in L.items():
        if key.startswith("ratio_"):
            continue
        r = L.get(f"ratio_{key}_p50_over_floor")
        print(f"| {_name(key)} | {v['p50']:.3f} | {v['p99']:.3f} | "
              f"{'' if r is None else f'{r:.3f}'} |")
    r = L["ratio_act_p50_over_floor"]
    print(f"threads: Act p50 / (echo p50 + onnxruntime p50) = {r:.3f} ("
          f"{'meets' if r <= 1.15 else 'misses'} the 1.15 target)")
    print(f"beyond the floor: serving layer without onnxruntime "
          f"{L['act_zero_model']['p50'] - L['echo']['p50']:+.3f} ms (zero model vs echo); "
          f"onnxruntime with cold caches {L['ort_cold']['p50'] - L['ort']['p50']:+.3f} ms")


def print_throughput(tp: dict) -> None:
    ok = "meets" if tp["speedup"] >= 3 else "misses"
    print(f"\n{tp['sessions']} concurrent sessions ({tp['workers']} client processes): "
          f"{tp['batched_steps_per_s']:.0f} steps/s batched vs {tp['max_batch_1_steps_per_s']:.0f}"
          f" with --max-batch 1: {tp['speedup']:.2f}x ({ok} the 3x target; the echo ceiling "
          f"allows at most {tp['speedup_possible_at_most']:.2f}x here)")
    print("| server | steps/s | share of the echo ceiling | server CPU us/step |\n"
          "|---|---|---|---|")
    for k, v in tp["steps_per_s"].items():
        share = tp["ceiling_share"].get(k)
        print(f"| {k} | {v:.0f} | {'' if share is None else f'{share:.2f}'} | "
              f"{tp['server_cpu_us_per_step'][k]:.0f} |")
    print(f"runs {json.dumps({k: [round(x) for x in v] for k, v in tp['runs'].items()})}")


def print_proxy(P: dict) -> None:
    if "skipped" in P:
        print(f"replicas: skipped: {P['skipped']}")
        return
    print("\n3 replicas behind HAProxy (deploy/haproxy/haproxy.cfg), one client:")
    print("| measurement | p50 ms | p99 ms |\n|---|---|---|")
    for key, name in [("act_direct", "Act straight to the replica the session sticks to"),
                      ("act_proxy", "Act through HAProxy"),
                      ("create", "CreateSession (new episode)"),
                      ("create_resume", f"CreateSession with a resume ({P['history_steps']} "
                                        "steps of history)"),
                      ("failover_step", "one failover step: Act -> NOT_FOUND -> resume -> Act")]:
        print(f"| {name} | {P[key]['p50']:.3f} | {P[key]['p99']:.3f} |")
    ok = "meets" if P["ratio_proxy_p50_over_direct"] <= 1.15 else "misses"
    print(f"proxy p50 / direct p50 = {P['ratio_proxy_p50_over_direct']:.3f} ({ok} the 1.15 "
          "target)")



def print_versions(V: dict) -> None:
    print("\nModel versions (vidt serve --model-repo), one client:")
    print("| measurement | p50 ms | p99 ms |\n|---|---|---|")
    for key, name in [("one", "Act, server holding one version"),
                      ("two", "Act, server holding a second version (an idle session on it)"),
                      ("running_quiet", "Act, 4 running sessions, pointer unchanged"),
                      ("running_promoting", "Act, 4 running sessions, promoted to a new "
                                            "version each second")]:
        print(f"| {name} | {V[key]['p50']:.3f} | {V[key]['p99']:.3f} |")
    r = V["ratio_two_over_one_p50"]
    print(f"two versions / one, Act p50 = {r:.3f} ({'meets' if r <= 1.05 else 'misses'} the "
          "1.05 target)")
    print(f"CreateSession pinned to a version not held (load + warm-up): "
          f"{V['pinned_create_with_load_ms']} ms; promote + SIGHUP until GetPolicyInfo says "
          f"so: {V['promote_to_serving_ms']} ms")


if __name__ == "__main__":
    main()
