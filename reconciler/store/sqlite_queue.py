"""The delivery queue on SQLite: intake, claims under a lease, outcomes, replay.

Each method is one transaction. No transaction stays open while a request is
being sent: a worker claims (one short transaction), sends, then records the
outcomes (another).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from reconciler.ids import new_delivery_id
from reconciler.store.queue import (
    ATTEMPT_COLUMNS,
    AttemptRecord,
    AttemptResult,
    Claim,
    DeliveryRecord,
    EventKey,
    EventRecord,
    IntakeResult,
    attempt_row,
    clean_text,
    refuse_nul,
    slot_groups,
    with_slots,
)

DELIVERY_COLUMNS = (
    "d.id, d.event_id, e.type, d.organization, d.webhook, d.status, d.attempts, d.due_at, "
    "d.created_at, d.updated_at, d.last_status, d.last_error"
)
# A delivery's event: the same id in another organization is another event.
EVENT_OF_DELIVERY = "e.organization = d.organization AND e.id = d.event_id"


class SqliteQueue:
    _db: sqlite3.Connection
    _write: Callable[..., AbstractContextManager[sqlite3.Connection]]
    _pause: Callable[[sqlite3.Connection, str, str, str, str], None]  # from SqliteStore

    # -- intake ---------------------------------------------------------------

    def add_event(self, event: EventRecord, now: float) -> IntakeResult:
        """Store the event and one delivery per matching enabled webhook, at once."""
        return self.add_events([event], now)[0]

    def add_events(self, events: Sequence[EventRecord], now: float) -> list[IntakeResult]:
        """add_event for many events in one transaction (the intake's group commit)."""
        return self.add_events_and_claim(events, now, "", 0, 0.0)[0]

    def add_events_and_claim(
        self, events: Sequence[EventRecord], now: float, owner: str, limit: int, lease: float
    ) -> tuple[list[IntakeResult], list[Claim]]:
        """add_events, with up to `limit` of the new deliveries stored claimed by
        `owner` under a lease, as claim() would leave them; returns those claims too."""
        with self._write() as db:
            return self._add_events_in(db, events, now, owner, limit, lease)

    def _add_events_in(
        self,
        db: sqlite3.Connection,
        events: Sequence[EventRecord],
        now: float,
        owner: str,
        limit: int,
        lease: float,
    ) -> tuple[list[IntakeResult], list[Claim]]:
        refuse_nul(events)
        keys = list(dict.fromkeys(event.key for event in events))
        # (organization, id) -> the event's deliveries, stored before or just now
        known: dict[EventKey, int] = {
            EventKey(organization, event_id): deliveries
            for organization, event_id, deliveries in _rows(
                db,
                "SELECT json_group_array(json_array(e.organization, e.id, e.deliveries)) "
                "FROM json_each(?) k JOIN events e "
                "ON e.organization = k.value ->> 0 AND e.id = k.value ->> 1",
                (_json(keys),),
            )
        }
        targets: dict[tuple[str, str], list[list[str]]] = {}  # (org, type) -> [name, spec]
        event_rows: list[list[Any]] = []
        delivery_rows: list[list[str]] = []
        results: list[IntakeResult] = []
        claims: list[Claim] = []
        for event in events:
            key = event.key
            if key in known:
                results.append(
                    IntakeResult(event.id, event.organization, known[key], duplicate=True)
                )
                continue
            matching = (event.organization, event.type)
            names = targets.get(matching)
            if names is None:
                names = targets[matching] = sorted(
                    _rows(
                        db,
                        "SELECT json_group_array(json_array(name, spec)) FROM webhooks "
                        "WHERE organization = ? "
                        "AND paused_reason IS NULL AND json_extract(spec, '$.event') = ? "
                        "AND coalesce(json_extract(spec, '$.enabled'), 1) = 1",
                        matching,
                    )
                )
            known[key] = len(names)
            event_rows.append(
                [
                    event.id,
                    event.type,
                    event.organization,
                    event.name,
                    event.description,
                    event.time,
                    len(names),
                ]
            )
            for name, spec in names:
                row = [new_delivery_id(), event.id, event.organization, name, "pending", None, None]
                if len(claims) < limit:
                    row[4:] = "in_flight", owner, _real(now + lease)
                    claims.append(Claim(row[0], 1, event, event.organization, name, spec, None))
                delivery_rows.append(row)
            results.append(IntakeResult(event.id, event.organization, len(names), duplicate=False))
        db.execute(
            "INSERT INTO events (id, type, organization, name, description, time, deliveries, "
            "received_at) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, "
            "value ->> 4, value ->> 5, value ->> 6, ?1 FROM json_each(?2)",
            (now, _json(event_rows)),
        )
        db.execute(
            "INSERT INTO deliveries (id, event_id, organization, webhook, status, attempts, "
            "due_at, created_at, updated_at, lease_owner, lease_expires) SELECT value ->> 0, "
            "value ->> 1, value ->> 2, value ->> 3, value ->> 4, 0, ?1, ?1, ?1, value ->> 5, "
            "CAST(value ->> 6 AS REAL) FROM json_each(?2)",
            (now, _json(delivery_rows)),
        )
        return results, self._slots_in(db, claims, now)

    # -- claims -----------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, now: float, lease: float, event: EventKey | None = None
    ) -> list[Claim]:
        """Take up to `limit` due deliveries (or ones whose lease ran out) for `owner`;
        with `event`, only that event's."""
        with self._write(durable=False) as db:
            return self._claim_in(db, owner, limit, now, lease, event)

    def _claim_in(
        self,
        db: sqlite3.Connection,
        owner: str,
        limit: int,
        now: float,
        lease: float,
        event: EventKey | None = None,
    ) -> list[Claim]:
        if event is not None:
            ids = _rows(
                db,
                "SELECT json_group_array(id) FROM (SELECT id FROM deliveries "
                "WHERE organization = ? AND event_id = ? AND ((status = 'pending' "
                "AND due_at <= ?) OR (status = 'in_flight' AND lease_expires <= ?)) LIMIT ?)",
                (event.organization, event.id, now, now, limit),
            )
        else:
            ids = _rows(
                db,
                "SELECT json_group_array(id) FROM (SELECT id FROM deliveries "
                "WHERE status = 'pending' AND due_at <= ? ORDER BY due_at LIMIT ?)",
                (now, limit),
            )
        if len(ids) < limit and event is None:
            ids += _rows(
                db,
                "SELECT json_group_array(id) FROM (SELECT id FROM deliveries "
                "WHERE status = 'in_flight' AND lease_expires <= ? "
                "ORDER BY lease_expires LIMIT ?)",
                (now, limit - len(ids)),
            )
        if not ids:
            return []
        taken = _json(ids)
        # A slot kept from before goes with the claim (rate_slot), and is the
        # claim's alone from now on.
        rows = _rows(
            db,
            "SELECT json_group_array(json_array(d.id, d.attempts, e.id, e.type, "
            "e.organization, e.name, e.description, e.time, d.organization, d.webhook, "
            "w.spec, w.paused_reason, d.retry_base, d.rate_slot)) "
            f"FROM deliveries d JOIN events e ON {EVENT_OF_DELIVERY} "
            "LEFT JOIN webhooks w ON w.organization = d.organization AND w.name = d.webhook "
            "WHERE d.id IN (SELECT value FROM json_each(?))",
            (taken,),
        )
        db.execute(
            "UPDATE deliveries SET status = 'in_flight', lease_owner = ?, "
            "lease_expires = ?, updated_at = ?, rate_slot = NULL "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (owner, now + lease, now, taken),
        )
        claims = [
            Claim(
                delivery_id=r[0],
                attempt=r[1] + 1,
                event=EventRecord(r[2], r[3], r[4], r[5], r[6], r[7]),
                organization=r[8],
                webhook=r[9],
                spec=r[10],
                paused_reason=r[11],
                retry_number=r[1] - r[12] + 1,
                rate_slot=r[13],
            )
            for r in rows
        ]
        return self._slots_in(db, claims, now)

    def _slots_in(self, db: sqlite3.Connection, claims: list[Claim], now: float) -> list[Claim]:
        """Give the claims of rate-limited webhooks their slots (queue.with_slots):
        one statement for the batch, none when no webhook in it has a rate_limit."""
        groups = slot_groups(claims)
        if not groups:
            return claims
        spans = [
            [org, name, _real(interval * fresh)]
            for (org, name), (interval, fresh) in groups.items()
        ]
        taken = db.execute(
            "INSERT INTO rate_limit_slots (organization, webhook, next_free, held_until) "
            "SELECT value ->> 0, value ->> 1, ?1 + CAST(value ->> 2 AS REAL), 0 "
            "FROM json_each(?2) WHERE true ON CONFLICT (organization, webhook) DO UPDATE "
            "SET next_free = max(next_free, ?1) + (excluded.next_free - ?1) "
            "RETURNING organization, webhook, next_free, held_until",
            (now, _json(spans)),
        ).fetchall()
        return with_slots(claims, groups, {(o, w): (f, h) for o, w, f, h in taken})

    def hold(self, organization: str, webhook: str, until: float) -> None:
        with self._write(durable=False) as db:
            db.execute(
                "INSERT INTO rate_limit_slots (organization, webhook, next_free, held_until) "
                "VALUES (?1, ?2, ?3, ?3) ON CONFLICT (organization, webhook) DO UPDATE "
                "SET held_until = max(held_until, ?3), next_free = max(next_free, ?3)",
                (organization, webhook, until),
            )

    def holds(self, now: float) -> dict[tuple[str, str], float]:
        return {
            (organization, webhook): until
            for organization, webhook, until in self._db.execute(
                "SELECT organization, webhook, held_until FROM rate_limit_slots "
                "WHERE held_until > ?",
                (now,),
            )
        }

    def finish(self, results: Sequence[AttemptResult], owner: str, now: float) -> int:
        """Record attempts and move each delivery on; ignores deliveries no longer ours.

        Returns how many were recorded. A few statements for the whole batch: the
        deliveries still leased to `owner` are looked up once, then updated and their
        attempts inserted together (nobody else can write in between).
        """
        with self._write(durable=False) as db:
            return self._finish_in(db, results, owner, now)

    def finish_and_claim(
        self, results: Sequence[AttemptResult], owner: str, now: float, limit: int, lease: float
    ) -> list[Claim]:
        """finish(), then claim() up to `limit`, in one transaction: a worker hands in
        what it sent and takes what to send next at once, with one wait for the
        database thread instead of two."""
        with self._write(durable=False) as db:
            self._finish_in(db, results, owner, now)
            return self._claim_in(db, owner, limit, now, lease) if limit > 0 else []

    def _finish_in(
        self, db: sqlite3.Connection, results: Sequence[AttemptResult], owner: str, now: float
    ) -> int:
        deferred = [
            [r.delivery_id, _real(r.next_due), r.keeps_slot]
            for r in results
            if r.outcome == "deferred"
        ]
        sent = [r for r in results if r.outcome != "deferred"]
        if deferred:
            db.execute(
                "UPDATE deliveries SET status = 'pending', due_at = CAST(v.due AS REAL), "
                "lease_owner = NULL, lease_expires = NULL, updated_at = ?1, "
                "rate_slot = CASE WHEN v.keeps THEN CAST(v.due AS REAL) END "
                "FROM (SELECT value ->> 0 AS id, value ->> 1 AS due, value ->> 2 AS keeps "
                "FROM json_each(?2)) v "
                "WHERE deliveries.id = v.id AND status = 'in_flight' AND lease_owner = ?3",
                (now, _json(deferred), owner),
            )
        if not sent:
            return 0
        ours = set(
            _rows(
                db,
                "SELECT json_group_array(id) FROM deliveries "
                "WHERE id IN (SELECT value FROM json_each(?)) "
                "AND status = 'in_flight' AND lease_owner = ?",
                (_json([r.delivery_id for r in sent]), owner),
            )
        )
        recorded: list[AttemptResult] = []
        for r in sent:
            if r.delivery_id in ours:
                ours.discard(r.delivery_id)  # the first result of a delivery counts
                recorded.append(r)
        if not recorded:
            return 0
        db.execute(
            "UPDATE deliveries SET status = v.status, attempts = attempts + v.delta, "
            "due_at = CAST(v.due AS REAL), lease_owner = NULL, lease_expires = NULL, "
            "updated_at = ?1, last_status = v.code, last_error = v.error "
            "FROM (SELECT value ->> 0 AS id, value ->> 1 AS status, value ->> 2 AS delta, "
            "value ->> 3 AS due, value ->> 4 AS code, value ->> 5 AS error "
            "FROM json_each(?2)) v WHERE deliveries.id = v.id",
            (
                now,
                _json(
                    [
                        [
                            r.delivery_id,
                            {"retry": "pending"}.get(r.outcome, r.outcome),
                            1 if r.sent else 0,
                            _real(r.next_due),
                            r.status,
                            clean_text(r.error),
                        ]
                        for r in recorded
                    ]
                ),
            ),
        )
        rows = [attempt_row(r) for r in recorded]
        for row in rows:
            row[2:4] = _real(row[2]), _real(row[3])
        db.execute(
            f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) "
            "SELECT value ->> 0, value ->> 1, CAST(value ->> 2 AS REAL), "
            "CAST(value ->> 3 AS REAL), value ->> 4, value ->> 5, value ->> 6, value ->> 7, "
            "value ->> 8 FROM json_each(?)",
            (_json(rows),),
        )
        for r in recorded:
            if r.pause_webhook:
                self._pause_in(db, r.delivery_id, r.pause_webhook)
        return len(recorded)

    def _pause_in(self, db: sqlite3.Connection, delivery_id: str, reason: str) -> None:
        org, name = db.execute(
            "SELECT organization, webhook FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        self._pause(db, org, name, reason, "dispatcher")

    def release(self, owner: str, now: float) -> int:
        """Give back every delivery `owner` holds, due at once (a clean shutdown)."""
        with self._write() as db:
            return db.execute(
                "UPDATE deliveries SET status = 'pending', due_at = ?, lease_owner = NULL, "
                "lease_expires = NULL, updated_at = ? "
                "WHERE status = 'in_flight' AND lease_owner = ?",
                (now, now, owner),
            ).rowcount

    def release_dead(self, alive: Callable[[str], bool], now: float) -> int:
        """Give back deliveries held by owners that `alive` says are gone."""
        with self._write() as db:
            owners = [
                owner
                for (owner,) in db.execute(
                    "SELECT DISTINCT lease_owner FROM deliveries WHERE status = 'in_flight'"
                )
                if owner is not None and not alive(owner)
            ]
            released = 0
            for owner in owners:
                released += db.execute(
                    "UPDATE deliveries SET status = 'pending', due_at = ?, lease_owner = NULL, "
                    "lease_expires = NULL, updated_at = ? "
                    "WHERE status = 'in_flight' AND lease_owner = ?",
                    (now, now, owner),
                ).rowcount
        return released

    def cancel_deliveries(self, organization: str, webhook: str, reason: str, now: float) -> int:
        with self._write() as db:
            return self._cancel_in(db, [(organization, webhook)], reason, now)

    def _cancel_in(
        self, db: sqlite3.Connection, webhooks: list[tuple[str, str]], reason: str, now: float
    ) -> int:
        cancelled = 0
        for organization, webhook in webhooks:
            cancelled += db.execute(
                "UPDATE deliveries SET status = 'cancelled', due_at = NULL, lease_owner = NULL, "
                "lease_expires = NULL, last_error = ?, updated_at = ? "
                "WHERE organization = ? AND webhook = ? AND status IN ('pending', 'in_flight')",
                (reason, now, organization, webhook),
            ).rowcount
        return cancelled

    # -- operations -----------------------------------------------------------

    def deliveries(
        self,
        *,
        status: str | None = None,
        organization: str | None = None,
        webhook: str | None = None,
        event: EventKey | None = None,
        since: float | None = None,
        limit: int = 100,
        organizations: Sequence[str] | None = None,
    ) -> list[DeliveryRecord]:
        """Newest first. `event`: that event's (an id names one only with its
        organization). `organizations`: only these (an API token's scope)."""
        query = (
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON {EVENT_OF_DELIVERY} "
            "WHERE 1=1"
        )
        args: list[Any] = []
        for column, value in (
            ("d.status", status),
            ("d.organization", organization),
            ("d.webhook", webhook),
        ):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        if event is not None:
            query += " AND d.organization = ? AND d.event_id = ?"
            args += [event.organization, event.id]
        if since is not None:
            query += " AND d.updated_at >= ?"
            args.append(since)
        if organizations is not None:
            query += f" AND d.organization IN ({', '.join('?' * len(organizations))})"
            args.extend(organizations)
        query += " ORDER BY d.created_at DESC, d.id LIMIT ?"
        args.append(limit)
        return [DeliveryRecord(*row) for row in self._db.execute(query, args)]

    def delivery(self, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
        row = self._db.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON {EVENT_OF_DELIVERY} "
            "WHERE d.id = ?",
            (delivery_id,),
        ).fetchone()
        if row is None:
            return None
        attempts = [
            AttemptRecord(
                number,
                started,
                duration,
                outcome,
                status,
                json.loads(headers or "{}"),
                excerpt or "",
                error,
            )
            for number, started, duration, outcome, status, headers, excerpt, error in (
                self._db.execute(
                    "SELECT number, started_at, duration_ms, outcome, status, response_headers, "
                    "response_excerpt, error FROM attempts WHERE delivery_id = ? ORDER BY id",
                    (delivery_id,),
                )
            )
        ]
        return DeliveryRecord(*row), attempts

    def event(self, key: EventKey) -> EventRecord | None:
        row = self._db.execute(
            "SELECT id, type, organization, name, description, time FROM events "
            "WHERE organization = ? AND id = ?",
            (key.organization, key.id),
        ).fetchone()
        return EventRecord(*row) if row else None

    def replay(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        """Queue finished deliveries again, due at once, keeping their id (webhook-id)."""
        replayed = []
        with self._write() as db:
            for delivery_id in delivery_ids:
                changed = db.execute(
                    "UPDATE deliveries SET status = 'pending', due_at = ?, updated_at = ?, "
                    "last_error = NULL, retry_base = attempts WHERE id = ? AND status IN "
                    "('failed', 'cancelled', 'delivered')",
                    (now, now, delivery_id),
                ).rowcount
                if changed:
                    replayed.append(delivery_id)
        return replayed

    def oldest_due(self, now: float) -> float | None:
        """The due time of the longest-waiting due delivery, if any is due."""
        row = self._db.execute(
            "SELECT min(due_at) FROM deliveries WHERE status = 'pending' AND due_at <= ?",
            (now,),
        ).fetchone()
        return row[0] if row else None

    def queue_counts(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
        )

    def iter_event_keys(self) -> Iterator[EventKey]:
        for organization, event_id in self._db.execute(
            "SELECT organization, id FROM events ORDER BY received_at"
        ):
            yield EventKey(organization, event_id)


def _json(value: Any) -> str:
    """A batch as one JSON parameter (text values in it must hold no NUL: SQLite reads
    them out as C strings)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _real(value: float | None) -> str | None:
    """A float for a JSON parameter: as text, which SQLite reads back exactly (a JSON
    number would come back rounded to 15 digits)."""
    return None if value is None else repr(float(value))


def _rows(db: sqlite3.Connection, query: str, args: Sequence[Any]) -> list[Any]:
    """The one JSON array `query` aggregates its rows into, as Python.

    Statements here take and give a whole batch as one JSON value: the sqlite3
    module releases and retakes the GIL at every row it steps through, and each
    retake waits for the event loop's thread, so one row per statement (rather
    than one per delivery) is what keeps the database thread from crawling while
    the loop is busy (docs/benchmarks.md, Dispatcher)."""
    return json.loads(db.execute(query, args).fetchone()[0])
