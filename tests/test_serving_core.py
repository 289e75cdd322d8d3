"""The server's core without the network and without onnxruntime: SessionStore and Batcher."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from serving_util import Clock, NumpyActor, episode

from vidt.serving.batcher import Batcher, _Item
from vidt.serving.sessions import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ResumeState,
    ServingError,
    SessionStore,
    StepRecord,
    StepRequest,
    Unavailable,
)
from vidt.window import ContextWindow


def test_session_actions_equal_a_local_window():
    actor = NumpyActor()
    store = SessionStore(actor.metadata, actor.infer)
    obs, rew = episode(n=9)  # longer than K=4, so the window slides
    s = store.create(target_return=5.0)
    got = [store.act(StepRequest(s.session_id, t, obs[t], rew[t])) for t in range(9)]
    want = actor.reference_episode(obs, rew, target_return=5.0)
    np.testing.assert_allclose(np.stack([r.action for r in got]), want, atol=1e-6)
    assert got[-1].return_to_go == pytest.approx(5.0 - rew[1:].sum(), rel=1e-6)
    summary = store.close(s.session_id)
    assert summary.steps == 9
    assert summary.total_reward == pytest.approx(rew[1:].sum())


def test_reward_offset_counts_against_the_return_to_go_not_the_reported_total():
    # A policy trained on shifted rewards (AntMaze: -1 per step) gets the env's own rewards
    # from clients; its windows must see what a plain window sees for the shifted rewards.
    actor = NumpyActor(reward_offset=-1.0)
    store = SessionStore(actor.metadata, actor.infer)
    obs, rew = episode(n=9)
    s = store.create(target_return=5.0)
    got = [store.act(StepRequest(s.session_id, t, obs[t], rew[t])) for t in range(9)]
    plain = NumpyActor()  # same weights (same seed), no offset, fed the shifted rewards
    want = plain.reference_episode(obs, rew - 1.0, target_return=5.0)
    np.testing.assert_allclose(np.stack([r.action for r in got]), want, atol=1e-6)
    assert got[-1].return_to_go == pytest.approx(5.0 - (rew[1:] - 1.0).sum(), rel=1e-6)
    assert store.close(s.session_id).total_reward == pytest.approx(rew[1:].sum())


def test_default_target_return_and_created_fields():
    actor = NumpyActor(default_target_return=42.0)
    store = SessionStore(actor.metadata, actor.infer, idle_timeout_s=12.5)
    c = store.create()
    assert (c.target_return, c.context_length, c.idle_timeout_s) == (42.0, 4, 13)
    assert c.model_version == "numpy" and store.create(model_version="numpy").model_version
    assert store.active == 2 and store.created_total == 2
    with pytest.raises(FailedPrecondition, match="model_version 'other' is not held by this "
                                                 "server \\(it holds 'numpy'\\)"):
        store.create(model_version="other")
    assert store.active == 2 and store.created_total == 2  # nothing created


def test_repeated_step_returns_stored_answer_and_appends_nothing():
    actor = NumpyActor()
    store = SessionStore(actor.metadata, actor.infer)
    obs, rew = episode(n=5)
    sid = store.create().session_id
    first = store.act(StepRequest(sid, 0, obs[0]))
    calls = len(actor.batch_sizes)
    again = store.act(StepRequest(sid, 0, obs[0]))
    assert again is first and len(actor.batch_sizes) == calls  # no second inference
    for t in range(1, 5):
        store.act(StepRequest(sid, t, obs[t], rew[t]))
        store.act(StepRequest(sid, t, obs[t], rew[t]))  # retry of every step
    # Nothing appended twice: the episode equals one without retries.
    last = store.act(StepRequest(sid, 4, obs[4], rew[4]))
    np.testing.assert_allclose(last.action, actor.reference_episode(obs, rew)[-1], atol=1e-6)
    assert store.close(sid).steps == 5


def test_step_gap_names_the_expected_step():
    actor = NumpyActor()
    store = SessionStore(actor.metadata, actor.infer)
    obs, _ = episode()
    sid = store.create().session_id
    with pytest.raises(FailedPrecondition, match="expected step 0"):
        store.act(StepRequest(sid, 1, obs[0]))
    store.act(StepRequest(sid, 0, obs[0]))
    store.act(StepRequest(sid, 1, obs[1]))
    with pytest.raises(FailedPrecondition, match="step 3 is out of order, expected step 2"):
        store.act(StepRequest(sid, 3, obs[2]))
    with pytest.raises(FailedPrecondition, match="expected step 2"):  # only the last is kept
        store.act(StepRequest(sid, 0, obs[0]))
    assert FailedPrecondition.code == "FAILED_PRECONDITION"


def test_not_found_says_unknown_closed_or_expired_and_counts_expiry():
    actor = NumpyActor()
    clock = Clock()
    store = SessionStore(actor.metadata, actor.infer, idle_timeout_s=10, clock=clock)
    obs, _ = episode()
    with pytest.raises(NotFound, match="unknown session 'nope'"):
        store.act(StepRequest("nope", 0, obs[0]))
    a, b, c = (store.create().session_id for _ in range(3))
    store.close(a)
    with pytest.raises(NotFound, match="was closed"):
        store.act(StepRequest(a, 0, obs[0]))
    with pytest.raises(NotFound, match="was closed"):
        store.close(a)
    clock.t += 5
    store.act(StepRequest(c, 0, obs[0]))  # c was used 5 s later than b
    clock.t += 6  # b idle 11 s, c idle 6 s
    with pytest.raises(NotFound, match=r"expired \(idle for more than 10 s\)"):
        store.act(StepRequest(b, 0, obs[0]))  # lazily expired on access
    assert store.expired_total == 1
    store.act(StepRequest(c, 1, obs[1]))
    clock.t += 10.5
    assert store.expire_idle() == 1  # the sweeper's path
    assert store.expired_total == 2 and store.active == 0
    with pytest.raises(NotFound, match="expired"):
        store.close(c)


def test_session_limit_then_expiry_frees_slots():
    actor = NumpyActor()
    clock = Clock()
    store = SessionStore(actor.metadata, actor.infer, max_sessions=2, idle_timeout_s=1,
                         clock=clock)
    store.create()
    store.create()
    with pytest.raises(ResourceExhausted, match="session limit reached"):
        store.create()
    clock.t += 2
    store.create()  # the idle ones are swept to make room
    assert store.active == 1 and store.expired_total == 2


def test_drain_refuses_new_sessions_but_open_ones_still_step():
    actor = NumpyActor()
    store = SessionStore(actor.metadata, actor.infer)
    obs, _ = episode()
    sid = store.create().session_id
    store.drain()
    with pytest.raises(Unavailable, match="draining"):
        store.create()
    assert store.act(StepRequest(sid, 0, obs[0])).step == 0


@pytest.mark.parametrize("obs, reward, match", [
    ([1.0, 2.0], 0.0, "observation has 2 values, expected 3"),
    ([1.0, np.nan, 0.0], 0.0, "NaN or infinite"),
    ([1.0, np.inf, 0.0], 0.0, "NaN or infinite"),
    ([1.0, 2.0, 3.0], np.nan, "reward must be finite"),
])
def test_invalid_arguments(obs, reward, match):
    actor = NumpyActor()
    store = SessionStore(actor.metadata, actor.infer)
    sid = store.create().session_id
    with pytest.raises(InvalidArgument, match=match):
        store.act(StepRequest(sid, 0, obs, reward))
    with pytest.raises(InvalidArgument, match="target_return must be finite"):
        store.create(target_return=float("inf"))


def test_batch_is_all_or_nothing_and_names_the_index():
    actor = NumpyActor()
    store = SessionStore(actor.metadata, actor.infer)
    obs, rew = episode(n=3)
    ids = [store.create().session_id for _ in range(3)]
    good = [StepRequest(i, 0, obs[0]) for i in ids]
    bad_cases = [
        ([good[0], StepRequest(ids[1], 0, [1.0]), good[2]], InvalidArgument, r"requests\[1\]"),
        ([good[0], good[1], StepRequest(ids[2], 4, obs[0])], FailedPrecondition, r"requests\[2\]"),
        ([good[0], StepRequest("gone", 0, obs[0])], NotFound, r"requests\[1\]: unknown"),
        ([good[0], good[1], good[0]], InvalidArgument, r"requests\[2\].*repeats requests\[0\]"),
        ([], InvalidArgument, "empty batch"),
    ]
    for reqs, err, match in bad_cases:
        with pytest.raises(err, match=match):
            store.act_batch(reqs)
    assert actor.batch_sizes == []  # no inference ran, no window changed
    out = store.act_batch(good)
    assert [r.step for r in out] == [0, 0, 0] and actor.batch_sizes == [3]
    # Batched answers equal unbatched ones.
    solo = store.create().session_id
    np.testing.assert_allclose(store.act(StepRequest(solo, 0, obs[0])).action, out[1].action,
                               atol=1e-6)
    # A retried batch mixed with new steps: stored answers for the repeats.
    again = store.act_batch([good[0], StepRequest(ids[1], 1, obs[1], rew[1])])
    assert again[0] is out[0] and again[1].step == 1


def test_failed_inference_leaves_the_window_untouched():
    actor = NumpyActor()
    fail = {"left": 1}

    def flaky(windows):
        if fail["left"]:
            fail["left"] -= 1
            raise RuntimeError("device lost")
        return actor.infer(windows)

    store = SessionStore(actor.metadata, flaky)
    obs, rew = episode(n=3)
    sid = store.create().session_id
    with pytest.raises(ServingError, match="inference failed: RuntimeError: device lost") as e:
        store.act(StepRequest(sid, 0, obs[0]))
    assert e.value.code == "INTERNAL"
    got = [store.act(StepRequest(sid, t, obs[t], rew[t])).action for t in range(3)]
    np.testing.assert_allclose(np.stack(got), actor.reference_episode(obs, rew), atol=1e-6)


def test_retry_of_a_step_in_flight_waits_for_it():
    actor = NumpyActor()
    entered, release = threading.Event(), threading.Event()

    def slow(windows):
        entered.set()
        assert release.wait(5)
        return actor.infer(windows)

    store = SessionStore(actor.metadata, slow)
    obs, _ = episode()
    sid = store.create().session_id
    results = []
    first = threading.Thread(target=lambda: results.append(store.act(StepRequest(sid, 0, obs[0]))))
    first.start()
    assert entered.wait(5)
    with pytest.raises(FailedPrecondition, match="expected step 1"):
        store.act(StepRequest(sid, 1, obs[1]))  # step 0 is not answered yet
    second = threading.Thread(target=lambda: results.append(store.act(StepRequest(sid, 0, obs[0]))))
    second.start()
    time.sleep(0.05)
    release.set()
    first.join(5)
    second.join(5)
    assert len(results) == 2 and results[0] is results[1]
    assert len(actor.batch_sizes) == 1
    assert store.close(sid).steps == 1


# ---- Batcher ---------------------------------------------------------------------------


def _windows(actor, n, seed=0):
    rng = np.random.default_rng(seed)
    m = actor.metadata
    out = []
    for _w in range(n):
        w = ContextWindow(m.obs_dim, m.act_dim, m.context_len, m.eval_context_len, 3.0)
        for _ in range(int(rng.integers(1, 6))):
            inp = w.observe(rng.normal(size=m.obs_dim), rng.normal())
            w.record_action(rng.uniform(-1, 1, m.act_dim))
        out.append(inp)
    return out


def _concurrent(batcher, windows, gate_predict):
    """Call batcher from one thread per window while the first predict is held back, so the
    others queue up behind it."""
    results = [None] * len(windows)

    def call(i):
        results[i] = batcher([windows[i]])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(windows))]
    threads[0].start()
    assert gate_predict["entered"].wait(5)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 5
    while len(batcher._queue) < len(windows) - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    gate_predict["release"].set()
    for t in threads:
        t.join(5)
    return results


def _gated(actor):
    gate = {"entered": threading.Event(), "release": threading.Event()}

    def predict(inputs):
        gate["entered"].set()
        assert gate["release"].wait(5)
        return actor.predict(inputs)

    return predict, gate


def test_batcher_merges_concurrent_callers_and_matches_unbatched():
    actor = NumpyActor()
    predict, gate = _gated(actor)
    sizes = []
    batcher = Batcher(predict, max_batch=8, window_us=0, on_batch=sizes.append)
    windows = _windows(actor, 12)
    results = _concurrent(batcher, windows, gate)
    # First call alone (it was running), the 11 queued ones in batches of at most 8.
    assert sizes[0] == 1 and sorted(sizes[1:]) == [3, 8] and sum(sizes) == 12
    for w, r in zip(windows, results):
        np.testing.assert_allclose(r, actor.predict(w), atol=1e-6)


def test_batcher_max_batch_one_never_batches():
    actor = NumpyActor()
    predict, gate = _gated(actor)
    sizes = []
    batcher = Batcher(predict, max_batch=1, on_batch=sizes.append)
    _concurrent(batcher, _windows(actor, 5), gate)
    assert sizes == [1] * 5


def test_batcher_groups_stay_whole_and_errors_reach_every_caller():
    actor = NumpyActor()
    batcher = Batcher(actor.predict, max_batch=4)
    ws = _windows(actor, 6)
    out = batcher(ws)  # one ActBatch larger than max_batch still runs in one call
    assert out.shape == (6, 2) and actor.batch_sizes == [6]

    def broken(inputs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Batcher(broken)([ws[0]])


def test_batcher_waits_for_a_batch_only_under_concurrency():
    actor = NumpyActor()
    sizes = []
    batcher = Batcher(actor.predict, max_batch=64, window_us=200_000, on_batch=sizes.append)
    t0 = time.perf_counter()
    for w in _windows(actor, 3):
        batcher([w])
    assert time.perf_counter() - t0 < 0.2  # a lone caller never waits the 200 ms window
    # After a batch of several callers, the leader waits (up to the window) for more.
    batcher._last_callers = 2
    ws = _windows(actor, 4)
    results = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher([ws[i]])))
               for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(5)
    assert sizes[3:] == [4]
    for w, r in zip(ws, results):
        np.testing.assert_allclose(r, actor.predict(w), atol=1e-6)


def _resume_state(results, obs, t, K, total_reward, model_version="numpy"):
    """What a client knows once step t-1 was answered: its last min(t, K) records."""
    keep = range(max(0, t - K), t)
    return ResumeState(model_version, t,
                       [StepRecord(obs[i], results[i].action, results[i].return_to_go)
                        for i in keep], total_reward)


@pytest.mark.parametrize("split", range(1, 9))  # every step, from 1 to past the context
def test_resumed_session_answers_exactly_as_the_old_one(split):
    actor = NumpyActor(reward_offset=-0.5)
    a, b = SessionStore(actor.metadata, actor.infer), SessionStore(actor.metadata, actor.infer)
    obs, rew = episode(n=9)
    old = a.create(target_return=5.0).session_id
    want = [a.act(StepRequest(old, t, obs[t], rew[t])) for t in range(9)]
    c = b.resume(_resume_state(want, obs, split, 4, float(rew[1:split].sum())))
    assert c.target_return == pytest.approx(5.0) and c.context_length == 4
    assert b.resumed_total == 1 and b.created_total == 1
    # A retry of the last answered step gets the last record's answer, appending nothing.
    again = b.act(StepRequest(c.session_id, split - 1, obs[split - 1], rew[split - 1]))
    np.testing.assert_array_equal(again.action, want[split - 1].action)
    got = [b.act(StepRequest(c.session_id, t, obs[t], rew[t])) for t in range(split, 9)]
    for g, w in zip(got, want[split:]):  # same model, same machine: the same bits
        np.testing.assert_array_equal(g.action, w.action)
        assert (g.step, g.return_to_go) == (w.step, w.return_to_go)
    assert b.close(c.session_id) == a.close(old)


def _refused(store, state, error, match):
    with pytest.raises(error, match=match):
        store.resume(state)
    assert (store.active, store.created_total, store.resumed_total) == (0, 0, 0)


def test_malformed_or_foreign_resume_is_refused_and_creates_nothing():
    actor = NumpyActor()
    donor = SessionStore(actor.metadata, actor.infer)
    store = SessionStore(actor.metadata, actor.infer)
    obs, rew = episode(n=6)
    sid = donor.create().session_id
    res = [donor.act(StepRequest(sid, t, obs[t], rew[t])) for t in range(6)]
    good = _resume_state(res, obs, 6, 4, 1.0)
    h = list(good.history)

    def with_(**kw):
        return ResumeState(**{**good.__dict__, **kw})

    def record(i, **kw):
        return with_(history=h[:i] + [StepRecord(**{**h[i].__dict__, **kw})] + h[i + 1:])

    _refused(store, with_(model_version="other"), FailedPrecondition,
             r"resume.model_version 'other' is not held by this server \(it holds 'numpy'\)")
    _refused(store, with_(next_step=0), InvalidArgument, r"resume.next_step must be >= 1")
    _refused(store, with_(history=h[1:]), InvalidArgument,
             r"resume.history has 3 records, expected the last 4")
    _refused(store, with_(history=h + h[:1]), InvalidArgument,
             r"resume.history has 5 records, more than the context length 4")
    _refused(store, with_(next_step=2), InvalidArgument,
             r"resume.history has 4 records, more than the 2 steps")
    _refused(store, record(2, observation=[1.0, 2.0]), InvalidArgument,
             r"resume.history\[2\].observation has 2 values, expected 3")
    _refused(store, record(1, action=[0.5]), InvalidArgument,
             r"resume.history\[1\].action has 1 values, expected 2")
    _refused(store, record(3, observation=[1.0, float("nan"), 0.0]), InvalidArgument,
             r"resume.history\[3\]: observation or action has NaN")
    _refused(store, record(0, action=[0.5, 1.5]), InvalidArgument,
             r"resume.history\[0\].action is outside the action bounds")
    _refused(store, record(3, return_to_go=float("inf")), InvalidArgument,
             r"resume.history\[3\].return_to_go must be finite")
    _refused(store, with_(total_reward=float("nan")), InvalidArgument,
             r"resume.total_reward must be finite")
    store.drain()
    _refused(store, good, Unavailable, "draining")


# ---- the asyncio path (Batcher.submit, SessionStore.act_async) --------------------------------


def test_async_batcher_merges_callers_queued_during_inference():
    import asyncio

    actor = NumpyActor()
    predict, gate = _gated(actor)
    sizes = []
    windows = _windows(actor, 12)

    async def main():
        batcher = Batcher(predict, max_batch=8, on_batch=sizes.append)
        first = batcher.submit([windows[0]])
        await asyncio.sleep(0)  # the first batch starts with the first window alone
        while not gate["entered"].is_set():
            await asyncio.sleep(0.001)
        rest = [batcher.submit([w]) for w in windows[1:]]  # queued while predict is held
        gate["release"].set()
        out = await asyncio.gather(first, *rest)
        batcher.close()
        return out

    results = asyncio.run(main())
    assert sizes == [1, 8, 3]
    for w, r in zip(windows, results):
        np.testing.assert_allclose(r, actor.predict(w), atol=1e-6)


def test_async_batcher_errors_reach_every_caller_and_it_goes_on():
    import asyncio

    actor = NumpyActor()
    calls = []

    def flaky(inputs):
        calls.append(inputs.observations.shape[0])
        if len(calls) == 1:
            raise RuntimeError("boom")
        return actor.predict(inputs)

    ws = _windows(actor, 3)

    async def main():
        b = Batcher(flaky, max_batch=8)
        failed = await asyncio.gather(b.submit([ws[0]]), b.submit([ws[1]]),
                                      return_exceptions=True)
        ok = await b.submit([ws[2]])
        b.close()
        return failed, ok

    failed, ok = asyncio.run(main())
    assert all(isinstance(f, RuntimeError) and "boom" in str(f) for f in failed)
    np.testing.assert_allclose(ok, actor.predict(ws[2]), atol=1e-6)


def test_async_steps_follow_the_same_rules_as_sync_ones():
    """act_async answers as act does: same actions, a concurrent retry of a step in flight
    waits for it and gets the same answer, a repeated step gets the stored one, an
    out-of-order step is refused, and a failed inference leaves the window as it was."""
    import asyncio

    actor = NumpyActor()
    obs, rew = episode(n=5, S=actor.metadata.obs_dim)
    sync = SessionStore(actor.metadata, actor.infer)
    sid = sync.create().session_id
    want = [sync.act(StepRequest(sid, t, obs[t], rew[t])).action for t in range(5)]
    fail = {"on": False}

    def predict(inputs):
        if fail["on"]:
            raise RuntimeError("accelerator lost")
        return actor.predict(inputs)

    async def main():
        batcher = Batcher(predict)
        store = SessionStore(actor.metadata, None, infer_async=batcher.submit)
        a = store.create().session_id
        got = [(await store.act_async(StepRequest(a, 0, obs[0], rew[0]))).action]
        # Step 1 twice at once (a client's retry racing its first try): one inference.
        r1, r1b = await asyncio.gather(store.act_async(StepRequest(a, 1, obs[1], rew[1])),
                                       store.act_async(StepRequest(a, 1, obs[1], rew[1])))
        assert r1 is r1b and batcher.rows == 2
        got.append(r1.action)
        again = await store.act_async(StepRequest(a, 1, obs[1], rew[1]))
        assert again is r1 and batcher.rows == 2  # the stored answer, nothing recomputed
        with pytest.raises(FailedPrecondition, match="expected step 2"):
            await store.act_async(StepRequest(a, 3, obs[3], rew[3]))
        fail["on"] = True
        with pytest.raises(ServingError, match="accelerator lost"):
            await store.act_async(StepRequest(a, 2, obs[2], rew[2]))
        fail["on"] = False
        for t in range(2, 5):  # step 2 again: the failure left the window untouched
            got.append((await store.act_async(StepRequest(a, t, obs[t], rew[t]))).action)
        batch = await store.act_batch_async([StepRequest(a, 5, obs[0], 0.0)])
        assert batch[0].step == 5
        batcher.close()
        return got

    got = asyncio.run(main())
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6)


def test_async_steps_are_undone_whatever_fails_before_inference_runs():
    """A failure before predict runs (the batcher refusing the call, stacking the windows)
    must undo the step like an inference failure: no session left pending for ever."""
    import asyncio

    actor = NumpyActor()
    obs, rew = episode(n=2, S=actor.metadata.obs_dim)

    def refuse(_windows):
        raise MemoryError("no room for the batch")

    class BadStack(Batcher):
        def submit(self, windows):
            fut = super().submit(windows)
            bad = _Item(windows)
            bad.inputs, bad.future = None, asyncio.get_running_loop().create_future()
            self._aqueue.append(bad)
            return fut  # the batch now holds a window that cannot be stacked

    async def main():
        for infer in (refuse, BadStack(actor.predict).submit):
            store = SessionStore(actor.metadata, None, infer_async=infer)
            sid = store.create().session_id
            with pytest.raises((ServingError, MemoryError)):
                await asyncio.wait_for(store.act_async(StepRequest(sid, 0, obs[0], 0.0)), 5)
            store.current.infer_async = Batcher(actor.predict).submit
            r = await asyncio.wait_for(store.act_async(StepRequest(sid, 0, obs[0], 0.0)), 5)
            assert r.step == 0  # the same step again: the failure left nothing pending

    asyncio.run(main())
