"""Wall-clock timing of small calls, for the benchmarks and the cost columns of the tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_calls(fn: Callable[[int], object], iters: int, warmup: int) -> tuple[float, float]:
    """p50 and p95 wall time in ms of `fn(i)` over `iters` calls after `warmup` calls (`i`
    counts every call, warm-up included, so `fn` can walk through its inputs)."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(iters):
        start = time.perf_counter_ns()
        fn(warmup + i)
        times.append((time.perf_counter_ns() - start) / 1e6)
    cuts = statistics.quantiles(times, n=100)
    return statistics.median(times), cuts[94]
