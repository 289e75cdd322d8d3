"""The long reliability run of `vidt serve` (`make soak`; not part of CI).

    python scripts/soak.py --duration 600                 # the tiny test actor
    python scripts/soak.py --duration 3600 --model policy.onnx --json

Against `vidt serve` in its own process on loopback, in this order:

1. memory: 100,000 Act calls in rounds of ~10,000 (64 sessions x 157 steps); the server's
   VmRSS after the first round (settled) and after the last; growth must stay under --rss-mb.
2. load: 256 concurrent sessions x 500 steps through the Python client (threads), every
   8th over ActStream, every 32nd abandoned mid-episode: zero errors, every session's actions
   equal to a local single-session replay, active sessions back to 0 after close and expiry.
3. session limit: 48 clients contending for --max-sessions 16: RESOURCE_EXHAUSTED, then all
   finish as slots free.
4. faults, in a loop until --duration is used up (at least one cycle): a client SIGKILLed
   holding streams and sessions (they expire, the threads come back); random bytes and cut
   HTTP/2 prefaces on the port; SIGTERM under load (episodes finish, new sessions
   UNAVAILABLE, exit 0); SIGKILL and restart (no stale sessions: NOT_FOUND, then a new
   session works).

Prints a summary (--json: one object) and exits 1 if anything failed. Reuses the test suite's
helpers (tests/reliability/reliability_util.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

try:  # the test suite's helpers: `make soak` puts tests/ and tests/reliability/ on PYTHONPATH
    from reliability_util import ServeProcess, drive, session_when_free, vanish, wait_until
    from serving_util import health_status, make_dt_onnx, make_policy_onnx
except ImportError:
    sys.exit("scripts/soak.py uses the test suite's helpers: run `make soak`, or "
             "PYTHONPATH=tests:tests/reliability python scripts/soak.py")

from vidt.serving.client import PolicyClient, ServerError  # noqa: E402
from vidt.serving.runtime import OnnxPolicy  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def check(ok: bool, what: str, failures: list[str]) -> None:
    if not ok:
        failures.append(what)
        tqdm.write(f"FAILED: {what}", file=sys.stderr)


def phase_memory(model, tmp, policy, acts: int, failures) -> dict:
    per_round = 64 * 157
    rounds = max(2, round(acts / per_round))
    rss = []
    with ServeProcess(model, tmp, "--idle-timeout", "5") as srv:
        srv.wait_serving()
        for k in tqdm(range(rounds), desc="memory", file=sys.stderr):
            r = drive(srv.address, policy, 64, 157, seed0=100 + k, timeout_s=600)
            check(r["errors"] == 0 and r["mismatches"] == 0, f"memory round {k}: {r}", failures)
            rss.append(srv.rss_kb())
    grown = (rss[-1] - rss[0]) / 1024
    return {"acts": rounds * per_round, "rss_settled_mb": round(rss[0] / 1024, 1),
            "rss_final_mb": round(rss[-1] / 1024, 1), "rss_growth_mb": round(grown, 2),
            "rss_by_round_mb": [round(x / 1024, 1) for x in rss]}


def phase_load(model, tmp, policy, sessions, steps, failures) -> dict:
    idle = 3.0
    with ServeProcess(model, tmp, "--idle-timeout", str(idle), "--max-sessions",
                      str(max(1024, sessions))) as srv:
        srv.wait_serving()
        tqdm.write(f"load: {sessions} sessions x {steps} steps ...", file=sys.stderr)
        r = drive(srv.address, policy, sessions, steps, channels=16, stream_every=8,
                  abandon_every=32, timeout_s=1800)
        check(r["errors"] == 0, f"load errors: {r['first_errors']}", failures)
        check(r["mismatches"] == 0 and r["completed"] == sessions, f"load replay: {r}", failures)
        zero = wait_until(lambda: srv.metric("vidt_active_sessions") == 0, timeout=idle + 15)
        check(zero, "active sessions did not return to 0 after close and expiry", failures)
        r["expired"] = srv.metric("vidt_sessions_expired_total")
        r["active_after"] = srv.metric("vidt_active_sessions")
    return r


def phase_limit(model, tmp, policy, failures) -> dict:
    refused, done, errors = [0], [0], []
    lock = threading.Lock()

    def count_refusal():
        with lock:
            refused[0] += 1
    with ServeProcess(model, tmp, "--max-sessions", "16", "--idle-timeout", "2") as srv:
        srv.wait_serving()
        S = policy.metadata.obs_dim

        def run(k):
            try:
                with PolicyClient(srv.address, retries=0) as c:
                    with session_when_free(c, 120, count_refusal) as s:
                        for t in range(50):
                            s.act(np.full(S, 0.01 * t, np.float32), 0.1)
                with lock:
                    done[0] += 1
            except Exception as e:  # counted
                errors.append(repr(e))

        threads = [threading.Thread(target=run, args=(k,)) for k in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        check(not errors and done[0] == 48, f"session limit: {errors[:3]}", failures)
        check(refused[0] > 0, "the session limit was never reached", failures)
    return {"clients": 48, "max_sessions": 16, "finished": done[0],
            "resource_exhausted": refused[0], "errors": len(errors)}


def garbage(address: str, rng) -> None:
    host, port = address.rsplit(":", 1)
    for payload in (rng.bytes(int(rng.integers(0, 4096))), PREFACE,
                    PREFACE + rng.bytes(int(rng.integers(0, 512)))):
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.settimeout(0.3)
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
        except OSError:
            pass


def fault_cycle(model, tmp, policy, rng, counts, failures) -> None:
    S = policy.metadata.obs_dim
    with ServeProcess(model, tmp, "--threads", "8", "--idle-timeout", "1",
                      "--grace", "30") as srv:
        srv.wait_serving()
        vanish(srv.address, streams=8, unary=4, obs_dim=S)
        counts["client SIGKILLed holding 8 streams + 4 sessions"] += 1
        check(wait_until(lambda: srv.metric("vidt_active_sessions") == 0, timeout=15),
              "a vanished client's sessions did not expire", failures)
        r = drive(srv.address, policy, 8, 20, stream_every=1, seed0=int(rng.integers(1e6)),
                  timeout_s=60)  # all 8 threads as streams again: none leaked
        check(r["errors"] == 0 and r["mismatches"] == 0, f"after a vanished client: {r}",
              failures)
        for _ in range(5):
            garbage(srv.address, rng)
        counts["garbage connections"] += 15
        check(health_status(srv.address) == "SERVING", "not SERVING after garbage", failures)

        # SIGTERM while 8 episodes run at a controller's pace.
        errors, progress = [], [0] * 8

        def episode(k):
            try:
                with PolicyClient(srv.address, retries=0) as c, c.session() as s:
                    for t in range(100):
                        s.act(np.full(S, 0.01 * t, np.float32), 0.1)
                        progress[k] = t + 1
                        time.sleep(0.003)
            except Exception as e:  # counted
                errors.append(repr(e))

        threads = [threading.Thread(target=episode, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: min(progress) >= 10, timeout=30)
        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        wait_until(lambda: health_status(srv.address) == "NOT_SERVING", timeout=10)
        try:
            with PolicyClient(srv.address, retries=0) as c:
                c.session()
            check(False, "a new session was accepted while draining", failures)
        except ServerError as e:
            check(e.code.name == "UNAVAILABLE", f"draining answered {e.code.name}", failures)
        for t in threads:
            t.join(60)
        check(not errors, f"episodes broken by SIGTERM: {errors[:3]}", failures)
        code = srv.proc.wait(40)
        check(code == 0 and time.monotonic() - t0 < 30, f"SIGTERM exit {code}", failures)
        counts["SIGTERM under load"] += 1

    first = ServeProcess(model, tmp).wait_serving()
    try:
        with PolicyClient(first.address, retries=8) as c:
            s = c.session()
            s.act(np.zeros(S, np.float32))
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            with ServeProcess(model, tmp, port=first.port) as second:
                second.wait_serving()
                try:
                    s.act(np.zeros(S, np.float32))
                    check(False, "a session survived SIGKILL and restart", failures)
                except ServerError as e:
                    check(e.code.name == "NOT_FOUND", f"stale session: {e.code.name}", failures)
                with c.session() as s2:
                    s2.act(np.zeros(S, np.float32))
                check(second.metric("vidt_active_sessions") == 0, "stale sessions", failures)
        counts["SIGKILL and restart"] += 1
    finally:
        first.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0,
                    help="seconds in all; the fault loop uses what the fixed phases leave")
    ap.add_argument("--model", type=Path, default=None,
                    help="an exported policy (default: a random-weight Decision Transformer, "
                         "d 32, 2 layers, K 4, exported here by vidt's exporter)")
    ap.add_argument("--toy", action="store_true",
                    help="serve the tiny linear test actor instead (the soak's model before "
                         "2026-12-03)")
    ap.add_argument("--sessions", type=int, default=256)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--acts", type=int, default=100_000, help="Act calls of the memory phase")
    ap.add_argument("--rss-mb", type=float, default=8.0, help="allowed RSS growth")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    t_start = time.monotonic()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vidt-soak-") as tmp:
        if args.model:
            model, name = args.model, str(args.model)
        elif args.toy:
            model, name = make_policy_onnx(Path(tmp) / "tiny.onnx"), "tiny linear test actor"
        else:
            model = make_dt_onnx(Path(tmp) / "dt.onnx")
            name = "random-weight Decision Transformer (d 32, 2 layers, K 4)"
        policy = OnnxPolicy(model, provider="cpu", intra_op_threads=1)
        summary = {"model": name, "cpus": os.cpu_count()}
        summary["memory"] = phase_memory(model, tmp, policy, args.acts, failures)
        check(summary["memory"]["rss_growth_mb"] < args.rss_mb,
              f"RSS grew {summary['memory']['rss_growth_mb']} MB", failures)
        summary["load"] = phase_load(model, tmp, policy, args.sessions, args.steps, failures)
        summary["session_limit"] = phase_limit(model, tmp, policy, failures)
        from collections import Counter

        counts: Counter = Counter()
        rng = np.random.default_rng(0)
        cycles = 0
        while cycles == 0 or time.monotonic() - t_start < args.duration - 60:
            fault_cycle(model, tmp, policy, rng, counts, failures)
            cycles += 1
            tqdm.write(f"fault cycle {cycles} done ({len(failures)} failure(s) so far)",
                       file=sys.stderr)
        summary["faults"] = {"cycles": cycles, **counts}
    summary["wall_s"] = round(time.monotonic() - t_start, 1)
    summary["failures"] = failures
    if args.json:
        print(json.dumps(summary))
    else:
        m, ld = summary["memory"], summary["load"]
        print(f"model: {summary['model']}")
        print(f"memory: {m['acts']} Act calls, RSS {m['rss_settled_mb']} MB settled -> "
              f"{m['rss_final_mb']} MB ({m['rss_growth_mb']:+.2f} MB)")
        print(f"load: {ld['sessions']} sessions x {ld['steps']} steps, {ld['errors']} errors, "
              f"{ld['mismatches']} replay mismatches (max diff {ld['max_abs_diff']:.1e}), "
              f"{ld['acts_per_s']} Act/s, active after: {ld['active_after']:g}")
        sl = summary["session_limit"]
        print(f"session limit: {sl['finished']}/{sl['clients']} finished over "
              f"{sl['max_sessions']} slots, {sl['resource_exhausted']} RESOURCE_EXHAUSTED")
        print(f"faults: {summary['faults']}")
        print(f"{'FAILED' if failures else 'OK'} in {summary['wall_s']} s"
              + "".join(f"\n  {f}" for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
