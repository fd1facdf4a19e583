"""The micro-batcher on its own: grouping, bounds, deadlines, failures, closing (no gRPC)."""

from __future__ import annotations

import threading

import pytest

from cloud.batching import (
    BatcherClosedError,
    DeadlineExpiredError,
    MicroBatcher,
    QueueFullError,
)


class HeldWork:
    """run_batch that records its batches and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        self.entered.set()
        assert self.release.wait(30), "test never released the batch"
        return [p * 10 for p in payloads]


@pytest.fixture
def make_batcher():
    made = []

    def make(run_batch, **options) -> MicroBatcher:
        batcher = MicroBatcher(run_batch, **options)
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(drain=False, timeout=30)


def hold_first_batch(batcher: MicroBatcher, work: HeldWork):
    """Submit payload 0 and wait until the worker is computing it (and held)."""
    work.release.clear()
    [future] = batcher.submit([0])
    assert work.entered.wait(30)
    return future


def test_requests_queued_during_a_batch_form_the_next_batch(make_batcher):
    work = HeldWork()
    batcher = make_batcher(work, max_batch_size=8, max_wait_s=0.0, max_queue_size=16)
    first = hold_first_batch(batcher, work)
    futures = batcher.submit([1, 2, 3]) + batcher.submit([4])
    work.release.set()
    assert first.result(30).value == 0
    results = [f.result(30) for f in futures]
    assert [r.value for r in results] == [10, 20, 30, 40]
    assert {r.batch_size for r in results} == {4}
    assert work.batches == [[0], [1, 2, 3, 4]]
    assert batcher.stats.largest_batch == 4


def test_batches_never_exceed_max_batch_size(make_batcher):
    work = HeldWork()
    batcher = make_batcher(work, max_batch_size=2, max_wait_s=0.0, max_queue_size=16)
    first = hold_first_batch(batcher, work)
    futures = batcher.submit([1, 2, 3, 4, 5])
    work.release.set()
    first.result(30)
    assert [f.result(30).value for f in futures] == [10, 20, 30, 40, 50]
    assert [len(b) for b in work.batches] == [1, 2, 2, 1]


def test_a_lone_request_on_a_quiet_batcher_does_not_wait_for_company(make_batcher):
    batcher = make_batcher(lambda p: p, max_batch_size=8, max_wait_s=60.0)
    [future] = batcher.submit([1])
    assert future.result(timeout=30).batch_size == 1  # waiting 60 s would time out


def test_full_queue_refuses_all_or_nothing(make_batcher):
    work = HeldWork()
    batcher = make_batcher(work, max_batch_size=1, max_wait_s=0.0, max_queue_size=3)
    first = hold_first_batch(batcher, work)
    queued = batcher.submit([1, 2])
    with pytest.raises(QueueFullError, match="queue is full"):
        batcher.submit([3, 4])  # only one slot left: none of the two is queued
    assert batcher.queue_depth == 2
    queued += batcher.submit([3])
    assert batcher.stats.rejected == 2
    work.release.set()
    first.result(30)
    assert [f.result(30).value for f in queued] == [10, 20, 30]


def test_expired_request_is_dropped_before_compute(make_batcher):
    now = [100.0]
    work = HeldWork()
    batcher = make_batcher(
        work, max_batch_size=4, max_wait_s=0.0, max_queue_size=8, clock=lambda: now[0]
    )
    first = hold_first_batch(batcher, work)
    [late] = batcher.submit([1], deadline=100.5)
    [fine] = batcher.submit([2], deadline=200.0)
    now[0] = 101.0  # the first deadline passes while the batch before it computes
    work.release.set()
    first.result(30)
    with pytest.raises(DeadlineExpiredError):
        late.result(30)
    assert fine.result(30).value == 20
    assert work.batches == [[0], [2]]  # payload 1 never reached the model
    assert batcher.stats.expired == 1


def test_cancelled_request_is_dropped_before_compute(make_batcher):
    work = HeldWork()
    batcher = make_batcher(work, max_batch_size=4, max_wait_s=0.0, max_queue_size=8)
    first = hold_first_batch(batcher, work)
    gone, kept = batcher.submit([1, 2])
    assert gone.cancel()  # the caller gave up while it was queued
    work.release.set()
    first.result(30)
    assert kept.result(30).value == 20
    assert work.batches == [[0], [2]]
    assert batcher.stats.cancelled == 1


def test_an_exception_value_fails_only_its_request(make_batcher):
    def run(payloads):
        return [ValueError(f"bad {p}") if p < 0 else p for p in payloads]

    batcher = make_batcher(run, max_batch_size=4, max_wait_s=0.05)
    good, bad = batcher.submit([1, -1])
    assert good.result(30).value == 1
    with pytest.raises(ValueError, match="bad -1"):
        bad.result(30)


def test_a_raising_batch_fails_its_requests_and_the_worker_survives(make_batcher):
    calls = []

    def run(payloads):
        calls.append(payloads)
        if len(calls) == 1:
            raise RuntimeError("model crashed")
        return payloads

    batcher = make_batcher(run, max_batch_size=4, max_wait_s=0.0)
    [doomed] = batcher.submit([1])
    with pytest.raises(RuntimeError, match="model crashed"):
        doomed.result(30)
    [later] = batcher.submit([2])
    assert later.result(30).value == 2


def test_close_drains_queued_requests_then_refuses_new_ones(make_batcher):
    work = HeldWork()
    batcher = make_batcher(work, max_batch_size=1, max_wait_s=0.0)
    first = hold_first_batch(batcher, work)
    queued = batcher.submit([1, 2])
    closer = threading.Thread(target=batcher.close, kwargs={"drain": True, "timeout": 30})
    closer.start()
    work.release.set()
    closer.join(30)
    assert first.result(30).value == 0
    assert [f.result(30).value for f in queued] == [10, 20]
    with pytest.raises(BatcherClosedError):
        batcher.submit([3])


def test_close_without_drain_fails_queued_requests(make_batcher):
    work = HeldWork()
    batcher = make_batcher(work, max_batch_size=1, max_wait_s=0.0)
    first = hold_first_batch(batcher, work)
    [queued] = batcher.submit([1])
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False, "timeout": 30})
    closer.start()
    work.release.set()
    closer.join(30)
    assert first.result(30).value == 0  # the running batch still finishes
    with pytest.raises(BatcherClosedError):
        queued.result(30)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_wait_s": -1.0}, "max_wait_s"),
        ({"max_queue_size": 0}, "max_queue_size"),
    ],
)
def test_bad_settings_raise(options, message):
    with pytest.raises(ValueError, match=message):
        MicroBatcher(lambda p: p, **options)
