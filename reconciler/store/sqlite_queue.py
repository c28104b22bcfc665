"""The delivery queue on SQLite: intake, claims under a lease, outcomes, replay.

Each method is one transaction. No transaction stays open while a request is
being sent: a worker claims (one short transaction), sends, then records the
outcomes (another).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from reconciler.ids import new_delivery_id
from reconciler.model import DEFAULT_MAX_IN_FLIGHT
from reconciler.store import health_sql
from reconciler.store.base import AuditRecord
from reconciler.store.breakers import (
    BREAKER_COLUMNS,
    BreakerRecord,
    BreakerReport,
    audit_time,
    breaker_from_row,
    fold_all,
)
from reconciler.store.queue import (
    ATTEMPT_COLUMNS,
    ATTEMPT_READ,
    DELIVERY_COLUMNS,
    EVENT_OF_DELIVERY,
    RETRY_NOW,
    AttemptRecord,
    AttemptResult,
    Claim,
    DeliveryRecord,
    EventKey,
    EventRecord,
    Held,
    IntakeResult,
    WebhookAggregates,
    WebhookQueue,
    attempt_from_row,
    attempt_row,
    clean_text,
    deliveries_query,
    held_reason,
    lease_of,
    refuse_nul,
    slot_groups,
    with_slots,
)


class SqliteQueue:
    _db: sqlite3.Connection
    _write: Callable[..., AbstractContextManager[sqlite3.Connection]]
    _pause: Callable[[sqlite3.Connection, str, str, str, str], None]  # from SqliteStore
    _append_audit: Callable[[sqlite3.Connection, Sequence[AuditRecord], int, str], None]

    # -- intake ---------------------------------------------------------------

    def add_event(self, event: EventRecord, now: float, webhook: str | None = None) -> IntakeResult:
        """Store the event and one delivery per matching enabled webhook, at once;
        with `webhook`, for that webhook alone (if it matches)."""
        with self._write() as db:
            return self._add_events_in(db, [event], now, "", 0, 0.0, webhook)[0][0]

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
        only: str | None = None,
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
        # (org, type) -> [name, spec, why held or None]
        targets: dict[tuple[str, str], list[list[Any]]] = {}
        room: dict[tuple[str, str], int] = {}  # (org, webhook) -> how many it may still take
        event_rows: list[list[Any]] = []
        delivery_rows: list[list[object]] = []
        results: list[IntakeResult] = []
        claims: list[Claim] = []
        for event in events:
            key = event.key
            if key in known:
                results.append(
                    IntakeResult(
                        event.id,
                        event.organization,
                        known[key],
                        duplicate=True,
                        event_type=event.type,
                    )
                )
                continue
            matching = (event.organization, event.type)
            names = targets.get(matching)
            if names is None:
                found = _rows(
                    db,
                    "SELECT json_group_array(json_array(w.name, w.spec, "
                    f"{_ROOM.format(o='w.organization', h='w.name') if limit else '0'}, "
                    "w.paused_reason, w.updated_at)) "
                    "FROM webhooks w WHERE w.organization = :organization "
                    "AND json_extract(w.spec, '$.event') = :type "
                    "AND coalesce(json_extract(w.spec, '$.enabled'), 1) = 1 "
                    "AND (:only IS NULL OR w.name = :only)",
                    {
                        "organization": event.organization,
                        "type": event.type,
                        "now": now,
                        "cap": DEFAULT_MAX_IN_FLIGHT,
                        "only": only,
                    },
                )
                names = targets[matching] = sorted(
                    [name, spec, held_reason(paused, since) if paused else None]
                    for name, spec, _, paused, since in found
                )
                room.update(((event.organization, name), free) for name, _, free, _, _ in found)
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
            for name, spec, why_held in names:
                delivery_id = new_delivery_id()
                row: list[object] = [
                    delivery_id,
                    event.id,
                    event.organization,
                    name,
                    "held" if why_held else "pending",
                    None,
                    None,
                    why_held,
                ]
                # Handed over within the webhook's max_in_flight, as a claim would
                # (never a held one).
                if not why_held and len(claims) < limit and room[event.organization, name] > 0:
                    room[event.organization, name] -= 1
                    held = lease_of(spec, lease)
                    row[4:7] = "in_flight", owner, _real(now + held)
                    claims.append(
                        Claim(
                            delivery_id, 1, event, event.organization, name, spec, None, lease=held
                        )
                    )
                delivery_rows.append(row)
            results.append(
                IntakeResult(
                    event.id,
                    event.organization,
                    len(names),
                    duplicate=False,
                    event_type=event.type,
                    held=tuple(Held(name, why) for name, _, why in names if why),
                )
            )
        db.execute(
            "INSERT INTO events (id, type, organization, name, description, time, deliveries, "
            "received_at) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, "
            "value ->> 4, value ->> 5, value ->> 6, ?1 FROM json_each(?2)",
            (now, _json(event_rows)),
        )
        db.execute(
            "INSERT INTO deliveries (id, event_id, organization, webhook, status, attempts, "
            "due_at, created_at, updated_at, lease_owner, lease_expires, last_error) "
            "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, 0, "
            "CASE WHEN value ->> 7 IS NULL THEN ?1 END, ?1, ?1, value ->> 5, "
            "CAST(value ->> 6 AS REAL), value ->> 7 FROM json_each(?2)",
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
        # A lease that ran out makes its delivery due again, in its webhook's turn.
        db.execute(
            "UPDATE deliveries SET status = 'pending', due_at = lease_expires, "
            "lease_owner = NULL, lease_expires = NULL, updated_at = ? "
            "WHERE status = 'in_flight' AND lease_expires <= ?",
            (now, now),
        )
        args: dict[str, object] = {"limit": limit, "now": now, "cap": DEFAULT_MAX_IN_FLIGHT}
        if event is not None:
            args.update(organization=event.organization, event=event.id)
            ids = _rows(db, _CLAIM_EVENT, args)
        else:
            ids = _rows(db, _CLAIM_FAIR, args)
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
        # Each delivery leased for its webhook's timeout and a margin (lease_of).
        leases = [lease_of(r[10], lease) for r in rows]
        db.execute(
            "UPDATE deliveries SET status = 'in_flight', lease_owner = ?1, "
            "lease_expires = ?2 + CAST(v.value ->> 1 AS REAL), updated_at = ?2, "
            "rate_slot = NULL FROM json_each(?3) v WHERE deliveries.id = v.value ->> 0",
            (owner, now, _json([[r[0], held] for r, held in zip(rows, leases, strict=True)])),
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
                lease=held,
            )
            for r, held in zip(rows, leases, strict=True)
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
        reports = [r.breaker for r in results if r.breaker is not None]
        if reports:
            # Whether or not the delivery is still ours, the request went out and
            # says how its endpoint is doing.
            self._breakers_in(db, reports, now)
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
            "value ->> 8, value ->> 9, value ->> 10, value ->> 11, value ->> 12 "
            "FROM json_each(?)",
            (_json(rows),),
        )
        for r in recorded:
            if r.pause_webhook:
                self._pause_in(db, r.delivery_id, r.pause_webhook)
        return len(recorded)

    # -- circuit breakers -------------------------------------------------------

    def _breakers_in(
        self, db: sqlite3.Connection, reports: Sequence[BreakerReport], now: float
    ) -> None:
        keys = sorted({r.key for r in reports})
        current = {key: BreakerRecord(*key) for key in keys}
        for row in _rows(
            db,
            f"SELECT json_group_array(json_array({BREAKER_COLUMNS})) FROM webhook_breakers "
            "WHERE (organization, webhook) IN "
            "(SELECT value ->> 0, value ->> 1 FROM json_each(?))",
            (_json(keys),),
        ):
            record = breaker_from_row(row)
            current[record.key] = record
        changed, audit = fold_all(current, reports, now)
        if changed:
            db.executemany(
                f"INSERT INTO webhook_breakers ({BREAKER_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (organization, webhook) DO UPDATE SET state = excluded.state, "
                "consecutive_failures = excluded.consecutive_failures, "
                "failing_since = excluded.failing_since, opened_at = excluded.opened_at, "
                "next_probe_at = excluded.next_probe_at, "
                "probe_interval = excluded.probe_interval, probe_owner = excluded.probe_owner, "
                "probe_expires = excluded.probe_expires, "
                "probes_failed = excluded.probes_failed, last_failure = excluded.last_failure, "
                "updated_at = excluded.updated_at",
                changed,
            )
        if audit:
            # A breaker changes no live webhook: the serial (and so a saved plan) stays.
            serial = int(db.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()[0])
            self._append_audit(db, audit, serial, audit_time(now))

    def breakers(self, organizations: Sequence[str] | None = None) -> list[BreakerRecord]:
        query = (
            f"SELECT {BREAKER_COLUMNS} FROM webhook_breakers "
            "WHERE (state != 'closed' OR consecutive_failures > 0)"
        )
        args: list[Any] = []
        if organizations is not None:
            query += f" AND organization IN ({', '.join('?' * len(organizations))})"
            args.extend(organizations)
        query += " ORDER BY organization, webhook"
        return [breaker_from_row(row) for row in self._db.execute(query, args)]

    def take_probe(
        self, organization: str, webhook: str, owner: str, now: float, lease: float
    ) -> tuple[bool, BreakerRecord | None]:
        with self._write(durable=False) as db:
            taken = db.execute(
                f"UPDATE webhook_breakers SET state = 'half-open', probe_owner = ?, "
                "probe_expires = ?, updated_at = ? WHERE organization = ? AND webhook = ? "
                "AND ((state = 'open' AND coalesce(next_probe_at, 0) <= ?) "
                "OR (state = 'half-open' AND coalesce(probe_expires, 0) <= ?)) "
                f"RETURNING {BREAKER_COLUMNS}",
                (owner, now + lease, now, organization, webhook, now, now),
            ).fetchone()
            if taken is not None:
                return True, breaker_from_row(taken)
            row = db.execute(
                f"SELECT {BREAKER_COLUMNS} FROM webhook_breakers "
                "WHERE organization = ? AND webhook = ?",
                (organization, webhook),
            ).fetchone()
        return False, breaker_from_row(row) if row is not None else None

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

    def renew(self, owner: str, leases: Sequence[tuple[str, float]], now: float) -> list[str]:
        if not leases:
            return []
        with self._write(durable=False) as db:
            return [
                row[0]
                for row in db.execute(
                    "UPDATE deliveries SET lease_expires = ?1 + CAST(v.value ->> 1 AS REAL) "
                    "FROM json_each(?2) v WHERE deliveries.id = v.value ->> 0 "
                    "AND status = 'in_flight' AND lease_owner = ?3 RETURNING deliveries.id",
                    (now, _json([list(pair) for pair in leases]), owner),
                ).fetchall()
            ]

    def release_dead(self, alive: Callable[[str], bool], now: float) -> int:
        """Give back deliveries held by owners that `alive` says are gone. Looking
        takes no write lock: a dispatcher looks every few seconds (worker.py)."""
        if not any(
            owner is not None and not alive(owner)
            for (owner,) in self._db.execute(
                "SELECT DISTINCT lease_owner FROM deliveries WHERE status = 'in_flight'"
            )
        ):
            return 0
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
                "WHERE organization = ? AND webhook = ? "
                "AND status IN ('pending', 'held', 'in_flight')",
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
        until: float | None = None,
        status_code: int | None = None,
    ) -> list[DeliveryRecord]:
        """Newest first. `event`: that event's (an id names one only with its
        organization). `organizations`: only these (an API token's scope)."""
        query, args = deliveries_query(
            "?",
            lambda names: (f"IN ({', '.join('?' * len(names))})", list(names)),
            status=status,
            organization=organization,
            webhook=webhook,
            event=event,
            since=since,
            limit=limit,
            organizations=organizations,
            until=until,
            status_code=status_code,
        )
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
            attempt_from_row(r)
            for r in self._db.execute(
                f"SELECT {ATTEMPT_READ} FROM attempts WHERE delivery_id = ? ORDER BY id",
                (delivery_id,),
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
                    "('failed', 'cancelled', 'delivered') AND EXISTS (SELECT 1 FROM webhooks w "
                    "WHERE w.organization = deliveries.organization "
                    "AND w.name = deliveries.webhook)",
                    (now, now, delivery_id),
                ).rowcount
                if changed:
                    replayed.append(delivery_id)
        return replayed

    def retry_now(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        with self._write() as db:
            done = {
                row[0]
                for row in db.execute(
                    RETRY_NOW.format(p="?", ids="IN (SELECT value FROM json_each(?))"),
                    (now, now, _json(list(delivery_ids))),
                ).fetchall()
            }
        return [d for d in dict.fromkeys(delivery_ids) if d in done]

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

    def webhook_queue(self, organizations: Sequence[str] | None, now: float) -> list[WebhookQueue]:
        """Each live webhook of `organizations` (None: all) with its deliveries on their
        way: one statement, as many rows read as webhooks and backlog (health_sql.py)."""
        query = health_sql.query(health_sql.QUEUE, "sqlite", organizations is not None)
        args = health_sql.params("sqlite", organizations, now)
        return [WebhookQueue(r[0], r[1], bool(r[2]), *r[3:]) for r in self._db.execute(query, args)]

    def webhook_health(
        self, organizations: Sequence[str] | None, now: float, since: float
    ) -> list[WebhookAggregates]:
        """webhook_queue, with each webhook's attempts started in (since, now] and its
        latest success and failure (health_sql.py says what each costs)."""
        query = health_sql.query(health_sql.HEALTH, "sqlite", organizations is not None)
        args = health_sql.params("sqlite", organizations, now, since)
        return [
            WebhookAggregates(r[0], r[1], bool(r[2]), *r[3:]) for r in self._db.execute(query, args)
        ]

    def iter_event_keys(self) -> Iterator[EventKey]:
        for organization, event_id in self._db.execute(
            "SELECT organization, id FROM events ORDER BY received_at"
        ):
            yield EventKey(organization, event_id)


# What one webhook may still take: its max_in_flight less its requests in flight
# (leases not run out), whichever dispatcher holds them; `o` and `h` name the
# webhook in the query that uses it.
_ROOM = (
    "coalesce((SELECT w2.spec ->> '$.max_in_flight' FROM webhooks w2 "
    "WHERE w2.organization = {o} AND w2.name = {h}), :cap) - (SELECT "
    "count(*) FILTER (WHERE f.lease_expires > :now) FROM deliveries f "
    "WHERE f.status = 'in_flight' AND f.organization = {o} AND f.webhook = {h})"
)

# A claim goes round the webhooks: the first due delivery of each, then the second of
# each, ..., each webhook up to its room, so no backlog, however deep, starves another
# webhook, and a webhook whose receiver hangs holds no more than its max_in_flight.
# Everything is read through deliveries_fair, in steps that cost one index probe each:
# `hooks` skips from one webhook with a pending delivery to the next, `walk` steps
# through each one's due deliveries in (due_at, rowid) order. (Written as equality
# plus `>` rather than as row values: SQLite seeks on a row value's first column only.)
_CLAIM_FAIR = f"""
WITH RECURSIVE hooks(k) AS (
    SELECT json_array('', '')
    UNION ALL
    SELECT coalesce(
        (SELECT json_array(organization, webhook) FROM deliveries
         WHERE status = 'pending' AND organization = hooks.k ->> 0 AND webhook > hooks.k ->> 1
         ORDER BY webhook LIMIT 1),
        (SELECT json_array(organization, webhook) FROM deliveries
         WHERE status = 'pending' AND organization > hooks.k ->> 0
         ORDER BY organization, webhook LIMIT 1))
    FROM hooks WHERE k IS NOT NULL
),
room(organization, webhook, free) AS (
    SELECT o, h, min(:limit, {_ROOM.format(o="o", h="h")})
    FROM (SELECT k ->> 0 AS o, k ->> 1 AS h FROM hooks WHERE k ->> 0 <> '')
),
walk(organization, webhook, free, turn, rid, due) AS (
    SELECT r.organization, r.webhook, r.free, 1, d.rowid, d.due_at
    FROM room r JOIN deliveries d ON d.rowid = (
        SELECT rowid FROM deliveries WHERE status = 'pending'
        AND organization = r.organization AND webhook = r.webhook AND due_at <= :now
        ORDER BY due_at, rowid LIMIT 1)
    WHERE r.free > 0
    UNION ALL
    SELECT w.organization, w.webhook, w.free, w.turn + 1, d.rowid, d.due_at
    FROM walk w JOIN deliveries d ON d.rowid = coalesce(
        (SELECT rowid FROM deliveries WHERE status = 'pending'
         AND organization = w.organization AND webhook = w.webhook
         AND due_at = w.due AND rowid > w.rid ORDER BY rowid LIMIT 1),
        (SELECT rowid FROM deliveries WHERE status = 'pending'
         AND organization = w.organization AND webhook = w.webhook
         AND due_at > w.due AND due_at <= :now ORDER BY due_at, rowid LIMIT 1))
    WHERE w.turn < w.free
)
SELECT json_group_array(id) FROM (
    SELECT d.id FROM walk JOIN deliveries d ON d.rowid = walk.rid
    ORDER BY walk.turn, walk.due LIMIT :limit
)
"""

# One event's due deliveries (`fire --wait`), each webhook up to its room.
_CLAIM_EVENT = f"""
SELECT json_group_array(id) FROM (
    SELECT id FROM (
        SELECT d.id, d.due_at, {_ROOM.format(o="d.organization", h="d.webhook")} AS free,
            row_number() OVER (PARTITION BY d.webhook ORDER BY d.due_at, d.rowid) AS turn
        FROM deliveries d WHERE d.organization = :organization AND d.event_id = :event
        AND d.status = 'pending' AND d.due_at <= :now
    ) WHERE turn <= free ORDER BY turn, due_at LIMIT :limit
)
"""


def _json(value: Any) -> str:
    """A batch as one JSON parameter (text values in it must hold no NUL: SQLite reads
    them out as C strings)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _real(value: float | None) -> str | None:
    """A float for a JSON parameter: as text, which SQLite reads back exactly (a JSON
    number would come back rounded to 15 digits)."""
    return None if value is None else repr(float(value))


def _rows(db: sqlite3.Connection, query: str, args: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
    """The one JSON array `query` aggregates its rows into, as Python.

    Statements here take and give a whole batch as one JSON value: the sqlite3
    module releases and retakes the GIL at every row it steps through, and each
    retake waits for the event loop's thread, so one row per statement (rather
    than one per delivery) is what keeps the database thread from crawling while
    the loop is busy (docs/benchmarks.md, Dispatcher)."""
    rows: list[Any] = json.loads(db.execute(query, args).fetchone()[0])
    return rows
