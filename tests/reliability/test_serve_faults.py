"""Faults: clients that vanish mid-stream or mid-episode, a response lost on the way back,
SIGTERM under load, SIGKILL and restart, and broken model files given to `vidt serve`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from reliability_util import ServeProcess, episode, replay, vanish, wait_until
from serving_util import health_status, running_server

from vidt.serving.client import PolicyClient, ServerError


def run_streams(address: str, policy, n: int, steps: int = 8) -> None:
    """n ActStreams open at once, each a whole episode equal to its replay."""
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def run(k):
        try:
            obs, rew = episode(k)
            with PolicyClient(address, timeout_s=10, retries=0) as c, c.stream() as s:
                barrier.wait(15)
                results[k] = np.stack([s.act(obs[t], rew[t]) for t in range(steps)])
        except Exception as e:  # surfaced below
            errors.append(repr(e))
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    for k in range(n):
        np.testing.assert_allclose(results[k], replay(policy, k, steps), atol=1e-5)


def test_vanished_clients_expire_and_free_their_threads(tiny_model, tmp_path, policy,
                                                        fuzz_counts):
    """A server with 4 worker threads; a client holding 4 open streams (all its threads) and
    2 Act sessions is SIGKILLed. Its 6 sessions expire at the idle timeout, and 4 new streams
    then run at once: no thread stayed stuck in a dead client's stream. Twice, so a leak of
    even one thread per round would show."""
    with ServeProcess(tiny_model, tmp_path, "--threads", "4", "--idle-timeout", "1") as srv:
        srv.wait_serving()
        for round_ in range(2):
            vanish(srv.address, streams=4, unary=2)
            fuzz_counts["fault: client SIGKILLed mid-stream / mid-episode"] += 6
            assert wait_until(lambda: srv.metric("vidt_active_sessions") == 0, timeout=10)
            assert srv.metric("vidt_sessions_expired_total") == 6 * (round_ + 1)
            run_streams(srv.address, policy, 4)
        assert health_status(srv.address) == "SERVING"


class LosingProxy:
    """A loopback TCP proxy in front of the server. While `armed`, it swallows what the
    server sends; once the server has answered (`answered()` is true), it cuts every
    connection: the step is computed and stored, the client never hears the answer."""

    def __init__(self, port: int):
        self.port_to = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.closed = threading.Event()
        self.socks: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                a, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.port_to), timeout=5)
            self.socks += [a, b]
            for src, dst, back in ((a, b, False), (b, a, True)):
                t = threading.Thread(target=self._pipe, args=(src, dst, back), daemon=True)
                t.start()
                self.threads.append(t)

    def _pipe(self, src, dst, back):
        src.settimeout(0.1)
        while not self.closed.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if back and self.armed.is_set():
                continue  # the answer is lost
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        for s in list(self.socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.socks.clear()

    def close(self):
        self.closed.set()
        self.listener.close()
        self.cut()
        for t in self.threads:
            t.join(5)


def test_retry_after_a_lost_response_gets_the_same_action(policy, fuzz_counts):
    obs, rew = episode(3)
    want = replay(policy, 3, 6)
    with running_server(policy) as srv:
        proxy = LosingProxy(srv.port)
        ok_acts = lambda: srv.metrics.registry.get_sample_value(  # noqa: E731
            "vidt_requests_total", {"method": "Act", "code": "OK"}) or 0.0
        try:
            with PolicyClient(f"127.0.0.1:{proxy.port}", timeout_s=5, backoff_s=0.05) as c, \
                    c.session() as s:
                got = [s.act(obs[0], rew[0]), s.act(obs[1], rew[1])]
                for t in (2, 4):  # lose the answer to steps 2 and 4
                    before = ok_acts()
                    proxy.armed.set()

                    def cutter(before=before):
                        assert wait_until(lambda: ok_acts() > before, timeout=10)
                        proxy.cut()
                        proxy.armed.clear()

                    th = threading.Thread(target=cutter)
                    th.start()
                    got.append(s.act(obs[t], rew[t]))
                    th.join(10)
                    got.append(s.act(obs[t + 1], rew[t + 1]))
                    fuzz_counts["fault: response lost, client retried"] += 1
                assert s.step == 6 and c.retried >= 2
                assert srv.store.steps_total == 6  # each lost step was computed once
                assert ok_acts() == 8  # and answered twice
        finally:
            proxy.close()
    np.testing.assert_allclose(np.stack(got), want, atol=1e-6)


def test_sigterm_under_load_finishes_episodes_refuses_new_ones_exits_0(tiny_model, tmp_path,
                                                                      policy, fuzz_counts):
    n, steps = 16, 120
    with ServeProcess(tiny_model, tmp_path, "--grace", "30") as srv:
        srv.wait_serving()
        progress = [0] * n
        results, errors = [None] * n, []

        def run(k):
            obs = np.random.default_rng(k).normal(size=(steps, 3)).astype(np.float32)
            try:
                with PolicyClient(srv.address, timeout_s=10, retries=0) as c, \
                        (c.stream() if k % 4 == 0 else c.session()) as s:
                    out = []
                    for t in range(steps):
                        out.append(s.act(obs[t], 0.5))
                        progress[k] = t + 1
                        time.sleep(0.002)  # a controller's pace: the episodes overlap SIGTERM
                    results[k] = np.stack(out)
            except Exception as e:  # surfaced below
                errors.append(f"{k}: {e!r}")

        threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
        assert wait_until(lambda: min(progress) >= 20 or errors, timeout=60)
        assert max(progress) < steps, "the load ended before SIGTERM: nothing tested"
        srv.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        fuzz_counts["fault: SIGTERM under load"] += 1
        assert wait_until(lambda: health_status(srv.address) == "NOT_SERVING", timeout=10)
        with PolicyClient(srv.address, retries=0, failover=False) as c:
            with pytest.raises(ServerError, match="draining") as e:
                c.session()
            assert e.value.code.name == "UNAVAILABLE"
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        assert srv.proc.wait(20) == 0
        assert time.monotonic() - t_term < 20  # the episodes' end, not the 30 s grace
        assert "SIGTERM received: draining" in srv.log()
    for k in range(n):
        obs = np.random.default_rng(k).normal(size=(steps, 3)).astype(np.float32)
        w = policy.new_window()
        for t in range(steps):
            a = policy.predict(w.observe(obs[t], 0.5))[0]
            w.record_action(a)
            np.testing.assert_allclose(results[k][t], a, atol=1e-5)


def test_sigterm_with_sessions_left_open_exits_0_within_the_grace(tiny_model, tmp_path):
    with ServeProcess(tiny_model, tmp_path, "--grace", "1") as srv:
        with PolicyClient(srv.wait_serving().address) as c:
            for _ in range(3):
                c.session().act([0.0, 0.0, 0.0])
        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert srv.proc.wait(15) == 0
        assert time.monotonic() - t0 < 1 + 1 + 3  # grace + in-flight second + start-up slack
        assert "stopping with 3 session(s) still open" in srv.log()


def test_sigkill_and_restart_reports_no_stale_sessions(tiny_model, tmp_path, policy,
                                                       fuzz_counts):
    obs, rew = episode(5)
    first = ServeProcess(tiny_model, tmp_path).wait_serving()
    try:
        with PolicyClient(first.address, timeout_s=5, retries=8, backoff_s=0.05) as c, \
                PolicyClient(first.address, timeout_s=5, retries=8, backoff_s=0.05,
                             failover=False) as plain:
            s, p = c.session(), plain.session()
            for t in range(3):
                s.act(obs[t], rew[t])
                p.act(obs[t], rew[t])
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            fuzz_counts["fault: server SIGKILLed and restarted"] += 1
            with ServeProcess(tiny_model, tmp_path, port=first.port) as second:
                second.wait_serving()
                assert second.metric("vidt_active_sessions") == 0
                # Without failover the lost session is reported as such.
                with pytest.raises(ServerError, match="unknown session") as e:
                    p.act(obs[3], rew[3])
                assert e.value.code.name == "NOT_FOUND"
                # With it (the default), the episode goes on where it was, exactly.
                got = np.stack([s.act(obs[t], rew[t]) for t in range(3, 5)])
                np.testing.assert_allclose(got, replay(policy, 5, 5)[3:], atol=1e-6)
                assert (c.failovers, second.metric("vidt_sessions_resumed_total")) == (1, 1)
                assert second.metric("vidt_active_sessions") == 1
                s.close()
                assert second.metric("vidt_active_sessions") == 0
    finally:
        first.stop()


# ---- broken model files ------------------------------------------------------------------------


def _variants(good: bytes, tmp_path) -> dict:
    import onnx

    out = {"empty": b"", "text": b"not an onnx model\n", "random": np.random.default_rng(0)
           .bytes(4096), "half": good[:len(good) // 2], "one-byte-short": good[:-1],
           "header-only": good[:16]}
    m = onnx.load_from_string(good)
    del m.metadata_props[:]
    out["no-metadata"] = m.SerializeToString()
    m = onnx.load_from_string(good)
    for p in m.metadata_props:
        if p.key == "vidt.obs_dim":
            p.value = "5"  # the graph takes 3
    out["metadata-mismatch"] = m.SerializeToString()
    m = onnx.load_from_string(good)
    for p in m.metadata_props:
        if p.key == "vidt.format_version":
            p.value = "99"
    out["future-format"] = m.SerializeToString()
    m = onnx.load_from_string(good)
    m.graph.input[0].name = "obs"
    out["renamed-input"] = m.SerializeToString()
    m = onnx.load_from_string(good)
    for p in m.metadata_props:
        if p.key == "vidt.model_name":
            p.value = "\u00e9" * 4
    out["bad-utf8-metadata"] = m.SerializeToString().replace("\u00e9".encode() * 4,
                                                              b"\xff\xfe" * 4)
    paths = {}
    for name, data in out.items():
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(data)
    paths["directory"] = tmp_path
    paths["missing"] = tmp_path / "nope.onnx"
    return paths


def test_broken_model_files_fail_with_one_line_and_exit_1(tiny_model, tmp_path, run_cli,
                                                          fuzz_counts):
    for name, path in _variants(tiny_model.read_bytes(), tmp_path).items():
        r = run_cli("serve", "--model", str(path), "--port", "0")
        fuzz_counts["fault: broken model file to vidt serve"] += 1
        lines = r.stderr.strip().splitlines()
        assert "Traceback" not in r.stderr, (name, r.stderr)
        assert r.exit_code == 1, (name, r.stderr)
        assert len(lines) == 1 and str(path.name) in lines[0], (name, lines)
    # And once as a user runs it: a separate process, nothing else on stderr.
    bad = tmp_path / "half.onnx"
    p = subprocess.run([sys.executable, "-m", "vidt.cli.main", "serve", "--model", str(bad),
                        "--port", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


# Corrupt a valid file many ways in a child process: OnnxPolicy must refuse it (a VidtError)
# or load a working model; never crash the process, never raise anything else.
CORRUPTOR = """
import collections, json, sys, numpy as np
from pathlib import Path
from vidt.errors import VidtError
from vidt.serving.runtime import OnnxPolicy
good = Path(sys.argv[1]).read_bytes()
tmp = Path(sys.argv[2])
rng = np.random.default_rng(0)
counts = collections.Counter()
for i in range(int(sys.argv[3])):
    data = bytearray(good)
    how = i % 3
    if how == 0:  # truncated
        data = data[:int(rng.integers(0, len(good)))]
    elif how == 1:  # a few random bytes changed
        for j in rng.integers(0, len(good), size=int(rng.integers(1, 8))):
            data[j] = int(rng.integers(0, 256))
    else:  # a run of zeros
        a = int(rng.integers(0, len(good)))
        data[a:a + int(rng.integers(1, 64))] = bytes(64)[:len(data[a:a + 64])]
    path = tmp / f"c{i}.onnx"
    path.write_bytes(bytes(data))
    try:
        p = OnnxPolicy(path, provider="cpu", intra_op_threads=1)
        p.act(np.zeros(p.metadata.obs_dim, np.float32))
        counts["loaded"] += 1
    except VidtError:
        counts["refused"] += 1
    except Exception as e:
        counts[type(e).__name__] += 1
    path.unlink()
