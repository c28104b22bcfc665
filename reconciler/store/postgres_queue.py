"""The delivery queue on PostgreSQL: dispatchers on several machines share it.

Claims use FOR UPDATE SKIP LOCKED, so workers never wait on each other's rows;
half of each claim goes to fresh deliveries, so a backlog of retries cannot
starve new events.
"""

from __future__ import annotations

import json
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
from reconciler.store.sqlite_queue import DELIVERY_COLUMNS, EVENT_OF_DELIVERY


class PostgresQueue:
    _tx: Callable[..., AbstractContextManager[Any]]
    _pause: Callable[[Any, str, str, str, str], None]  # from PostgresStore

    # -- intake -------------------------------------------------------------

    def add_event(self, event: EventRecord, now: float) -> IntakeResult:
        return self.add_events([event], now)[0]

    def add_events(self, events: Sequence[EventRecord], now: float) -> list[IntakeResult]:
        return self.add_events_and_claim(events, now, "", 0, 0.0)[0]

    def add_events_and_claim(
        self, events: Sequence[EventRecord], now: float, owner: str, limit: int, lease: float
    ) -> tuple[list[IntakeResult], list[Claim]]:
        """add_events, with up to `limit` of the new deliveries stored claimed by
        `owner` under a lease (see SqliteQueue)."""
        refuse_nul(events)
        results: list[IntakeResult] = []
        claims: list[Claim] = []
        with self._tx() as cur:
            for event in events:
                results.append(self._add_event_in(cur, event, now, (owner, limit, lease), claims))
            claims = self._slots_in(cur, claims, now)
        return results, claims

    def _add_event_in(
        self,
        cur: Any,
        event: EventRecord,
        now: float,
        hand: tuple[str, int, float],
        claims: list[Claim],
    ) -> IntakeResult:
        cur.execute(
            "INSERT INTO events VALUES (%s, %s, %s, %s, %s, %s, %s, 0) "
            "ON CONFLICT (organization, id) DO NOTHING",
            (
                event.id,
                event.type,
                event.organization,
                event.name,
                event.description,
                event.time,
                now,
            ),
        )
        if not cur.rowcount:
            cur.execute(
                "SELECT deliveries FROM events WHERE organization = %s AND id = %s",
                (event.organization, event.id),
            )
            return IntakeResult(event.id, event.organization, cur.fetchone()[0], duplicate=True)
        cur.execute(
            "SELECT name, spec FROM webhooks WHERE organization = %s AND paused_reason IS NULL "
            "AND spec::jsonb ->> 'event' = %s "
            "AND coalesce((spec::jsonb ->> 'enabled')::boolean, true) ORDER BY name",
            (event.organization, event.type),
        )
        webhooks = cur.fetchall()
        if webhooks:
            owner, limit, lease = hand
            rows = []
            for name, spec in webhooks:
                row = (new_delivery_id(), event.id, event.organization, name, "pending", None, None)
                if len(claims) < limit:
                    row = (*row[:4], "in_flight", owner, now + lease)
                    claims.append(Claim(row[0], 1, event, event.organization, name, spec, None))
                rows.append((*row, now, now, now))
            cur.executemany(
                "INSERT INTO deliveries (id, event_id, organization, webhook, status, "
                "lease_owner, lease_expires, attempts, due_at, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s, %s, %s)",
                rows,
            )
            cur.execute(
                "UPDATE events SET deliveries = %s WHERE organization = %s AND id = %s",
                (len(webhooks), event.organization, event.id),
            )
        return IntakeResult(event.id, event.organization, len(webhooks), duplicate=False)

    # -- claims ---------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, now: float, lease: float, event: EventKey | None = None
    ) -> list[Claim]:
        with self._tx(durable=False) as cur:
            return self._claim_in(cur, owner, limit, now, lease, event)

    def _claim_in(
        self, cur: Any, owner: str, limit: int, now: float, lease: float, event: EventKey | None
    ) -> list[Claim]:
        if event is not None:
            ids = self._pick(
                cur,
                "organization = %s AND event_id = %s AND ((status = 'pending' "
                "AND due_at <= %s) OR (status = 'in_flight' AND lease_expires <= %s))",
                (event.organization, event.id, now, now),
                "due_at",
                limit,
            )
        else:
            fresh = self._pick(
                cur,
                "status = 'pending' AND attempts = 0 AND due_at <= %s",
                (now,),
                "due_at",
                (limit + 1) // 2,
            )
            retries = self._pick(
                cur,
                "status = 'pending' AND attempts > 0 AND due_at <= %s",
                (now,),
                "due_at",
                limit - len(fresh),
            )
            ids = fresh + retries
            if len(ids) < limit:
                ids += self._pick(
                    cur,
                    "status = 'pending' AND due_at <= %s AND NOT (id = ANY(%s))",
                    (now, ids),
                    "due_at",
                    limit - len(ids),
                )
            if len(ids) < limit:
                ids += self._pick(
                    cur,
                    "status = 'in_flight' AND lease_expires <= %s",
                    (now,),
                    "lease_expires",
                    limit - len(ids),
                )
        if not ids:
            return []
        # A slot kept from before goes with the claim (rate_slot), and is the
        # claim's alone from now on.
        cur.execute(
            "SELECT d.id, d.attempts, e.id, e.type, e.organization, e.name, e.description, "
            "e.time, d.organization, d.webhook, w.spec, w.paused_reason, d.retry_base, "
            "d.rate_slot "
            f"FROM deliveries d JOIN events e ON {EVENT_OF_DELIVERY} "
            "LEFT JOIN webhooks w ON w.organization = d.organization AND w.name = d.webhook "
            "WHERE d.id = ANY(%s)",
            (ids,),
        )
        rows = cur.fetchall()
        cur.execute(
            "UPDATE deliveries SET status = 'in_flight', lease_owner = %s, "
            "lease_expires = %s, updated_at = %s, rate_slot = NULL WHERE id = ANY(%s)",
            (owner, now + lease, now, ids),
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
        return self._slots_in(cur, claims, now)

    def _slots_in(self, cur: Any, claims: list[Claim], now: float) -> list[Claim]:
        """Give the claims of rate-limited webhooks their slots (queue.with_slots):
        one statement for the batch, none when no webhook in it has a rate_limit.
        Its rows are locked in (organization, webhook) order until the transaction
        ends, so dispatchers taking slots of the same webhooks wait in turn, never
        in a cycle."""
        groups = slot_groups(claims)
        if not groups:
            return claims
        cur.execute(
            "INSERT INTO rate_limit_slots AS s (organization, webhook, next_free, held_until) "
            "SELECT v.o, v.w, %(now)s + v.span, 0 "
            "FROM unnest(%(o)s::text[], %(w)s::text[], %(span)s::float8[]) AS v(o, w, span) "
            "ORDER BY v.o, v.w "
            "ON CONFLICT (organization, webhook) DO UPDATE "
            "SET next_free = GREATEST(s.next_free, %(now)s) + (excluded.next_free - %(now)s) "
            "RETURNING s.organization, s.webhook, s.next_free, s.held_until",
            {
                "now": now,
                "o": [org for org, _ in groups],
                "w": [name for _, name in groups],
                "span": [interval * fresh for interval, fresh in groups.values()],
            },
        )
        taken = {(o, w): (f, h) for o, w, f, h in cur.fetchall()}
        return with_slots(claims, groups, taken)

    def hold(self, organization: str, webhook: str, until: float) -> None:
        with self._tx(durable=False) as cur:
            cur.execute(
                "INSERT INTO rate_limit_slots AS s (organization, webhook, next_free, "
                "held_until) VALUES (%(o)s, %(w)s, %(until)s, %(until)s) "
                "ON CONFLICT (organization, webhook) DO UPDATE "
                "SET held_until = GREATEST(s.held_until, %(until)s), "
                "next_free = GREATEST(s.next_free, %(until)s)",
                {"o": organization, "w": webhook, "until": until},
            )

    def holds(self, now: float) -> dict[tuple[str, str], float]:
        with self._tx() as cur:
            cur.execute(
                "SELECT organization, webhook, held_until FROM rate_limit_slots "
                "WHERE held_until > %s",
                (now,),
            )
            return {(o, w): until for o, w, until in cur.fetchall()}

    def _pick(
        self, cur: Any, where: str, args: tuple[Any, ...], order: str, limit: int
    ) -> list[str]:
        if limit <= 0:
            return []
        cur.execute(
            f"SELECT id FROM deliveries WHERE {where} ORDER BY {order} LIMIT %s "
            "FOR UPDATE SKIP LOCKED",
            (*args, limit),
        )
        return [row[0] for row in cur.fetchall()]

    def finish(self, results: Sequence[AttemptResult], owner: str, now: float) -> int:
        with self._tx(durable=False) as cur:
            return self._finish_in(cur, results, owner, now)

    def finish_and_claim(
        self, results: Sequence[AttemptResult], owner: str, now: float, limit: int, lease: float
    ) -> list[Claim]:
        """finish(), then claim() up to `limit`, in one transaction (see SqliteQueue)."""
        with self._tx(durable=False) as cur:
            self._finish_in(cur, results, owner, now)
            return self._claim_in(cur, owner, limit, now, lease, None) if limit > 0 else []

    def _finish_in(self, cur: Any, results: Sequence[AttemptResult], owner: str, now: float) -> int:
        deferred = [r for r in results if r.outcome == "deferred"]
        results = [r for r in results if r.outcome != "deferred"]
        if deferred:
            cur.execute(
                "UPDATE deliveries d SET status = 'pending', due_at = v.due, "
                "lease_owner = NULL, lease_expires = NULL, updated_at = %s, "
                "rate_slot = CASE WHEN v.keeps THEN v.due END "
                "FROM unnest(%s::text[], %s::float8[], %s::boolean[]) AS v(id, due, keeps) "
                "WHERE d.id = v.id AND d.status = 'in_flight' AND d.lease_owner = %s",
                (
                    now,
                    [r.delivery_id for r in deferred],
                    [r.next_due for r in deferred],
                    [r.keeps_slot for r in deferred],
                    owner,
                ),
            )
        if not results:
            return 0
        cur.execute(
            "UPDATE deliveries d SET status = v.status, attempts = d.attempts + v.delta, "
            "due_at = v.due, lease_owner = NULL, lease_expires = NULL, updated_at = %s, "
            "last_status = v.code, last_error = v.err "
            "FROM unnest(%s::text[], %s::text[], %s::int[], %s::float8[], %s::int[], "
            "%s::text[]) AS v(id, status, delta, due, code, err) "
            "WHERE d.id = v.id AND d.status = 'in_flight' AND d.lease_owner = %s "
            "RETURNING d.id",
            (
                now,
                [r.delivery_id for r in results],
                [{"retry": "pending"}.get(r.outcome, r.outcome) for r in results],
                [1 if r.sent else 0 for r in results],
                [r.next_due for r in results],
                [r.status for r in results],
                [clean_text(r.error) for r in results],
                owner,
            ),
        )
        ours = {row[0] for row in cur.fetchall()}
        recorded = [r for r in results if r.delivery_id in ours]
        if recorded:
            cur.executemany(
                f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [attempt_row(r) for r in recorded],
            )
        for r in recorded:
            if r.pause_webhook:
                cur.execute(
                    "SELECT organization, webhook FROM deliveries WHERE id = %s",
                    (r.delivery_id,),
                )
                org, name = cur.fetchone()
                self._pause(cur, org, name, r.pause_webhook, "dispatcher")
        return len(recorded)

    def release(self, owner: str, now: float) -> int:
        with self._tx() as cur:
            cur.execute(
                "UPDATE deliveries SET status = 'pending', due_at = %s, lease_owner = NULL, "
                "lease_expires = NULL, updated_at = %s "
                "WHERE status = 'in_flight' AND lease_owner = %s",
                (now, now, owner),
            )
            return int(cur.rowcount)

    def release_dead(self, alive: Callable[[str], bool], now: float) -> int:
        with self._tx() as cur:
            cur.execute(
                "SELECT DISTINCT lease_owner FROM deliveries WHERE status = 'in_flight' "
                "AND lease_owner IS NOT NULL"
            )
            dead = [owner for (owner,) in cur.fetchall() if not alive(owner)]
            if not dead:
                return 0
            cur.execute(
                "UPDATE deliveries SET status = 'pending', due_at = %s, lease_owner = NULL, "
                "lease_expires = NULL, updated_at = %s "
                "WHERE status = 'in_flight' AND lease_owner = ANY(%s)",
                (now, now, dead),
            )
            return int(cur.rowcount)

    def cancel_deliveries(self, organization: str, webhook: str, reason: str, now: float) -> int:
        with self._tx() as cur:
            return self._cancel_in(cur, [(organization, webhook)], reason, now)

    def _cancel_in(self, cur: Any, webhooks: list[tuple[str, str]], reason: str, now: float) -> int:
        cancelled = 0
        for organization, webhook in webhooks:
            cur.execute(
                "UPDATE deliveries SET status = 'cancelled', due_at = NULL, lease_owner = NULL, "
                "lease_expires = NULL, last_error = %s, updated_at = %s "
                "WHERE organization = %s AND webhook = %s AND status IN ('pending', 'in_flight')",
                (reason, now, organization, webhook),
            )
            cancelled += cur.rowcount
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
            "WHERE true"
        )
        args: list[Any] = []
        for column, value in (
            ("d.status", status),
            ("d.organization", organization),
            ("d.webhook", webhook),
        ):
            if value is not None:
                query += f" AND {column} = %s"
                args.append(value)
        if event is not None:
            query += " AND d.organization = %s AND d.event_id = %s"
            args += [event.organization, event.id]
        if since is not None:
            query += " AND d.updated_at >= %s"
            args.append(since)
        if organizations is not None:
            query += " AND d.organization = ANY(%s)"
            args.append(list(organizations))
        query += " ORDER BY d.created_at DESC, d.id LIMIT %s"
        args.append(limit)
        with self._tx() as cur:
            cur.execute(query, args)
            return [DeliveryRecord(*row) for row in cur.fetchall()]

    def delivery(self, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
        with self._tx() as cur:
            cur.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d "
                f"JOIN events e ON {EVENT_OF_DELIVERY} WHERE d.id = %s",
                (delivery_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                "SELECT number, started_at, duration_ms, outcome, status, response_headers, "
                "response_excerpt, error FROM attempts WHERE delivery_id = %s ORDER BY id",
                (delivery_id,),
            )
            attempts = [
                AttemptRecord(
                    number,
                    started,
                    duration,
                    outcome,
                    code,
                    json.loads(headers or "{}"),
                    excerpt or "",
                    error,
                )
                for number, started, duration, outcome, code, headers, excerpt, error in (
                    cur.fetchall()
                )
            ]
        return DeliveryRecord(*row), attempts

    def event(self, key: EventKey) -> EventRecord | None:
        with self._tx() as cur:
            cur.execute(
                "SELECT id, type, organization, name, description, time FROM events "
                "WHERE organization = %s AND id = %s",
                (key.organization, key.id),
            )
            row = cur.fetchone()
        return EventRecord(*row) if row else None

    def replay(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        with self._tx() as cur:
            cur.execute(
                "UPDATE deliveries SET status = 'pending', due_at = %s, updated_at = %s, "
                "last_error = NULL, retry_base = attempts WHERE id = ANY(%s) AND status IN "
                "('failed', 'cancelled', 'delivered') RETURNING id",
                (now, now, list(delivery_ids)),
            )
            done = {row[0] for row in cur.fetchall()}
        return [d for d in delivery_ids if d in done]

    def oldest_due(self, now: float) -> float | None:
        """The due time of the longest-waiting due delivery, if any is due."""
        with self._tx() as cur:
            cur.execute(
                "SELECT min(due_at) FROM deliveries WHERE status = 'pending' AND due_at <= %s",
                (now,),
            )
            row = cur.fetchone()
        return row[0] if row else None

    def queue_counts(self) -> dict[str, int]:
        with self._tx() as cur:
            cur.execute("SELECT status, count(*) FROM deliveries GROUP BY status")
            return dict(cur.fetchall())

    def iter_event_keys(self) -> Iterator[EventKey]:
        with self._tx() as cur:
            cur.execute("SELECT organization, id FROM events ORDER BY received_at")
            rows = cur.fetchall()
        for organization, event_id in rows:
            yield EventKey(organization, event_id)
