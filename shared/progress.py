"""Progress bars that behave in a terminal and in a log file.

In a terminal a bar redraws in place, as tqdm does. When the stream is not a terminal (output
redirected to a file, a CI log, a pipe) a redraw would leave thousands of carriage-return
updates in the file, so the bar writes one plain line at most every `LOG_INTERVAL_S` seconds,
plus its final state. `LSC4REC_NO_PROGRESS=1` (or `lsc4rec --no-progress …`) turns every bar
off; messages written through `progress_write` still print.

    for batch in progress_bar(batches, desc="epoch 1/10", enabled=config.progress):
        ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

NO_PROGRESS_ENV = "LSC4REC_NO_PROGRESS"
LOG_INTERVAL_S = 30.0  # at most one progress line this often when writing to a log


def progress_allowed() -> bool:
    """False when the environment turns progress bars off."""
    return os.environ.get(NO_PROGRESS_ENV, "").strip().lower() in ("", "0", "false", "no")


class _LineStream:
    """A file-like wrapper that turns tqdm's in-place redraws into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@cache
def _log_bar_class() -> type:
    """tqdm is imported on the first bar: the device runtime imports this module without it."""
    from tqdm import tqdm

    class _LogBar(tqdm):
        """A bar for logs: a new postfix or description waits for the next timed line."""

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

        def set_description(self, desc=None, refresh=True):
            super().set_description(desc, refresh=False)

    return _LogBar


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    iterable: Iterable | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    enabled: bool = True,
    leave: bool = True,
    unit: str = "it",
    stream: TextIO | None = None,
) -> tqdm:
    """A tqdm bar on `stream` (default stderr): redrawn in a terminal, plain lines in a log.

    Args:
        iterable: what to iterate over (or None and call `update`).
        desc: the label in front of the bar.
        total: the number of steps when `iterable` has no length.
        enabled: False hides the bar (it also hides when `LSC4REC_NO_PROGRESS` is set).
        leave: keep the final state on screen (in a log, the final line is always written).
        unit: what one step is called.
        stream: where the bar goes.
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    disable = not (enabled and progress_allowed())
    if _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave, unit=unit,
                    file=stream)  # fmt: skip
    return _log_bar_class()(
        iterable,
        desc=desc,
        total=total,
        disable=disable,
        leave=True,
        unit=unit,
        file=_LineStream(stream),
        mininterval=LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S,
        ncols=100,
        ascii=True,  # no block characters in log files
    )


def progress_write(message: str, enabled: bool = True) -> None:
    """Print `message` on stdout without breaking a bar being drawn (shown if `enabled`)."""
    if enabled:
        from tqdm import tqdm

        tqdm.write(message)
