"""The worker tests' fixtures: a real SQLite state and a clock the tests move."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    FakeClock,
)
from tests.unit.worker.helpers import START


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    made = SqliteStore(tmp_path / "state.db")
    yield made
    made.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)
