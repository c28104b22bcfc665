"""The delivery queue on PostgreSQL: dispatchers on several machines share it.

Claims go round the webhooks with due deliveries, each up to its max_in_flight
(see _CLAIM_LOCK and _CLAIM_PICK), with FOR UPDATE SKIP LOCKED, so workers never
wait on each other's rows, and no backlog, however deep, starves another webhook.

It follows sqlite_queue.py method for method, in PostgreSQL's dialect and locking
(postgres.py says why the parallel statements stay); what both share is in
queue.py and breakers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


class PostgresQueue:
    _tx: Callable[..., AbstractContextManager[Any]]
    _pause: Callable[[Any, str, str, str, str], None]  # from PostgresStore
    _append_audit: Callable[[Any, Sequence[AuditRecord], int, str], None]
    _claim_key: int  # from PostgresStore: the class of the per-webhook advisory locks

    # -- intake -------------------------------------------------------------

    def add_event(self, event: EventRecord, now: float, webhook: str | None = None) -> IntakeResult:
        refuse_nul([event])
        with self._tx() as cur:
            return self._add_event_in(cur, event, now, ("", 0, 0.0), [], {}, webhook)

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
        room: dict[str, int] = {}  # webhook -> how many it may still take, once locked
        with self._tx() as cur:
            for event in events:
                results.append(
                    self._add_event_in(cur, event, now, (owner, limit, lease), claims, room)
                )
            claims = self._slots_in(cur, claims, now)
        return results, claims

    def _add_event_in(
        self,
        cur: Any,
        event: EventRecord,
        now: float,
        hand: tuple[str, int, float],
        claims: list[Claim],
        room: dict[str, int],
        only: str | None = None,
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
            return IntakeResult(
                event.id,
                event.organization,
                cur.fetchone()[0],
                duplicate=True,
                event_type=event.type,
            )
        owner, limit, lease = hand
        handing = len(claims) < limit
        # Handing deliveries over is claiming them: each webhook's lock first (one
        # that another transaction holds is skipped), then, in a later statement that
        # sees every commit made under it, the room left under its max_in_flight.
        lock = (
            "pg_try_advisory_xact_lock(%s, hashtext(organization || '/' || name))"
            if handing
            else "%s IS NULL"
        )
        cur.execute(
            f"SELECT name, spec, {lock}, paused_reason, updated_at FROM webhooks "
            "WHERE organization = %s AND spec::jsonb ->> 'event' = %s "
            "AND coalesce((spec::jsonb ->> 'enabled')::boolean, true) "
            "AND (%s::text IS NULL OR name = %s) ORDER BY name",
            (self._claim_key, event.organization, event.type, only, only),
        )
        found = cur.fetchall()
        webhooks = [
            (name, spec, held_reason(paused, since) if paused else None)
            for name, spec, _, paused, since in found
        ]
        locked = [name for name, _, got, _, _ in found if got and name not in room]
        room.update((name, 0) for name, _, got, _, _ in found if not got and name not in room)
        if handing and locked:
            cur.execute(
                f"SELECT w.name, {_ROOM.format(o='w.organization', h='w.name')} "
                "FROM webhooks w WHERE w.organization = %(organization)s "
                "AND w.name = ANY(%(names)s)",
                {
                    "organization": event.organization,
                    "names": locked,
                    "cap": DEFAULT_MAX_IN_FLIGHT,
                    "now": now,
                },
            )
            room.update(cur.fetchall())
        if webhooks:
            rows = []
            for name, spec, why_held in webhooks:
                delivery_id = new_delivery_id()
                lease_owner: str | None = None
                lease_expires: float | None = None
                status = "held" if why_held else "pending"
                if not why_held and len(claims) < limit and room.get(name, 0) > 0:
                    room[name] -= 1
                    held = lease_of(spec, lease)
                    status, lease_owner, lease_expires = "in_flight", owner, now + held
                    claims.append(
                        Claim(
                            delivery_id, 1, event, event.organization, name, spec, None, lease=held
                        )
                    )
                rows.append(
                    (
                        delivery_id,
                        event.id,
                        event.organization,
                        name,
                        status,
                        lease_owner,
                        lease_expires,
                        None if why_held else now,
                        now,
                        now,
                        why_held,
                    )
                )
            cur.executemany(
                "INSERT INTO deliveries (id, event_id, organization, webhook, status, "
                "lease_owner, lease_expires, attempts, due_at, created_at, updated_at, "
                "last_error) VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s, %s, %s, %s)",
                rows,
            )
            cur.execute(
                "UPDATE events SET deliveries = %s WHERE organization = %s AND id = %s",
                (len(webhooks), event.organization, event.id),
            )
        return IntakeResult(
            event.id,
            event.organization,
            len(webhooks),
            duplicate=False,
            event_type=event.type,
            held=tuple(Held(name, why) for name, _, why in webhooks if why),
        )

    # -- claims ---------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, now: float, lease: float, event: EventKey | None = None
    ) -> list[Claim]:
        with self._tx(durable=False) as cur:
            return self._claim_in(cur, owner, limit, now, lease, event)

    def _claim_in(
        self, cur: Any, owner: str, limit: int, now: float, lease: float, event: EventKey | None
    ) -> list[Claim]:
        args: dict[str, Any] = {
            "limit": limit,
            "now": now,
            "cap": DEFAULT_MAX_IN_FLIGHT,
            "key": self._claim_key,
            "organization": event.organization if event else None,
            "event": event.id if event else None,
        }
        cur.execute(_CLAIM_LOCK_EVENT if event else _CLAIM_LOCK, args)
        hooks = cur.fetchall()
        if not hooks:
            return []
        args["organizations"] = [organization for organization, _ in hooks]
        args["webhooks"] = [webhook for _, webhook in hooks]
        cur.execute(_CLAIM_PICK.format(event="AND d.event_id = %(event)s" if event else ""), args)
        ids = [row[0] for row in cur.fetchall()]
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
        # Each delivery leased for its webhook's timeout and a margin (lease_of).
        leases = [lease_of(r[10], lease) for r in rows]
        cur.execute(
            "UPDATE deliveries d SET status = 'in_flight', lease_owner = %s, "
            "lease_expires = %s + v.lease, updated_at = %s, rate_slot = NULL "
            "FROM unnest(%s::text[], %s::float8[]) AS v(id, lease) WHERE d.id = v.id",
            (owner, now, now, [r[0] for r in rows], leases),
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
        reports = [r.breaker for r in results if r.breaker is not None]
        if reports:
            # Whether or not the delivery is still ours, the request went out and
            # says how its endpoint is doing.
            self._breakers_in(cur, reports, now)
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
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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

    # -- circuit breakers -------------------------------------------------------

    def _breakers_in(self, cur: Any, reports: Sequence[BreakerReport], now: float) -> None:
        """Move the breakers `reports` concern. Their rows are made if missing, then
        locked in one order, so dispatchers recording failures of one webhook at
        once count every one and never deadlock."""
        keys = sorted({r.key for r in reports})
        organizations, webhooks = [k[0] for k in keys], [k[1] for k in keys]
        cur.execute(
            "INSERT INTO webhook_breakers (organization, webhook, updated_at) "
            "SELECT o, w, %s FROM unnest(%s::text[], %s::text[]) AS k(o, w) "
            "ORDER BY o, w ON CONFLICT DO NOTHING",
            (now, organizations, webhooks),
        )
        cur.execute(
            f"SELECT {BREAKER_COLUMNS} FROM webhook_breakers "
            "WHERE (organization, webhook) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[])) "
            "ORDER BY organization, webhook FOR UPDATE",
            (organizations, webhooks),
        )
        current = {record.key: record for record in map(breaker_from_row, cur.fetchall())}
        changed, audit = fold_all(current, reports, now)
        if changed:
            cur.executemany(
                "UPDATE webhook_breakers SET state = %s, consecutive_failures = %s, "
                "failing_since = %s, opened_at = %s, next_probe_at = %s, probe_interval = %s, "
                "probe_owner = %s, probe_expires = %s, probes_failed = %s, last_failure = %s, "
                "updated_at = %s WHERE organization = %s AND webhook = %s",
                [(*row[2:], row[0], row[1]) for row in changed],
            )
        if audit:
            # A breaker changes no live webhook: the serial (and so a saved plan) stays.
            cur.execute("SELECT value FROM meta WHERE key = 'serial'")
            serial = int(cur.fetchone()[0])
            self._append_audit(cur, audit, serial, audit_time(now))

    def breakers(self, organizations: Sequence[str] | None = None) -> list[BreakerRecord]:
        query = (
            f"SELECT {BREAKER_COLUMNS} FROM webhook_breakers "
            "WHERE (state != 'closed' OR consecutive_failures > 0)"
        )
        args: list[Any] = []
        if organizations is not None:
            query += " AND organization = ANY(%s)"
            args.append(list(organizations))
        query += " ORDER BY organization, webhook"
        with self._tx() as cur:
            cur.execute(query, args)
            return [breaker_from_row(row) for row in cur.fetchall()]

    def take_probe(
        self, organization: str, webhook: str, owner: str, now: float, lease: float
    ) -> tuple[bool, BreakerRecord | None]:
        """One UPDATE: of dispatchers asking at once, the others wait for the row's
        lock, then find the condition no longer holds."""
        with self._tx(durable=False) as cur:
            cur.execute(
                "UPDATE webhook_breakers SET state = 'half-open', probe_owner = %s, "
                "probe_expires = %s, updated_at = %s WHERE organization = %s AND webhook = %s "
                "AND ((state = 'open' AND coalesce(next_probe_at, 0) <= %s) "
                "OR (state = 'half-open' AND coalesce(probe_expires, 0) <= %s)) "
                f"RETURNING {BREAKER_COLUMNS}",
                (owner, now + lease, now, organization, webhook, now, now),
            )
            taken = cur.fetchone()
            if taken is not None:
                return True, breaker_from_row(taken)
            cur.execute(
                f"SELECT {BREAKER_COLUMNS} FROM webhook_breakers "
                "WHERE organization = %s AND webhook = %s",
                (organization, webhook),
            )
            row = cur.fetchone()
        return False, breaker_from_row(row) if row is not None else None

    def release(self, owner: str, now: float) -> int:
        with self._tx() as cur:
            cur.execute(
                "UPDATE deliveries SET status = 'pending', due_at = %s, lease_owner = NULL, "
                "lease_expires = NULL, updated_at = %s "
                "WHERE status = 'in_flight' AND lease_owner = %s",
                (now, now, owner),
            )
            return int(cur.rowcount)

    def renew(self, owner: str, leases: Sequence[tuple[str, float]], now: float) -> list[str]:
        if not leases:
            return []
        with self._tx(durable=False) as cur:
            cur.execute(
                "UPDATE deliveries d SET lease_expires = %s + v.lease "
                "FROM unnest(%s::text[], %s::float8[]) AS v(id, lease) "
                "WHERE d.id = v.id AND d.status = 'in_flight' AND d.lease_owner = %s "
                "RETURNING d.id",
                (now, [i for i, _ in leases], [s for _, s in leases], owner),
            )
            return [row[0] for row in cur.fetchall()]

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
                "WHERE organization = %s AND webhook = %s "
                "AND status IN ('pending', 'held', 'in_flight')",
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
        until: float | None = None,
        status_code: int | None = None,
    ) -> list[DeliveryRecord]:
        """Newest first. `event`: that event's (an id names one only with its
        organization). `organizations`: only these (an API token's scope)."""
        query, args = deliveries_query(
            "%s",
            lambda names: ("= ANY(%s)", [list(names)]),
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
                f"SELECT {ATTEMPT_READ} FROM attempts WHERE delivery_id = %s ORDER BY id",
                (delivery_id,),
            )
            attempts = [attempt_from_row(r) for r in cur.fetchall()]
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
                "('failed', 'cancelled', 'delivered') AND EXISTS (SELECT 1 FROM webhooks w "
                "WHERE w.organization = deliveries.organization "
                "AND w.name = deliveries.webhook) RETURNING id",
                (now, now, list(delivery_ids)),
            )
            done = {row[0] for row in cur.fetchall()}
        return [d for d in delivery_ids if d in done]

    def retry_now(self, delivery_ids: Sequence[str], now: float) -> list[str]:
        with self._tx() as cur:
            cur.execute(RETRY_NOW.format(p="%s", ids="= ANY(%s)"), (now, now, list(delivery_ids)))
            done = {row[0] for row in cur.fetchall()}
        return [d for d in dict.fromkeys(delivery_ids) if d in done]

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

    def webhook_queue(self, organizations: Sequence[str] | None, now: float) -> list[WebhookQueue]:
        """See SqliteQueue.webhook_queue."""
        query = health_sql.query(health_sql.QUEUE, "postgres", organizations is not None)
        with self._tx() as cur:
            cur.execute(query, health_sql.params("postgres", organizations, now))
            return [WebhookQueue(*row) for row in cur.fetchall()]

    def webhook_health(
        self, organizations: Sequence[str] | None, now: float, since: float
    ) -> list[WebhookAggregates]:
        """See SqliteQueue.webhook_health."""
        query = health_sql.query(health_sql.HEALTH, "postgres", organizations is not None)
        with self._tx() as cur:
            cur.execute(query, health_sql.params("postgres", organizations, now, since))
            return [WebhookAggregates(*row) for row in cur.fetchall()]

    def iter_event_keys(self) -> Iterator[EventKey]:
        with self._tx() as cur:
            cur.execute("SELECT organization, id FROM events ORDER BY received_at")
            rows = cur.fetchall()
        for organization, event_id in rows:
            yield EventKey(organization, event_id)


