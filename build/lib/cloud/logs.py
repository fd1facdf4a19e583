"""Structured logs: one JSON object per line, so log shippers and `jq` read them as they are.

    configure_json_logging("info")
    logging.getLogger("lsc4rec.server").info("serving", extra={"port": 50051})
    # {"ts": "2025-01-01T12:00:00.123Z", "level": "info", "logger": "lsc4rec.server",
    #  "msg": "serving", "port": 50051}

Fields passed through `extra=` become top-level keys. Python warnings (a library's deprecation
notice, say) are captured too, as records of the `py.warnings` logger at level "warning", so
that every line on stderr stays JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time
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
