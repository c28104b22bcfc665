"""Open the live state named by a URL: sqlite:///path (the default) or postgresql://."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.errors import StateError
from reconciler.store.base import (
    AuditEntry,
    AuditRecord,
    LiveWebhook,
    StateInfo,
    Store,
    Write,
)

DEFAULT_STATE = "sqlite:///.reconciler/state.db"

__all__ = [
    "DEFAULT_STATE",
    "AuditEntry",
    "AuditRecord",
    "LiveWebhook",
    "StateInfo",
    "Store",
    "Write",
    "open_store",
    "state_url",
]


def state_url(explicit: str | None) -> str:
    return explicit or os.environ.get("RECONCILER_STATE") or DEFAULT_STATE


def open_store(url: str, *, must_exist: bool = False) -> Store:
    """Open the state; with must_exist, a missing SQLite file is an error rather than
    a new empty state (for commands that only read)."""
    if url.startswith("sqlite:///"):
        from reconciler.store.sqlite import SqliteStore

        path = Path(url.removeprefix("sqlite:///"))
        if must_exist and not path.exists():
            raise StateError(
                f"no state at {path}: nothing was applied there yet (check --state or "
                "RECONCILER_STATE)"
            )
        return SqliteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            raise StateError(
                "the PostgreSQL backend needs psycopg: pip install 'reconciler[postgres]'"
            ) from None
        from reconciler.store.postgres import PostgresStore

        return PostgresStore(url)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise StateError(f"unknown state URL scheme {scheme!r}: use sqlite:///PATH or postgresql://...")