# What one webhook may still take: its max_in_flight less its requests in flight
# (leases not run out), whichever dispatcher holds them. Read only under the
# webhook's lock, in a statement that began after the lock was taken.
_ROOM = (
    "coalesce((SELECT (w2.spec::jsonb ->> 'max_in_flight')::int FROM webhooks w2 "
    "WHERE w2.organization = {o} AND w2.name = {h}), %(cap)s) - (SELECT "
    "count(*) FILTER (WHERE f.lease_expires > %(now)s) FROM deliveries f "
    "WHERE f.status = 'in_flight' AND f.organization = {o} AND f.webhook = {h})"
)

# A claim's first statement. Deliveries whose lease ran out are due again (those no
# other transaction holds). Then the webhooks with a due delivery, found by skipping
# through deliveries_fair from one webhook with a pending delivery to the next (one
# index probe each, however deep a backlog), each locked for this transaction: the
# per-webhook lock is what makes max_in_flight hold across dispatchers, as two
# claims for one webhook cannot both count its requests in flight before either
# commits. A webhook another transaction is claiming for is skipped, as SKIP LOCKED
# skips a row, and never waited for. (Each ORDER BY ends in due_at, an order only
# deliveries_fair gives, so that the planner never walks another index filtering out
# a webhook's delivered history.)
_CLAIM_LOCK = """
WITH RECURSIVE expired AS (
    UPDATE deliveries SET status = 'pending', due_at = lease_expires, lease_owner = NULL,
        lease_expires = NULL, updated_at = %(now)s
    WHERE id IN (SELECT id FROM deliveries WHERE status = 'in_flight'
        AND lease_expires <= %(now)s FOR UPDATE SKIP LOCKED)
    RETURNING organization, webhook
), hooks AS (
    (SELECT organization, webhook FROM deliveries WHERE status = 'pending'
     ORDER BY organization, webhook, due_at LIMIT 1)
    UNION ALL
    SELECT n.organization, n.webhook FROM hooks h CROSS JOIN LATERAL (
        SELECT organization, webhook FROM deliveries WHERE status = 'pending'
        AND (organization, webhook) > (h.organization, h.webhook)
        ORDER BY organization, webhook, due_at LIMIT 1) n
), candidates AS (
    SELECT organization, webhook, bool_or(expired) AS expired FROM (
        SELECT organization, webhook, false AS expired FROM hooks
        UNION ALL
        SELECT organization, webhook, true FROM expired
    ) found GROUP BY organization, webhook
)
SELECT organization, webhook FROM candidates c
WHERE CASE WHEN c.expired OR (
    SELECT d.due_at FROM deliveries d WHERE d.status = 'pending'
    AND d.organization = c.organization AND d.webhook = c.webhook
    ORDER BY d.due_at LIMIT 1) <= %(now)s
THEN pg_try_advisory_xact_lock(%(key)s, hashtext(organization || '/' || webhook)) END
"""

