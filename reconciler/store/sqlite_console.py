"""The console's sessions and page queries on SQLite (store/console.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from reconciler.store.base import AuditEntry, LiveWebhook, audit_entry_from_row
from reconciler.store.console import (
    SESSION_COLUMNS,
    DeliveryFilter,
    DeliveryPage,
    HistoryFilter,
    MinuteCount,
    SessionRecord,
    WebhookFilter,
    WebhookOutcomes,
    attempt_minutes_query,
    delivery_walks,
    history_page_query,
    merge_delivery_walks,
    minute_count,
    outcomes_of,
    outcomes_query,
    session_from_row,
    webhook_page_query,
)
from reconciler.store.queue import DeliveryRecord


def _any_of(names: Sequence[str]) -> tuple[str, list[Any]]:
    return f"IN ({', '.join('?' * len(names))})", list(names)


class SqliteConsole:
    _db: sqlite3.Connection
    _write: Callable[..., AbstractContextManager[sqlite3.Connection]]

    def add_session(self, session: SessionRecord) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT INTO console_sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session.id_hash,
                    session.token_id,
                    session.csrf_secret,
                    session.created_at,
                    session.idle_expires_at,
                    session.expires_at,
                ),
            )

    def session(self, id_hash: str) -> SessionRecord | None:
        row = self._db.execute(
            f"SELECT {SESSION_COLUMNS} FROM console_sessions WHERE id_hash = ?", (id_hash,)
        ).fetchone()
        return session_from_row(row) if row is not None else None

    def touch_session(self, id_hash: str, idle_expires_at: float) -> None:
        with self._write(durable=False) as db:
            db.execute(
                "UPDATE console_sessions SET idle_expires_at = min(?, expires_at) "
                "WHERE id_hash = ?",
                (idle_expires_at, id_hash),
            )

    def delete_session(self, id_hash: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))

    def delete_expired_sessions(self, now: float) -> int:
        with self._write() as db:
            return int(
                db.execute(
                    "DELETE FROM console_sessions WHERE idle_expires_at <= ? OR expires_at <= ?",
                    (now, now),
                ).rowcount
            )

    def webhook_page(self, query: WebhookFilter) -> list[LiveWebhook]:
        sql, args = webhook_page_query(
            "?", _any_of, "(spec ->> '$.event')", "json_type(spec, '$.enabled')", query
        )
        return [LiveWebhook(*row) for row in self._db.execute(sql, args)]

    def webhook_outcomes(
        self, keys: Sequence[tuple[str, str]], since: float
    ) -> dict[tuple[str, str], WebhookOutcomes]:
        if not keys:
            return {}
        sql, args = outcomes_query("?", keys, since)
        return outcomes_of(keys, self._db.execute(sql, args).fetchall())

    def delivery_page(self, query: DeliveryFilter) -> DeliveryPage:
        results = []
        for walk in delivery_walks("?", _any_of, query):
            bound = None if walk.bound is None else self._db.execute(*walk.bound).fetchone()
            found = [DeliveryRecord(*row) for row in self._db.execute(*walk.matches(bound))]
            results.append((found, bound))
        return merge_delivery_walks(query, results)

    def history_page(self, query: HistoryFilter) -> list[AuditEntry]:
        sql, args = history_page_query("?", _any_of, query)
        return [audit_entry_from_row(row) for row in self._db.execute(sql, args).fetchall()]

    def attempt_minutes(
        self, organizations: Sequence[str] | None, start: float, end: float
    ) -> list[MinuteCount]:
        sql, args = attempt_minutes_query(
            "?", _any_of, "CAST(a.started_at / 60 AS INTEGER)", organizations, start, end
        )
        return [minute_count(row) for row in self._db.execute(sql, args)]
