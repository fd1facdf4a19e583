"""Micro-batching: concurrent requests wait briefly in a bounded queue, one worker runs them.

    batcher = MicroBatcher(run_batch, max_batch_size=32, max_wait_s=0.002, max_queue_size=256)
    batcher.start()
    [future] = batcher.submit([payload], deadline=time.monotonic() + 0.5)
    result = future.result()        # BatchResult(value, queue_s, compute_s, batch_size)
    batcher.close()

The model's cost per call is mostly fixed overhead (Python, kernel launches, the prompt
encoder), so one call on 32 requests costs a few times one call on one request: grouping
whatever arrived while the previous batch ran makes throughput grow with load. While requests
come in groups, the oldest waits at most `max_wait_s` for the batch to fill; a lone request
on a quiet server is computed at once (waiting would only add latency); under heavy load the
queue fills while the worker computes and no wait is added.

The queue is bounded: past `max_queue_size` waiting requests, `submit` raises
`QueueFullError` at once (the server answers RESOURCE_EXHAUSTED) rather than letting latency
grow without bound. A request whose deadline has passed, or whose caller gave up (its future
was cancelled), is dropped when its batch is formed, before it uses compute.

No torch or grpc here: the batcher is plain threading, tested on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("lsc4rec.batching")

# run_batch(payloads) -> one value per payload, in order; a value that is an exception
# instance fails only its own request.
RunBatch = Callable[[list[Any]], Sequence[Any]]


class QueueFullError(Exception):
    """The queue has no room for the submitted requests (RESOURCE_EXHAUSTED)."""


class BatcherClosedError(Exception):
    """The batcher is draining or stopped and takes no new requests (UNAVAILABLE)."""


class DeadlineExpiredError(Exception):
    """The request's deadline passed while it waited in the queue (DEADLINE_EXCEEDED)."""


@dataclass(frozen=True)
class BatchResult:
    """What a request's future resolves to.

    Attributes:
        value: what `run_batch` returned for this request.
        queue_s: seconds from `submit` to its batch starting to compute.
        compute_s: seconds `run_batch` took on the whole batch.
        batch_size: requests computed together, this one included.
    """

    value: Any
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass
class BatcherStats:
    """Counters since start (read without a lock: approximate while running)."""

    batches: int = 0  # run_batch calls
    computed: int = 0  # requests that reached run_batch
    expired: int = 0  # dropped: deadline passed in the queue
    cancelled: int = 0  # dropped: the caller gave up first
    rejected: int = 0  # refused by submit because the queue was full
    largest_batch: int = 0


@dataclass
class _Job:
    payload: Any
    future: Future
    enqueued_at: float  # clock() at submit
    deadline: float | None  # clock() value after which the result is useless; None = never


class MicroBatcher:
    """A bounded queue of requests and one worker thread that runs them in batches.

    Args:
        run_batch: computes a list of payloads; returns one value per payload, in order. An
            exception instance as a value fails only that request; an exception raised fails
            the whole batch.
        max_batch_size: most payloads per `run_batch` call (1 = no batching).
        max_wait_s: longest time the oldest queued request waits for the batch to fill.
        max_queue_size: most requests waiting (not counting the batch being computed).
        name: worker thread name, for logs and debuggers.
        clock: monotonic seconds; deadlines given to `submit` use the same clock.
    Raises:
        ValueError: a size below 1 or a negative wait.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        max_queue_size: int = 256,
        name: str = "micro-batcher",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_size = max_queue_size
        self.clock = clock
        self.stats = BatcherStats()
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._drain = True
        self._last_batch_size = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    # ----------------------------------------------------------------- public API

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not counting the batch being computed)."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, payloads: Sequence[Any], deadline: float | None = None) -> list[Future]:
        """Queue payloads (all or none); returns one future per payload.

        Args:
            payloads: the requests; queued together, so a batch call gets one queue slot each.
            deadline: `clock()` value after which the results are useless (None = none).
        Returns:
            futures resolving to `BatchResult`, or failing with `DeadlineExpiredError`, the
            request's own exception, or the batch's exception.
        Raises:
            QueueFullError: not enough room for all payloads.
            BatcherClosedError: the batcher is closing or closed.
        """
        now = self.clock()
        jobs = [_Job(p, Future(), now, deadline) for p in payloads]
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if len(self._queue) + len(jobs) > self.max_queue_size:
                self.stats.rejected += len(jobs)
                raise QueueFullError(
                    f"request queue is full ({len(self._queue)} waiting, limit "
                    f"{self.max_queue_size}); retry later"
                )
            self._queue.extend(jobs)
            self._cond.notify()
        return [job.future for job in jobs]

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; finish (drain) or fail the queued ones; join the worker.

        Args:
            drain: compute the requests already queued (True) or fail them with
                `BatcherClosedError` (False).
            timeout: longest wait for the worker to finish, in seconds (None = no limit).
        """
        with self._cond:
            self._closed = True
            self._drain = self._drain and drain
            self._cond.notify_all()
            if self._thread.ident is None:  # never started: nobody else will resolve them
                self._fail_queued(BatcherClosedError("the batcher was closed before it started"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ----------------------------------------------------------------- worker

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = self._drop_dead(batch)
            if live:
                self._execute(live)

    def _next_batch(self) -> list[_Job] | None:
        """Wait for work; then wait (at most max_wait after the oldest arrived) for more."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed and not self._drain:
                self._fail_queued(BatcherClosedError("the server stopped before computing it"))
                return None
            if not self._queue:
                return None  # closed and drained
            oldest = self._queue[0].enqueued_at
            # A lone request on a quiet server is answered at once; the wait pays off only
            # while requests come in groups (the last batch had company, or several wait).
            grouped = self._last_batch_size > 1 or len(self._queue) > 1
            while grouped and len(self._queue) < self.max_batch_size and not self._closed:
                remaining = oldest + self.max_wait_s - self.clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            take = min(len(self._queue), self.max_batch_size)
            self._last_batch_size = take
            return [self._queue.popleft() for _ in range(take)]

    def _fail_queued(self, error: Exception) -> None:
        while self._queue:
            job = self._queue.popleft()
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    def _drop_dead(self, batch: list[_Job]) -> list[_Job]:
        """Requests still wanted; the others are resolved without compute."""
        now = self.clock()
        live = []
        for job in batch:
            # False: the caller cancelled its future (gave up); nobody waits for the result.
            if not job.future.set_running_or_notify_cancel():
                self.stats.cancelled += 1
            elif job.deadline is not None and job.deadline <= now:
                self.stats.expired += 1
                job.future.set_exception(
                    DeadlineExpiredError("deadline passed while the request was queued")
                )
            else:
                live.append(job)
        return live

    def _execute(self, jobs: list[_Job]) -> None:
        started = self.clock()
        try:
            values = list(self._run_batch([job.payload for job in jobs]))
            if len(values) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(values)} values for {len(jobs)}")
        except Exception as err:  # the worker must survive anything the model raises
            logger.exception("batch failed", extra={"batch_size": len(jobs)})
            for job in jobs:
                job.future.set_exception(err)
            return
        compute = self.clock() - started
        self.stats.batches += 1
        self.stats.computed += len(jobs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        for job, value in zip(jobs, values):
            if isinstance(value, BaseException):
                job.future.set_exception(value)
            else:
                job.future.set_result(
                    BatchResult(value, started - job.enqueued_at, compute, len(jobs))
                )
