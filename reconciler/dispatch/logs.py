"""The dispatcher's log lines, written one turn of the event loop at a time.

`serve` logs a line per attempt. Written one by one, each line is a write to
stderr of its own, a system call per delivery; gathered over one turn of the
event loop, the lines of every attempt that finished in that turn go out in one
write, in order, at the end of the turn. Lines logged from another thread, or
with no loop attached, are written at once, after what is pending, so the order
holds. Every line is an ordinary LogRecord through logging, so whatever hooks
into logging (a filter, another handler, an error tracker's integration) sees it.

`serve --stock` logs through logging's own StreamHandler and Formatter instead:
the same lines, a write each (docs/benchmarks.md has what each path costs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TextIO


def line_format(process_id: bool) -> str:
    """`serve`'s line format, for logging.Formatter."""
    pid = " [%(process)d]" if process_id else ""
    return f"%(asctime)s %(levelname)s{pid} %(message)s"


def serve_handler(stream: TextIO, *, process_id: bool, stock: bool) -> logging.Handler:
    """The handler `serve` logs through: a TurnBufferedHandler with a LineFormatter,
    writing the lines of a turn of the loop together; with `stock`, logging's own
    StreamHandler and Formatter: the same lines, a write each."""
    handler: logging.Handler
    if stock:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(line_format(process_id)))
    else:
        handler = TurnBufferedHandler(stream)
        handler.setFormatter(LineFormatter(process_id=process_id))
    return handler


class LineFormatter(logging.Formatter):
    """`serve`'s lines: `2026-12-04 03:02:14,842 INFO message`, with ` [pid]` after
    the level when several processes share the stream. The date's text is made
    once a second rather than once a line."""

    def __init__(self, process_id: bool = False) -> None:
        super().__init__(line_format(process_id))
        self._date: tuple[int, str] = (-1, "")  # a second and its text, replaced whole

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._date_of(int(record.created))},{int(record.msecs):03d}"

    def _date_of(self, second: int) -> str:
        # One tuple, so that a line formatted on another thread meanwhile never pairs
        # one second with another's text.
        date = self._date
        if date[0] != second:
            date = (second, time.strftime(self.default_time_format, self.converter(second)))
            self._date = date
        return date[1]


class TurnBufferedHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that writes the lines of one turn of the loop together."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def emit(self, record: logging.LogRecord) -> None:
        # logging calls emit under self.lock, and flush takes it: no line is torn.
        if self._loop is None or threading.get_ident() != self._thread:
            self._write_pending()
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._hold(self._loop, line)

    def _hold(self, loop: asyncio.AbstractEventLoop, line: str) -> None:
        """Keep `line` for the end of this turn (call it under self.lock)."""
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            super().flush()

    def _write_pending(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            try:
                self.stream.write(self.terminator.join(lines) + self.terminator)
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "(log lines lost)"}))

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Gather the lines logged on `loop`'s thread (call it from that thread)."""
        with self.lock:  # type: ignore[union-attr]
            self._loop, self._thread = loop, threading.get_ident()

    def detach(self) -> None:
        """Write what is pending; from now on, every line at once."""
        with self.lock:  # type: ignore[union-attr]
            self._loop = None
        self.flush()


@contextlib.contextmanager
def lines_per_turn(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While inside, the root logger's TurnBufferedHandlers gather `loop`'s lines."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, TurnBufferedHandler)]
    for handler in handlers:
        handler.attach(loop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.detach()
