"""Server interceptors that keep bad input and overload from looking like server faults.

- `MalformedRequestGuard`: bytes that do not parse as the method's request message (random
  bytes, a truncated varint, a string field that is not UTF-8) are answered
  `INVALID_ARGUMENT`. Without it gRPC answers `INTERNAL "Exception deserializing request!"`,
  which reads as a server fault.
- `DataCallLimiter`: at most `limit` concurrent calls of the data methods; more are answered
  `RESOURCE_EXHAUSTED` at once. Health checks and reflection are not counted, so an
  orchestrator's probe answers under any data load (gRPC's own `maximum_concurrent_rpcs`
  counts every method alike, and a busy replica would then fail its health checks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc


class MalformedRequest:
    """What the guarded deserializer returns instead of raising."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as err:  # noqa: BLE001 (any parse failure is the caller's bad input)
            return MalformedRequest(err)

    return deserialize


def _refuse(context: grpc.ServicerContext, request: MalformedRequest) -> None:
    context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"malformed request message ({type(request.error).__name__})",
    )


def _checked(requests: Iterator, context: grpc.ServicerContext) -> Iterator:
    for request in requests:
        if isinstance(request, MalformedRequest):
            _refuse(context, request)
        yield request


# Attributes gRPC reads off a behaviour (the health service's non-blocking Watch sets them);
# a wrapper must carry them, or the call would run in the blocking mode.
_BEHAVIOUR_ATTRIBUTES = ("experimental_non_blocking", "experimental_thread_pool")


def _like(wrapper: Callable, behavior: Callable) -> Callable:
    for name in _BEHAVIOUR_ATTRIBUTES:
        if hasattr(behavior, name):
            setattr(wrapper, name, getattr(behavior, name))
    return wrapper


def _guard_unary_request(behavior: Callable) -> Callable:
    def guarded(request, context, *args, **kwargs):
        if isinstance(request, MalformedRequest):
            _refuse(context, request)
        return behavior(request, context, *args, **kwargs)

    return _like(guarded, behavior)


def _guard_stream_request(behavior: Callable) -> Callable:
    def guarded(requests, context, *args, **kwargs):
        return behavior(_checked(requests, context), context, *args, **kwargs)

    return _like(guarded, behavior)


class MalformedRequestGuard(grpc.ServerInterceptor):
    """Answers `INVALID_ARGUMENT` for request bytes that do not parse."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED
        deserializer = _safe(handler.request_deserializer)
        if handler.unary_unary:
            return handler._replace(
                request_deserializer=deserializer,
                unary_unary=_guard_unary_request(handler.unary_unary),
            )
        if handler.unary_stream:
            return handler._replace(
                request_deserializer=deserializer,
                unary_stream=_guard_unary_request(handler.unary_stream),
            )
        if handler.stream_unary:
            return handler._replace(
                request_deserializer=deserializer,
                stream_unary=_guard_stream_request(handler.stream_unary),
            )
        return handler._replace(
            request_deserializer=deserializer,
            stream_stream=_guard_stream_request(handler.stream_stream),
        )


class DataCallLimiter(grpc.ServerInterceptor):
    """At most `limit` concurrent unary calls under `data_prefix`; more get RESOURCE_EXHAUSTED.

    Args:
        limit: concurrent data calls allowed (the server's handler threads are `limit` plus a
            reserve, so health and reflection always find a thread).
        data_prefix: method-name prefix of the counted calls.
    """

    def __init__(self, limit: int, data_prefix: str) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit, self.data_prefix = limit, data_prefix
        self._slots = threading.BoundedSemaphore(limit)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.data_prefix):
            return handler
        if not handler.unary_unary:
            return handler  # the data methods are unary; nothing else is counted
        return handler._replace(unary_unary=self._limited(handler.unary_unary))

    def _limited(self, behavior: Callable) -> Callable:
        def limited(request, context):
            if not self._slots.acquire(blocking=False):
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"request queue is full ({self.limit} calls in flight); back off and retry",
                )
            try:
                return behavior(request, context)
            finally:
                self._slots.release()

        return limited