# The same for one event's deliveries (`fire --wait`): its few webhooks are waited
# for, in one order, rather than skipped.
_CLAIM_LOCK_EVENT = """
WITH expired AS (
    UPDATE deliveries SET status = 'pending', due_at = lease_expires, lease_owner = NULL,
        lease_expires = NULL, updated_at = %(now)s
    WHERE id IN (SELECT id FROM deliveries WHERE status = 'in_flight'
        AND lease_expires <= %(now)s FOR UPDATE SKIP LOCKED)
    RETURNING organization, webhook, event_id
), due AS (
    SELECT organization, webhook FROM deliveries WHERE organization = %(organization)s
    AND event_id = %(event)s AND status = 'pending' AND due_at <= %(now)s
    UNION
    SELECT organization, webhook FROM expired
    WHERE organization = %(organization)s AND event_id = %(event)s
)
SELECT organization, webhook FROM (SELECT * FROM due ORDER BY organization, webhook) ordered
WHERE pg_advisory_xact_lock(%(key)s, hashtext(organization || '/' || webhook)) IS NOT NULL
"""

# A claim's second statement: round the locked webhooks, the first due delivery of
# each, then the second of each, ..., each webhook up to its room. The candidate rows
# are locked in a subquery (FOR UPDATE SKIP LOCKED, per webhook, at most its room),
# then ranked: a window function cannot sit beside FOR UPDATE.
_PICK_ROOM = _ROOM.format(o="h.organization", h="h.webhook")
_CLAIM_PICK = f"""
WITH room AS (
    SELECT h.organization, h.webhook, least(%(limit)s, {_PICK_ROOM}) AS free
    FROM unnest(%(organizations)s::text[], %(webhooks)s::text[]) AS h(organization, webhook)
)
SELECT id FROM (
    SELECT c.id, c.due_at,
        row_number() OVER (PARTITION BY r.organization, r.webhook ORDER BY c.due_at, c.id)
            AS turn
    FROM room r CROSS JOIN LATERAL (
        SELECT d.id, d.due_at FROM deliveries d WHERE d.status = 'pending'
        AND d.organization = r.organization AND d.webhook = r.webhook
        AND d.due_at <= %(now)s {{event}}
        ORDER BY d.due_at LIMIT greatest(r.free, 0) FOR UPDATE SKIP LOCKED
    ) c
) ranked ORDER BY turn, due_at LIMIT %(limit)s
"""
