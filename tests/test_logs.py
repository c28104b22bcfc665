"""The dispatcher's log handler: the lines of one turn of the event loop go out in
one write, in order; lines from other threads keep their place."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest

from reconciler.dispatch.logs import TurnBufferedHandler, lines_per_turn


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


@pytest.fixture
def stream() -> Iterator[Writes]:
    writes = Writes()
    handler = TurnBufferedHandler(writes)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield writes
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


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
