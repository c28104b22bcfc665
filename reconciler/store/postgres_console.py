"""The console's sessions and page queries on PostgreSQL (store/console.py); the
statements of sqlite_console.py in PostgreSQL's dialect."""

from __future__ import annotations

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
    return "= ANY(%s)", [list(names)]


class PostgresConsole:
    _tx: Callable[..., AbstractContextManager[Any]]

    def add_session(self, session: SessionRecord) -> None:
        with self._tx() as cur:
            cur.execute(
                f"INSERT INTO console_sessions ({SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
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
        with self._tx() as cur:
            cur.execute(
                f"SELECT {SESSION_COLUMNS} FROM console_sessions WHERE id_hash = %s", (id_hash,)
            )
            row = cur.fetchone()
        return session_from_row(row) if row is not None else None

    def touch_session(self, id_hash: str, idle_expires_at: float) -> None:
        with self._tx(durable=False) as cur:
            cur.execute(
                "UPDATE console_sessions SET idle_expires_at = LEAST(%s, expires_at) "
                "WHERE id_hash = %s",
                (idle_expires_at, id_hash),
            )

    def delete_session(self, id_hash: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM console_sessions WHERE id_hash = %s", (id_hash,))

    def delete_expired_sessions(self, now: float) -> int:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM console_sessions WHERE idle_expires_at <= %s OR expires_at <= %s",
                (now, now),
            )
            return int(cur.rowcount)

    def webhook_page(self, query: WebhookFilter) -> list[LiveWebhook]:
        sql, args = webhook_page_query(
            "%s", _any_of, "(spec::jsonb ->> 'event')", "(spec::jsonb ->> 'enabled')", query
        )
        with self._tx() as cur:
            cur.execute(sql, args)
            return [LiveWebhook(*row) for row in cur.fetchall()]

    def webhook_outcomes(
        self, keys: Sequence[tuple[str, str]], since: float
    ) -> dict[tuple[str, str], WebhookOutcomes]:
        if not keys:
            return {}
        sql, args = outcomes_query("%s", keys, since)
        with self._tx() as cur:
            cur.execute(sql, args)
            return outcomes_of(keys, cur.fetchall())

    def delivery_page(self, query: DeliveryFilter) -> DeliveryPage:
        results = []
        with self._tx() as cur:
            for walk in delivery_walks("%s", _any_of, query):
                bound = None
                if walk.bound is not None:
                    cur.execute(*walk.bound)
                    bound = cur.fetchone()
                cur.execute(*walk.matches(bound))
                results.append(([DeliveryRecord(*row) for row in cur.fetchall()], bound))
        return merge_delivery_walks(query, results)

    def history_page(self, query: HistoryFilter) -> list[AuditEntry]:
        sql, args = history_page_query("%s", _any_of, query)
        with self._tx() as cur:
            cur.execute(sql, args)
            return [audit_entry_from_row(row) for row in cur.fetchall()]

    def attempt_minutes(
        self, organizations: Sequence[str] | None, start: float, end: float
    ) -> list[MinuteCount]:
        sql, args = attempt_minutes_query(
            "%s", _any_of, "FLOOR(a.started_at / 60)::bigint", organizations, start, end
        )
        with self._tx() as cur:
            cur.execute(sql, args)
            return [minute_count(row) for row in cur.fetchall()]
