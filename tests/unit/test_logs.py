"""The dispatcher's log handler: the lines of one turn of the event loop go out in
one write, in order; lines from other threads keep their place."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from reconciler.dispatch.logs import LineFormatter, TurnBufferedHandler, lines_per_turn


class Writes:
    """A stream that keeps each write call apart."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[str]:
        return "".join(self.calls).splitlines()


def root_writing_to(formatter: logging.Formatter) -> Iterator[Writes]:
    """The root logger with one TurnBufferedHandler writing through `formatter`."""
    writes = Writes()
    handler = TurnBufferedHandler(writes)  # type: ignore[arg-type]
    handler.setFormatter(formatter)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield writes
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


@pytest.fixture
def stream() -> Iterator[Writes]:
    yield from root_writing_to(logging.Formatter("%(levelname)s %(message)s"))


log = logging.getLogger("reconciler.dispatch.test")


def test_the_lines_of_one_turn_go_out_in_one_write_at_its_end(stream: Writes) -> None:
    async def main() -> tuple[list[str], list[str]]:
        with lines_per_turn(asyncio.get_running_loop()):
            for n in range(3):
                log.info("attempt %d", n)
            during = list(stream.calls)
            await asyncio.sleep(0)  # the turn ends
            log.info("attempt 3")
            await asyncio.sleep(0)
            return during, list(stream.calls)

    during, after = asyncio.run(main())
    assert during == []
    assert after == ["INFO attempt 0\nINFO attempt 1\nINFO attempt 2\n", "INFO attempt 3\n"]


def test_a_line_from_another_thread_comes_after_what_is_pending(stream: Writes) -> None:
    async def main() -> None:
        with lines_per_turn(asyncio.get_running_loop()):
            log.info("on the loop")
            other = threading.Thread(target=log.warning, args=("from a thread",))
            other.start()
            other.join()
            log.info("on the loop again")

    asyncio.run(main())
    assert stream.lines == [
        "INFO on the loop",
        "WARNING from a thread",
        "INFO on the loop again",
    ]


def test_leaving_writes_what_is_pending_and_then_every_line_at_once(stream: Writes) -> None:
    async def main() -> None:
        with lines_per_turn(asyncio.get_running_loop()):
            log.info("last of the loop")  # the loop never turns again inside

    asyncio.run(main())
    assert stream.calls == ["INFO last of the loop\n"]
    log.info("after")
    assert stream.calls[-1] == "INFO after\n"


def test_without_a_loop_each_line_is_written_at_once(stream: Writes) -> None:
    log.info("one")
    log.error("two")
    assert stream.calls == ["INFO one\n", "ERROR two\n"]


# -- serve's line format ------------------------------------------------------------


def record(
    message: str, level: int = logging.INFO, created: float = 1764817334.842
) -> logging.LogRecord:
    made = logging.LogRecord("reconciler.dispatch", level, __file__, 1, message, None, None)
    made.created, made.msecs = created, int((created - int(created)) * 1000)
    return made


@pytest.mark.parametrize("process_id", [False, True])
def test_serve_lines_read_as_the_standard_format_would_write_them(process_id: bool) -> None:
    pid = " [%(process)d]" if process_id else ""
    standard = logging.Formatter(f"%(asctime)s %(levelname)s{pid} %(message)s")
    ours = LineFormatter(process_id=process_id)
    for created in (1764817334.842, 1764817334.999, 1764817335.0, 1764817335.001):
        line = record("attempt delivery=msg_1", logging.WARNING, created)
        assert ours.format(line) == standard.format(line)


def test_an_exception_still_comes_with_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = LineFormatter().format(failed)
    assert text.splitlines()[0].endswith(" ERROR failed")
    assert "ValueError: boom" in text
