"""Dynamic batching: windows of different sessions that arrive together go through one
`predict` call.

No worker thread: the calling threads organise themselves (leader/follower). The first caller
to find the model idle becomes the leader: it takes the queued windows (up to `max_batch`
rows), runs `predict` in its own thread, hands each follower its rows, and passes leadership
to the first window still queued. A lone client therefore pays no hand-off between threads,
and under load the windows that arrive while the model is busy form the next batch.

`window_us` adds a wait for the batch to fill, up to that long, but only when the previous
batch held more than one caller: with one client the wait could only add latency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from vidt.window import WindowInputs


class _Item:
    __slots__ = ("inputs", "rows", "wake", "lead", "finished", "result", "error")

    def __init__(self, inputs: WindowInputs):
        self.inputs = inputs
        self.rows = int(inputs.observations.shape[0])
        self.wake: threading.Event | None = None  # made only for callers that must wait
        self.lead = False
        self.finished = False
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class Batcher:
    """`batcher(list_of_windows) -> (n, A)`, merged with concurrent callers' windows.

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
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: deque[_Item] = deque()
        self._busy = False  # a leader exists; invariant: not busy => queue empty
        self._last_callers = 1
        self.batches = 0  # counters for tests and benchmarks
        self.rows = 0

    def __call__(self, windows: list[WindowInputs]) -> np.ndarray:
        inputs = windows[0] if len(windows) == 1 else WindowInputs.stack(list(windows))
        item = _Item(inputs)
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

    def _lead(self) -> None:
        with self._lock:
            if self.window_s > 0 and self._last_callers > 1:
                deadline = time.monotonic() + self.window_s
                while sum(it.rows for it in self._queue) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._arrived.wait(left)
            batch, rows = [], 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch):
                it = self._queue.popleft()
                batch.append(it)
                rows += it.rows
            self._last_callers = len(batch)
        try:
            inputs = batch[0].inputs if len(batch) == 1 else WindowInputs.stack(
                [it.inputs for it in batch])
            out = np.asarray(self.predict(inputs))
            if out.ndim != 2 or out.shape[0] != rows:
                raise ValueError(f"predict returned shape {out.shape} for {rows} windows")
            start = 0
            for it in batch:
                it.result = out[start:start + it.rows]
                start += it.rows
        except BaseException as e:  # every waiter must wake up, whatever happened
            for it in batch:
                it.error = e
        self.batches += 1
        self.rows += rows
        if self.on_batch is not None:
            self.on_batch(rows)
        with self._lock:
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.wake.set()
            else:
                self._busy = False
        for it in batch:
            it.finished = True
            if it.wake is not None:
                it.wake.set()
