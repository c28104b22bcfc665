"""The dispatcher's log lines, written one turn of the event loop at a time.

`serve` logs a line per attempt. Written one by one, each line is a write to
stderr of its own, a system call per delivery; gathered over one turn of the
event loop, the lines of every attempt that finished in that turn go out in one
write, in order, at the end of the turn. Lines logged from another thread, or
with no loop attached, are written at once, after what is pending, so the order
holds.

The line per attempt is the hottest of all: `info_line` hands it, already
rendered, straight to that handler when the handler is where it would go and
gathering is all it would do, skipping the LogRecord and the logging machinery
(in `serve`, a tenth of the event loop's time per delivery). Everywhere else it
is an ordinary `logger.info`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO


class LineFormatter(logging.Formatter):
    """`serve`'s lines: `2026-12-04 03:02:14,842 INFO message`, with ` [pid]` after
    the level when several processes share the stream. The date's text is made
    once a second rather than once a line."""

    def __init__(self, process_id: bool = False) -> None:
        pid = " [%(process)d]" if process_id else ""
        super().__init__(f"%(asctime)s %(levelname)s{pid} %(message)s")
        self.process_id = process_id
        self._date: tuple[int, str] = (-1, "")  # a second and its text, replaced whole

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._date_of(int(record.created))},{int(record.msecs):03d}"

    def line(self, level: int, message: str, created: float) -> str:
        """What format() makes of a record of `message` at `level` made at `created`,
        with no record (and no exception or stack text: the record has none)."""
        second = int(created)
        msecs = int((created - second) * 1000)  # as LogRecord computes it
        pid = f" [{os.getpid()}]" if self.process_id else ""
        name = logging.getLevelName(level)
        return f"{self._date_of(second)},{msecs:03d} {name}{pid} {message}"

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

    def gather(self, level: int, message: str) -> bool:
        """Take a line already rendered as emit() takes a record logged on the loop's
        thread, without the record. False when emit() would do more than gather
        (another thread, no loop attached, a filter, a formatter other than a
        LineFormatter): log it the usual way then."""
        formatter = self.formatter
        if (
            self._loop is None
            or threading.get_ident() != self._thread
            or not isinstance(formatter, LineFormatter)
            or self.filters
            or level < self.level
        ):
            return False
        line = formatter.line(level, message, time.time())
        with self.lock:  # type: ignore[union-attr]
            self._hold(self._loop, line)
        return True

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


def info_line(logger: logging.Logger, msg: str, *args: Any) -> None:
    """logger.info(msg, *args), handed to the one TurnBufferedHandler it would reach
    when that handler only gathers it (see TurnBufferedHandler.gather); through
    logging, record and all, when any other handler or a filter would see it."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _only_handler(logger)
    if handler is None or not handler.gather(logging.INFO, msg % args if args else msg):
        logger.info(msg, *args)


def _only_handler(logger: logging.Logger) -> TurnBufferedHandler | None:
    """The TurnBufferedHandler that alone would handle `logger`'s records, if one does."""
    if logger.filters:
        return None
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += current.handlers
        if len(found) > 1 or not current.propagate:
            break
        current = current.parent
    if len(found) == 1 and isinstance(found[0], TurnBufferedHandler):
        return found[0]
    return None


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
