"""The gRPC servicer: protobuf ⇄ domain objects, and the project's errors → status codes.

The servicer is thin on purpose. It validates a request (INVALID_ARGUMENT with a message
naming the problem), hands it to the micro-batcher, waits within the call's deadline, and
converts the `CandidateList` back to protobuf. The model work happens in `run_batch`, which
the batcher calls from its one worker thread. No per-user state is kept: the request carries
the history, and `user_id` is never stored or logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, wait
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

import grpc
import numpy as np

from cloud.batching import (
    BatcherClosedError,
    BatchResult,
    DeadlineExpiredError,
    MicroBatcher,
    QueueFullError,
)
from cloud.logs import Throttle
from protos.lsc4rec.v1 import candidates_pb2 as pb
from protos.lsc4rec.v1 import candidates_pb2_grpc as pb_grpc
from shared.candidates import CandidateList

logger = logging.getLogger("lsc4rec.server")

NO_DEADLINE_S = 10 * 365 * 24 * 3600.0  # a "deadline" further away than this means none


class CandidateSource(Protocol):
    """What the servicer needs from a generator (`cloud.generator.CandidateGenerator`)."""

    num_items: int
    model_version: str

    def generate(
        self,
        histories: Sequence[Sequence[int]],
        n: int = 50,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> list[CandidateList]:
        """One list per history, none of its items in the history or its exclusion; raises
        ValueError on a bad request."""


@dataclass(frozen=True)
class RequestLimits:
    """What the server accepts (validated by `ServerConfig`)."""

    default_n: int = 50  # used when a request says n = 0
    max_n: int = 500  # most candidates per request
    max_history_items: int = 1000  # longest history accepted
    max_exclude_items: int = 10_000  # longest exclusion accepted (ids beyond the history)
    max_batch_requests: int = 256  # most requests in one GetCandidatesBatch call
    max_request_id_chars: int = 128  # request ids are logged: keep log lines bounded


@dataclass(frozen=True)
class CandidateRequest:
    """A validated request.

    Attributes:
        history: `[L]` int64 item ids, oldest first.
        n: candidates wanted.
        request_id: the caller's id, echoed back.
        exclude: int64 item ids never to return beyond the history (may be empty).
    """

    history: np.ndarray
    n: int
    request_id: str
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    masked: int = field(init=False)  # distinct items it rules out: history and exclusion

    def __post_init__(self) -> None:
        # Counted once: validation and batch planning both need it (a sort of up to 11,000 ids).
        object.__setattr__(self, "masked", int(np.union1d(self.history, self.exclude).size))


def parse_request(
    message: pb.GetCandidatesRequest, num_items: int, limits: RequestLimits
) -> CandidateRequest:
    """Validate a request against the catalogue and the server's limits.

    Raises:
        ValueError: empty or oversized history, an unknown item id, n out of range, or an
            oversized request id; the message says which.
    """
    if len(message.request_id) > limits.max_request_id_chars:
        raise ValueError(
            f"request_id has {len(message.request_id)} characters; the limit is "
            f"{limits.max_request_id_chars}"
        )
    history = np.array(message.history, dtype=np.int64)
    if history.size == 0:
        raise ValueError("history is empty: send at least one item id")
    if history.size > limits.max_history_items:
        raise ValueError(
            f"history has {history.size} items; the limit is {limits.max_history_items} "
            "(send the most recent ones)"
        )
    bad = history[(history < 1) | (history > num_items)]
    if bad.size:
        raise ValueError(f"unknown item id {int(bad[0])} (ids are 1..{num_items})")
    exclude = np.array(message.exclude, dtype=np.int64)
    if exclude.size > limits.max_exclude_items:
        raise ValueError(
            f"exclude has {exclude.size} items; the limit is {limits.max_exclude_items}"
        )
    bad = exclude[(exclude < 1) | (exclude > num_items)]
    if bad.size:
        raise ValueError(f"exclude: unknown item id {int(bad[0])} (ids are 1..{num_items})")
    n = message.n or limits.default_n
    if not 1 <= n <= limits.max_n:
        raise ValueError(f"n must be in 1..{limits.max_n} (0 = {limits.default_n}), got {n}")
    request = CandidateRequest(history, n, message.request_id, exclude)
    available = num_items - request.masked
    if n > available:
        raise ValueError(
            f"n={n} exceeds the {available} catalogue items outside the history and the "
            f"exclusion (catalogue {num_items})"
        )
    return request


def build_response(
    request: CandidateRequest, result: BatchResult, total_s: float
) -> pb.GetCandidatesResponse:
    """The protobuf answer for one computed request."""
    candidates: CandidateList = result.value
    response = pb.GetCandidatesResponse(
        items=candidates.items.tolist(),
        scores=candidates.scores.tolist(),
        model_version=candidates.model_version,
        request_id=request.request_id,
    )
    response.timing.queue_us = _micros(result.queue_s)
    response.timing.compute_us = _micros(result.compute_s)
    response.timing.total_us = _micros(total_s)
    response.timing.batch_size = result.batch_size
    return response


def _micros(seconds: float) -> int:
    return max(0, round(seconds * 1e6))


def run_batch(
    generator: CandidateSource, requests: list[CandidateRequest]
) -> list[CandidateList | Exception]:
    """Compute a micro-batch with as few generator calls as its requests allow.

    A generator whose top-n is exact (`nested_top_n`: the item LM ranks the whole catalogue)
    answers every request from one call at the largest n, each list cut to its own n: the
    top-n is a prefix of the top-500. Others (beam search) get one call per distinct n. A
    request whose history leaves fewer items than the largest n is computed with its own n.

    Returns:
        per request, its `CandidateList`, or the ValueError that rejected it alone.
    """
    out: list[CandidateList | Exception | None] = [None] * len(requests)
    for n, rows in plan_calls(generator, requests).items():
        lists = _generate_rows(generator, [requests[r] for r in rows], n)
        for row, value in zip(rows, lists):
            out[row] = _cut(value, requests[row].n)
    return out  # type: ignore[return-value]  # every row was filled above


def plan_calls(
    generator: CandidateSource, requests: list[CandidateRequest]
) -> dict[int, list[int]]:
    """{n of a generator call: the request rows it answers}."""
    calls: dict[int, list[int]] = {}
    if getattr(generator, "nested_top_n", False):
        largest = max(request.n for request in requests)
        for row, request in enumerate(requests):
            room = generator.num_items - request.masked
            calls.setdefault(largest if largest <= room else request.n, []).append(row)
        return calls
    for row, request in enumerate(requests):
        calls.setdefault(request.n, []).append(row)
    return calls


def _cut(value: CandidateList | Exception, n: int) -> CandidateList | Exception:
    if isinstance(value, Exception) or len(value) == n:
        return value
    return CandidateList(value.items[:n], value.scores[:n], value.model_version)


def _generate_rows(
    generator: CandidateSource, requests: list[CandidateRequest], n: int
) -> list[CandidateList | Exception]:
    try:
        return list(
            generator.generate(
                [r.history for r in requests], n=n, exclude=[r.exclude for r in requests]
            )
        )
    except ValueError:
        # One request the generator rejects must not fail its batch-mates: retry one by one.
        return [_generate_one(generator, request, n) for request in requests]


def _generate_one(generator: CandidateSource, request: CandidateRequest, n: int):
    try:
        return generator.generate([request.history], n=n, exclude=[request.exclude])[0]
    except ValueError as err:
        return err


class CandidateServicer(pb_grpc.CandidateServiceServicer):
    """`lsc4rec.v1.CandidateService` over a generator and a micro-batcher.

    Args:
        limits: what requests may ask for.
        max_batch_size, max_wait_s, max_queue_size: the micro-batcher's knobs.
        clock: monotonic seconds (the batcher uses the same clock for deadlines).
    """

    def __init__(
        self,
        limits: RequestLimits,
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        max_queue_size: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self._generator: CandidateSource | None = None
        # Clients retry while the model loads: one log record per second, not one per call.
        self._refused_loading = Throttle()
        self.batcher = MicroBatcher(
            self._run_batch, max_batch_size, max_wait_s, max_queue_size, clock=clock
        )

    @property
    def generator(self) -> CandidateSource | None:
        return self._generator

    def set_generator(self, generator: CandidateSource) -> None:
        """Start answering with `generator` (until then calls get UNAVAILABLE)."""
        self._generator = generator
        self._log_refused(self._refused_loading.take())

    def _run_batch(self, requests: list[CandidateRequest]) -> list[CandidateList | Exception]:
        generator = self._generator
        if generator is None:  # cannot happen: requests are refused until one is set
            raise RuntimeError("no generator loaded")
        logger.debug("batch", extra={"batch_size": len(requests)})
        return run_batch(generator, requests)

    # ----------------------------------------------------------------- rpcs

    def GetCandidates(self, request, context):  # noqa: N802 (the name is the rpc's)
        received = self.clock()
        generator = self._require_generator(context)
        try:
            parsed = parse_request(request, generator.num_items, self.limits)
        except ValueError as err:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        [result] = self._compute([parsed], context)
        response = build_response(parsed, result, self.clock() - received)
        _log_request(parsed, response)
        return response

    def GetCandidatesBatch(self, request, context):  # noqa: N802 (the name is the rpc's)
        received = self.clock()
        generator = self._require_generator(context)
        parsed = self._parse_batch(request, generator.num_items, context)
        results = self._compute(parsed, context)
        total = self.clock() - received
        return pb.GetCandidatesBatchResponse(
            responses=[build_response(p, r, total) for p, r in zip(parsed, results)]
        )

    # ----------------------------------------------------------------- helpers

    def _require_generator(self, context) -> CandidateSource:
        generator = self._generator
        if generator is None:
            self._log_refused(self._refused_loading.hit())
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry")
        return generator

    @staticmethod
    def _log_refused(count: int) -> None:
        if count:
            logger.info("refused while loading", extra={"code": "UNAVAILABLE", "calls": count})

    def _parse_batch(self, request, num_items: int, context) -> list[CandidateRequest]:
        count = len(request.requests)
        if not 1 <= count <= self.limits.max_batch_requests:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a batch needs 1..{self.limits.max_batch_requests} requests, got {count}",
            )
        parsed = []
        for index, message in enumerate(request.requests):
            try:
                parsed.append(parse_request(message, num_items, self.limits))
            except ValueError as err:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"requests[{index}]: {err}")
        return parsed

    def _compute(self, requests: list[CandidateRequest], context) -> list[BatchResult]:
        """Queue the requests, wait within the deadline, map failures to status codes."""
        remaining = _time_remaining(context)
        if remaining is not None and remaining <= 0:
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed on arrival")
        deadline = None if remaining is None else self.clock() + remaining
        try:
            futures = self.batcher.submit(requests, deadline)
        except QueueFullError as err:
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        except BatcherClosedError as err:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(err))
        # The call may end early (client cancelled, deadline): drop its queued work.
        context.add_callback(lambda: _cancel(futures))
        _, pending = wait(futures, timeout=None if deadline is None else remaining)
        if pending:
            _cancel(futures)
            _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed in the queue")
        return [_result_or_abort(future, context) for future in futures]


def _time_remaining(context) -> float | None:
    """Seconds left before the call's deadline, or None when the caller set none."""
    remaining = context.time_remaining()
    # gRPC reports "no deadline" as a huge number (about 9e18 s), too large to wait on.
    if remaining is None or remaining > NO_DEADLINE_S:
        return None
    return remaining


