"""Dynamic batching: windows of different sessions that arrive together go through one
`predict` call. One batcher, two fronts over the same batching rules:

- `batcher(windows) -> (n, A)` for callers in threads (the threads transport). No worker
  thread: the calling threads organise themselves (leader/follower). The first caller to
  find the model idle becomes the leader: it takes the queued windows (up to `max_batch`
  rows), runs `predict` in its own thread, hands each follower its rows, and passes
  leadership to the first window still queued. A lone client therefore pays no hand-off
  between threads, and under load the windows that arrive while the model is busy form the
  next batch. `window_us` adds a wait for the batch to fill, up to that long, but only when
  the previous batch held more than one caller: with one client the wait could only add
  latency.
- `await batcher.submit(windows)` for coroutines on one event loop (the asyncio transport):
  `predict` runs in one worker thread (onnxruntime releases the GIL), and the windows queued
  meanwhile form the next batch. No batch window: a timed wait on an event loop lasts at
  least a millisecond, and the calls that arrive during inference already fill the next
  batch.

Either way the batcher only schedules: `predict` executes, and the session store owns what
a step means (Triton's split between its scheduler and a model backend).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vidt.window import WindowInputs


class _Item:
    """One caller's windows in the queue, and what came of them."""

    __slots__ = ("inputs", "rows", "wake", "lead", "finished", "result", "error", "future")

    def __init__(self, windows: list[WindowInputs]):
        self.inputs = windows[0] if len(windows) == 1 else WindowInputs.stack(list(windows))
        self.rows = int(self.inputs.observations.shape[0])
        self.wake: threading.Event | None = None  # made only for callers that must wait
        self.lead = False
        self.finished = False
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.future: asyncio.Future | None = None  # the async front's answer


class Batcher:
    """`batcher(list_of_windows) -> (n, A)` or `await batcher.submit(list_of_windows)`,
    merged with concurrent callers' windows.

    predict: WindowInputs (B, ...) -> actions (B, A), e.g. `OnnxPolicy.predict`.
    on_batch: called with each batch's row count (metrics).
    """

    def __init__(self, predict: Callable[[WindowInputs], np.ndarray], max_batch: int = 64,
                 window_us: int = 0, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if window_us < 0:
            raise ValueError(f"window_us must be >= 0, got {window_us}")
        self.predict = predict
        self.max_batch = int(max_batch)
        self.window_s = window_us / 1e6
        self.on_batch = on_batch
        self.batches = 0  # counters for tests and benchmarks
        self.rows = 0
        # The threads front.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: deque[_Item] = deque()
        self._busy = False  # a leader exists; invariant: not busy => queue empty
        self._last_callers = 1
        # The asyncio front (made on first use, on the loop that uses it).
        self._aqueue: deque[_Item] = deque()
        self._arunning = False
        self._pool: ThreadPoolExecutor | None = None

    # ---- what both fronts share ---------------------------------------------------------
    def _take(self, queue: deque[_Item]) -> tuple[list[_Item], int]:
        """The next batch: queued items in order, up to max_batch rows (at least one item)."""
        batch, rows = [], 0
        while queue and (not batch or rows + queue[0].rows <= self.max_batch):
            batch.append(queue.popleft())
            rows += batch[-1].rows
        return batch, rows

    def _run(self, batch: list[_Item], rows: int) -> np.ndarray:
        """predict over the whole batch: actions (rows, A)."""
        self.batches += 1
        self.rows += rows
        if self.on_batch is not None:
            self.on_batch(rows)
        inputs = batch[0].inputs if len(batch) == 1 else WindowInputs.stack(
            [it.inputs for it in batch])
        out = np.asarray(self.predict(inputs))
        if out.ndim != 2 or out.shape[0] != rows:
            raise ValueError(f"predict returned shape {out.shape} for {rows} windows")
        return out

    @staticmethod
    def _parts(batch: list[_Item], out: np.ndarray):
        start = 0
        for it in batch:
            yield it, out[start:start + it.rows]
            start += it.rows

    # ---- the threads front --------------------------------------------------------------
    def __call__(self, windows: list[WindowInputs]) -> np.ndarray:
        with self._lock:
            alone = not self._busy and self._last_callers == 1
            if alone:
                self._busy = True
        if alone:  # the model is idle and was not batching: no queue, no item, no wait
            return self._alone(windows)
        item = _Item(windows)
        with self._lock:
            self._queue.append(item)
            if not self._busy:
                self._busy = item.lead = True
            else:
                item.wake = threading.Event()  # set when the result is in, or to lead
                self._arrived.notify()
        if not item.lead:
            item.wake.wait()
        if not item.finished:
            # Leaders are always the queue's head, so this item is in the batch it runs.
            self._lead()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def _alone(self, windows: list[WindowInputs]) -> np.ndarray:
        """Run `windows` as a batch of their own, then hand leadership to whoever queued
        meanwhile (a lone client's path: the `_lead` rules with nothing to gather)."""
        item = _Item(windows)
        try:
            return self._run([item], item.rows)
        finally:
            self._pass_lead()

    def _pass_lead(self) -> None:
        """The model is free: the first caller queued meanwhile leads the next batch."""
        with self._lock:
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.wake.set()
            else:
                self._busy = False

    def _lead(self) -> None:
        with self._lock:
            if self.window_s > 0 and self._last_callers > 1:
                deadline = time.monotonic() + self.window_s
                while sum(it.rows for it in self._queue) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._arrived.wait(left)
            batch, rows = self._take(self._queue)
            self._last_callers = len(batch)
        try:
            for it, part in self._parts(batch, self._run(batch, rows)):
                it.result = part
        except BaseException as e:  # every waiter must wake up, whatever happened
            for it in batch:
                it.error = e
        self._pass_lead()
        for it in batch:
            it.finished = True
            if it.wake is not None:
                it.wake.set()

    # ---- the asyncio front --------------------------------------------------------------
    def submit(self, windows: list[WindowInputs]) -> asyncio.Future:
        """A future of the (n, A) actions for `windows`, on the running event loop."""
        loop = asyncio.get_running_loop()
        item = _Item(windows)
        item.future = loop.create_future()
        self._aqueue.append(item)
        if not self._arunning:
            self._arunning = True
            loop.create_task(self._drain())
        return item.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="vidt-onnxruntime")
        await asyncio.sleep(0)  # the calls already received join the first batch
        try:
            while self._aqueue:
                batch, rows = self._take(self._aqueue)
                try:
                    out = await loop.run_in_executor(self._pool, self._run, batch, rows)
                    for it, part in self._parts(batch, out):
                        if not it.future.done():
                            it.future.set_result(part)
                except Exception as e:  # every caller must hear, whatever happened
                    for it in batch:
                        if not it.future.done():
                            it.future.set_exception(e)
                except BaseException:  # the loop is going away: the steps are undone
                    for it in batch:
                        it.future.cancel()
                    raise
        finally:
            self._arunning = False

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
