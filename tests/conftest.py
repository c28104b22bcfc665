"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from reconciler.loader import load_definitions
from reconciler.store.sqlite import SqliteStore


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def problem_lines(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], list[str]]:
    """Load a folder with the working directory set to it, so that each problem's
    path is relative to that folder, as in the example cases' expected.txt."""

    def load(folder: Path) -> list[str]:
        monkeypatch.chdir(folder)
        return [str(problem) for problem in load_definitions(folder).problems]

    return load


# -- PostgreSQL -------------------------------------------------------------------
# Tests of the PostgreSQL backend run against a real server: RECONCILER_TEST_POSTGRES
# (default: the local server, user postgres, database test). Each test run makes its
# own database and drops it afterwards, and each test its own schema in it, so two
# runs never see each other's rows. An unreachable server fails those tests loudly.

POSTGRES = os.environ.get("RECONCILER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    import psycopg

    name = f"reconciler_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES} ({exc}); start it or set "
            "RECONCILER_TEST_POSTGRES, or deselect with -m 'not postgres'",
            pytrace=False,
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            parts = urlsplit(POSTGRES)
            yield urlunsplit(parts._replace(path="/" + name))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """A state URL of its own: a fresh schema in this run's database."""
    return f"{postgres_database}?schema=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A new, empty state on each backend (a SQLite file; a PostgreSQL schema of its
    own), closed after the test. `test_url` is its URL, credentials included."""
    made: Any
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "state.db")
        made.test_url = made.url
    else:
        from reconciler.store.postgres import PostgresStore

        url = request.getfixturevalue("postgres_url")
        made = PostgresStore(url)
        made.test_url = url
    try:
        yield made
    finally:
        made.close()
