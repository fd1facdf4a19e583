"""Structured logs: one JSON object per line, so log shippers and `jq` read them as they are.

    configure_json_logging("info")
    logging.getLogger("lsc4rec.server").info("serving", extra={"port": 50051})
    # {"ts": "2025-01-01T12:00:00.123Z", "level": "info", "logger": "lsc4rec.server",
    #  "msg": "serving", "port": 50051}

Fields passed through `extra=` become top-level keys. Python warnings (a library's deprecation
notice, say) are captured too, as records of the `py.warnings` logger at level "warning", so
that every line on stderr stays JSON.

gRPC's C core writes its own lines to file descriptor 2, below Python ("E1203 11:42:37.77
29393 ssl_transport_security.cc:2563] Handshake failed ..."). `NativeStderrRouter` puts a
pipe in front of descriptor 2 and turns each such line into a JSON record of the `grpc` logger;
TLS handshake failures, which a port scanner or a misconfigured client produce in floods,
become one record per second at most, with their count (`Throttle`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, then the `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": _iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def _iso_utc(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def configure_json_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send the `lsc4rec.*` loggers and Python warnings to `stream` (default stderr) as JSON lines.

    Args:
        level: debug, info, warning or error.
        stream: where lines go.
    Raises:
        ValueError: an unknown level.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger("lsc4rec")
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    root.propagate = False  # one line per record, not a second plain-text copy
    logging.captureWarnings(True)  # warnings.warn -> the `py.warnings` logger, not bare stderr
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [handler]
    warnings_logger.propagate = False


class Throttle:
    """Counts events and says when to log them: at most one record per `interval_s`, carrying
    the number of events since the previous record.

        count = throttle.hit()
        if count:
            logger.info("refused while loading", extra={"calls": count})
    """

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = 0
        self._last = float("-inf")

    def hit(self) -> int:
        """Count one event; returns the count to log now, or 0 to stay quiet."""
        with self._lock:
            self._pending += 1
            now = self._clock()
            if now - self._last < self.interval_s:
                return 0
            count, self._pending, self._last = self._pending, 0, now
            return count

    def take(self) -> int:
        """The events not logged yet (and forget them): log them before going quiet."""
        with self._lock:
            count, self._pending = self._pending, 0
            if count:
                self._last = self._clock()
            return count


# absl's line prefix: severity, MMDD, time, thread id, file:line]
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)$")
_NATIVE_LEVELS = {
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}
HANDSHAKE_FAILED = "Handshake failed"


class NativeStderrRouter:
    """Makes file descriptor 2 carry JSON lines only, whatever writes to it.

    Descriptor 2 becomes a pipe; a thread reads it line by line and writes to the real stderr:
    JSON lines (our own records) as they are, gRPC C-core lines as JSON records of the `grpc`
    logger, TLS handshake failures throttled to one record per second, and any other line (a
    native library's message) as a record of the `stderr` logger.

        router = NativeStderrRouter().start()
        ...
        router.stop()    # restores descriptor 2 and writes what is pending
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self._formatter = JsonLineFormatter()
        self._handshakes = Throttle(interval_s)
        self._interval_s = interval_s
        self._thread: threading.Thread | None = None

    def start(self) -> NativeStderrRouter:
        sys.stderr.flush()
        self._real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self._thread = threading.Thread(target=self._pump, name="stderr-router", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Put the real stderr back on descriptor 2; the pipe ends and its rest is written."""
        if self._thread is None:
            return
        sys.stderr.flush()
        os.dup2(self._real, 2)  # the last write end of the pipe closes: the reader sees EOF
        self._thread.join(timeout=5)
        os.close(self._real)
        self._thread = None

    def _pump(self) -> None:
        buffer = b""
        while True:
            ready, _, _ = select.select([self._read_end], [], [], self._interval_s)
            if not ready:
                self._flush_handshakes()
                continue
            chunk = os.read(self._read_end, 65536)
            if not chunk:
                break
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                self._route(line.decode("utf-8", "replace"))
        if buffer:
            self._route(buffer.decode("utf-8", "replace"))
        self._flush_handshakes()
        os.close(self._read_end)

    def _route(self, line: str) -> None:
        if not line.strip():
            return
        if line.startswith("{"):
            self._write(line)
            return
        match = _NATIVE_LINE.match(line)
        if match is None:
            self._emit("stderr", logging.WARNING, line.rstrip())
            return
        severity, source, message = match.groups()
        if HANDSHAKE_FAILED in message:
            count = self._handshakes.hit()
            if count:
                self._emit("grpc", logging.WARNING, "TLS handshake failed", failures=count,
                           detail=message, source=source)  # fmt: skip
            return
        self._emit("grpc", _NATIVE_LEVELS[severity], message, source=source)

    def _flush_handshakes(self) -> None:
        count = self._handshakes.take()
        if count:
            self._emit("grpc", logging.WARNING, "TLS handshake failed", failures=count)

    def _emit(self, name: str, level: int, message: str, **fields) -> None:
        record = logging.LogRecord(name, level, "", 0, message, None, None)
        record.__dict__.update(fields)
        self._write(self._formatter.format(record))

    def _write(self, line: str) -> None:
        os.write(self._real, line.encode() + b"\n")
