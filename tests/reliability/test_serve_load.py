"""Load through the Python client against `vidt serve` in its own process: concurrent
sessions with zero errors and actions equal to single-session replays, sessions back to zero
after close and expiry, bounded memory, and the session limit with service resuming.

CI runs 64 sessions x 100 steps; `make soak` (scripts/soak.py) runs the full 256 x 500 and the
100,000-call memory check."""

from __future__ import annotations

import threading
import time

import pytest
from reliability_util import ServeProcess, drive, episode, replay, session_when_free, wait_until

from vidt.serving.client import PolicyClient, ServerError

IDLE = 1.5


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    with ServeProcess(tiny_model, tmp_path_factory.mktemp("load"), "--idle-timeout",
                      str(IDLE)) as srv:
        yield srv.wait_serving()


@pytest.fixture(scope="module")
def served_dt(dt_model, tmp_path_factory):
    from vidt.serving.runtime import OnnxPolicy

    with ServeProcess(dt_model, tmp_path_factory.mktemp("load-dt"), "--idle-timeout",
                      str(IDLE)) as srv:
        yield srv.wait_serving(), OnnxPolicy(dt_model, provider="cpu", intra_op_threads=1)


def test_concurrent_sessions_of_an_exported_decision_transformer(served_dt, fuzz_counts):
    # The same load against a real exported transformer: its batches go through attention,
    # where a window mixed up between sessions would change every later action.
    served, dt_policy = served_dt
    r = drive(served.address, dt_policy, sessions=32, steps=100, channels=8, stream_every=4,
              timeout_s=180)
    fuzz_counts["load: Act calls (DT, 32 sessions x 100 steps)"] += r["completed"] * r["steps"]
    assert r["errors"] == 0, r["first_errors"]
    assert r["completed"] == 32 and r["mismatches"] == 0, r
    assert wait_until(lambda: served.metric("vidt_active_sessions") == 0, timeout=10)
    print(f"\nload DT 32x100: {r}")


def test_concurrent_sessions_equal_replays_and_leave_nothing(served, policy, fuzz_counts):
    r = drive(served.address, policy, sessions=64, steps=100, channels=8, stream_every=4,
              abandon_every=16, timeout_s=120)
    fuzz_counts["load: Act calls (64 sessions x 100 steps)"] += r["completed"] * r["steps"]
    assert r["errors"] == 0, r["first_errors"]
    assert r["completed"] == 64 and r["mismatches"] == 0, r
    assert r["alive_threads"] == 0
    # Closed sessions are gone at once; the 4 abandoned ones expire after the idle timeout.
    assert wait_until(lambda: served.metric("vidt_active_sessions") == 0, timeout=IDLE + 10)
    assert served.metric("vidt_sessions_expired_total") >= 4
    assert served.metric("vidt_sessions_closed_total") >= 60
    print(f"\nload 64x100: {r}")


def test_rss_settles(served, policy):
    """Memory after a further 6,400 calls stays within a few MB of where it was after the
    first 9,600 (these included): the soak checks 100,000 against 10,000."""
    drive(served.address, policy, sessions=32, steps=100, seed0=1, timeout_s=120)
    settled = served.rss_kb()
    for seed in (2, 3):
        r = drive(served.address, policy, sessions=32, steps=100, seed0=seed, timeout_s=120)
        assert r["errors"] == 0 and r["mismatches"] == 0, r
    grown = served.rss_kb() - settled
    print(f"\nRSS after 9,600 calls {settled} kB, after 16,000: {grown:+d} kB")
    assert grown < 8 * 1024, f"RSS grew {grown} kB over 6,400 Act calls"


def test_session_limit_then_service_resumes(tiny_model, tmp_path, policy, fuzz_counts):
    """--max-sessions 8: the 9th gets RESOURCE_EXHAUSTED; a close frees a slot at once, an
    expiry after the idle timeout; 24 clients contending for the 8 slots (retrying on
    RESOURCE_EXHAUSTED) all finish their episodes."""
    with ServeProcess(tiny_model, tmp_path, "--max-sessions", "8", "--idle-timeout",
                      "1") as srv, PolicyClient(srv.wait_serving().address, retries=0) as c:
        open_ = [c.session() for _ in range(8)]
        with pytest.raises(ServerError, match="session limit reached") as e:
            c.session()
        assert e.value.code.name == "RESOURCE_EXHAUSTED"
        open_.pop().close()
        open_.append(c.session())  # a close frees a slot at once
        with pytest.raises(ServerError):
            c.session()
        t0 = time.monotonic()  # the 8 left idle expire, and service resumes
        assert wait_until(lambda: srv.metric("vidt_active_sessions") == 0, timeout=10)
        assert time.monotonic() - t0 < 1 + 3  # idle timeout + sweep + scrape slack
        c.session().close()

        done, errors, refused = [], [], [0]
        lock = threading.Lock()

        def count_refusal():
            with lock:
                refused[0] += 1

        def run(k):
            obs, rew = episode(k % 8)
            try:
                with session_when_free(c, 60, count_refusal, pause=0.02) as s:
                    got = [s.act(obs[t], rew[t]) for t in range(8)]
                assert abs(got[-1] - replay(policy, k % 8, 8)[-1]).max() < 1e-5
                done.append(k)
            except Exception as e:  # surfaced below
                errors.append(repr(e))

        threads = [threading.Thread(target=run, args=(k,)) for k in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not errors, errors[:3]
        assert len(done) == 24
        fuzz_counts["load: RESOURCE_EXHAUSTED answered then resumed"] += refused[0]
        assert srv.metric("vidt_active_sessions") == 0