def _cancel(futures: list[Future]) -> None:
    for future in futures:
        future.cancel()  # no effect once the worker has started it


def _result_or_abort(future: Future, context) -> BatchResult:
    code, message = grpc.StatusCode.INTERNAL, "candidate generation failed"
    try:
        return future.result(timeout=0)
    except CancelledError:
        code, message = grpc.StatusCode.CANCELLED, "the call was cancelled"
    except DeadlineExpiredError as err:
        code, message = grpc.StatusCode.DEADLINE_EXCEEDED, str(err)
    except BatcherClosedError as err:
        code, message = grpc.StatusCode.UNAVAILABLE, str(err)
    except ValueError as err:  # the generator rejected what validation let through
        code, message = grpc.StatusCode.INVALID_ARGUMENT, str(err)
    except Exception:
        logger.exception("candidate generation failed")
    _abort(context, code, message)


def _abort(context, code: grpc.StatusCode, message: str) -> NoReturn:
    # Client mistakes and overload come in floods: keep them out of the default log level.
    quiet = code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    logger.log(
        logging.DEBUG if quiet else logging.INFO,
        "request failed",
        extra={"code": code.name, "reason": message},
    )
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


def _log_request(request: CandidateRequest, response: pb.GetCandidatesResponse) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "request",
            extra={
                "request_id": request.request_id,
                "history_len": int(request.history.size),
                "n": request.n,
                "batch_size": response.timing.batch_size,
                "queue_us": response.timing.queue_us,
                "total_us": response.timing.total_us,
            },
        )
