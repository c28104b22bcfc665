"""`serve`'s tuned paths and the stock ones `serve --stock` runs instead.

The tuned HTTP protocol (dispatch/intake_protocol.py) builds on uvicorn's private
request-cycle attributes, so serve runs it only on the uvicorn releases it is tested
on; the stock logging path writes the same lines as the tuned one, a record and a
write each. Serving with either is tested end to end in test_integration_serve.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import uvicorn

from reconciler.dispatch.logs import (
    LineFormatter,
    TurnBufferedHandler,
    lines_per_turn,
    serve_handler,
)
from reconciler.dispatch.server import TUNED_UVICORN, tuned_protocol_fits


class Writes:
    """A stream that keeps each write call apart."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(
    ("version", "fits"),
    [
        ("0.30.0", True),
        ("0.55.0", True),
        ("0.55.9", True),
        ("0.29.0", False),
        ("0.56.0", False),
        ("0.56.0rc1", False),
        ("1.0.0", False),
        ("dev", False),
    ],
)
def test_the_tuned_protocol_runs_only_on_the_uvicorn_releases_it_is_tested_on(
    version: str, fits: bool
) -> None:
    assert tuned_protocol_fits(version) is fits


def test_the_installed_uvicorn_is_one_the_tuned_protocol_is_tested_on() -> None:
    # pyproject.toml admits newer releases; the tuned protocol's tests
    # (test_intake_protocol.py) run on the release installed here, and the range
    # widens only when they pass on a newer one.
    assert tuned_protocol_fits(uvicorn.__version__), (uvicorn.__version__, TUNED_UVICORN)


@pytest.mark.parametrize("process_id", [False, True])
def test_the_stock_handler_writes_the_lines_the_tuned_one_writes(process_id: bool) -> None:
    stock = serve_handler(Writes(), process_id=process_id, stock=True)  # type: ignore[arg-type]
    tuned = serve_handler(Writes(), process_id=process_id, stock=False)  # type: ignore[arg-type]
    assert type(stock) is logging.StreamHandler
    assert type(stock.formatter) is logging.Formatter
    assert isinstance(tuned, TurnBufferedHandler)
    assert isinstance(tuned.formatter, LineFormatter)
    for created in (1764817334.842, 1764817334.999, 1764817335.0):
        made = logging.LogRecord(
            "reconciler.dispatch", logging.INFO, __file__, 1, "m=1", None, None
        )
        made.created, made.msecs = created, int((created - int(created)) * 1000)
        assert stock.format(made) == tuned.format(made)


@pytest.fixture
def root_stock() -> Iterator[Writes]:
    writes = Writes()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [serve_handler(writes, process_id=False, stock=True)]  # type: ignore[arg-type]
    root.setLevel(logging.INFO)
    try:
        yield writes
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_on_the_stock_path_each_line_is_written_at_once(
    root_stock: Writes,
) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record)
            return True

    handler = logging.getLogger().handlers[0]
    handler.addFilter(Keep())
    log = logging.getLogger("reconciler.dispatch.test")

    async def one_turn() -> list[str]:
        with lines_per_turn(asyncio.get_running_loop()):
            log.info("attempt delivery=%s", "msg_1")
            log.info("attempt delivery=%s", "msg_2")
            return list(root_stock.calls)  # before the turn ends

    written = asyncio.run(one_turn())
    assert [line.split(" INFO ")[1] for line in written] == [
        "attempt delivery=msg_1\n",
        "attempt delivery=msg_2\n",
    ]
    assert [r.getMessage() for r in seen] == ["attempt delivery=msg_1", "attempt delivery=msg_2"]
