"""Open the live state named by a URL: sqlite:///path (the default) or postgresql://."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.errors import StateError
from reconciler.store.backend import Backend
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
    "Backend",
    "LiveWebhook",
    "StateInfo",
    "Store",
    "Write",
    "open_store",
    "state_url",
]


def state_url(explicit: str | None) -> str:
    return explicit or os.environ.get("RECONCILER_STATE") or DEFAULT_STATE


def open_store(url: str, *, create: bool = False) -> Backend:
    """Open the live state at url.

    The one rule for every command: only the commands that make a state pass
    create=True (`apply`, whose first run starts the state, and `migrate`). Every
    other command opens a state that is there, or fails with NoState naming the URL
    it looked at: a mistyped --state makes no file, folder, schema or table. "There"
    means a SQLite file, not empty, holding reconciler's tables, or a PostgreSQL
    schema holding them. A file that is not a reconciler state (corrupt, truncated,
    another program's) is refused by every command, one line naming it.
    """
    if url.startswith("sqlite:///"):
        from reconciler.store.sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")), create=create)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            raise StateError(
                "the PostgreSQL backend needs psycopg: pip install 'webhook-reconciler[postgres]'"
            ) from None
        from reconciler.store.postgres import PostgresStore

        return PostgresStore(url, create=create)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise StateError(f"unknown state URL scheme {scheme!r}: use sqlite:///PATH or postgresql://...")