print(json.dumps(counts))
"""


def test_corrupted_model_files_never_crash(tiny_model, tmp_path, fuzz_counts):
    import json

    n = 300
    p = subprocess.run([sys.executable, "-c", CORRUPTOR, str(tiny_model), str(tmp_path), str(n)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]  # no crash of onnxruntime or Python
    counts = json.loads(p.stdout.strip().splitlines()[-1])
    fuzz_counts["fault: corrupted model file loaded"] += n
    assert sum(counts.values()) == n and counts.get("refused", 0) > n // 2, counts
    other = {k: v for k, v in counts.items() if k not in ("refused", "loaded")}
    assert not other, counts


def test_a_stream_left_idle_is_ended_and_frees_its_thread(policy, fuzz_counts):
    """A client that opens streams and then goes silent without closing them (a robot whose
    link died without a FIN, or a hostile client) holds worker threads: the server ends such
    streams once idle past the idle timeout, so that all its threads serve again."""
    with running_server(policy, threads=2, idle_timeout_s=0.5) as srv, \
            PolicyClient(srv.address, timeout_s=5, retries=0) as c:
        silent = [c.stream() for _ in range(2)]  # both worker threads, then nothing
        for s in silent:
            s.act([0.0, 0.0, 0.0])
        fuzz_counts["fault: stream left open and silent"] += 2
        t0 = time.monotonic()
        # While they are held, a unary call can only queue; once they are ended, it runs.
        assert c.info(refresh=True).observation_dim == 3
        assert time.monotonic() - t0 < 3
        for s in silent:
            with pytest.raises(ServerError) as e:
                s.act([0.0, 0.0, 0.0])
            assert e.value.code.name in ("CANCELLED", "NOT_FOUND")
        run_streams(srv.address, policy, 2)
