"""The dispatcher's log lines, written one turn of the event loop at a time.

`serve` logs a line per attempt. Written one by one, each line is a write to
stderr of its own, a system call per delivery; gathered over one turn of the
event loop, the lines of every attempt that finished in that turn go out in one
write, in order, at the end of the turn. Lines logged from another thread, or
with no loop attached, are written at once, after what is pending, so the order
holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TextIO


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
        if not self._pending:
            self._loop.call_soon(self.flush)
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
