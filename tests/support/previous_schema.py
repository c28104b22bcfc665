"""A state as the schema before `0005_event_id_per_organization` left it, and what
each backend must find in it once migrated.

The rows are written in raw SQL that both backends take, as that schema's code
wrote them (an event's key was its id alone). Each backend's test module builds
the old schema with its own migrations list cut before 0005, runs ROWS, opens
the state with today's code and calls `check_migrated`.
"""

from __future__ import annotations

from typing import Any

from reconciler.store.queue import AttemptResult, EventKey, EventRecord, IntakeResult

MIGRATION = "0005_event_id_per_organization"
NOW = 5_000.0
TIME = "2026-11-29T21:22:42Z"

ROWS = [
    "INSERT INTO events (id, type, organization, name, description, time, received_at, "
    "deliveries) VALUES "
    f"('r17:2026-11-30', 'new_rule_violation', 'acme', 'no-public-s3', 'old one', '{TIME}', "
    "1000.0, 1), "
    f"('evt-2', 'new_rule_violation', 'acme', 'open-sg', '', '{TIME}', 1001.0, 2), "
    f"('g-1', 'reserved_instance_surplus', 'globex', 'ri', '', '{TIME}', 1002.0, 0)",
    "INSERT INTO deliveries (id, event_id, organization, webhook, status, attempts, due_at, "
    "lease_owner, lease_expires, created_at, updated_at, last_status, last_error, retry_base) "
    "VALUES "
    "('msg_old1', 'r17:2026-11-30', 'acme', 'a', 'pending', 0, 1000.0, NULL, NULL, 1000.0, "
    "1000.0, NULL, NULL, 0), "
    "('msg_old2', 'evt-2', 'acme', 'a', 'delivered', 2, NULL, NULL, NULL, 1001.0, 1011.0, "
    "200, NULL, 0), "
    "('msg_old3', 'evt-2', 'acme', 'b', 'failed', 1, NULL, NULL, NULL, 1001.0, 1002.0, 404, "
    "'HTTP 404', 0)",
    "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status, "
    "response_headers, response_excerpt, error, outcome) VALUES "
    "('msg_old2', 1, 1001.0, 12.5, 500, '{}', 'busy', 'HTTP 500', 'retry'), "
    "('msg_old2', 2, 1011.0, 8.0, 200, '{}', 'ok', NULL, 'delivered'), "
    "('msg_old3', 1, 1002.0, 3.0, 404, '{}', 'no such hook', 'HTTP 404', 'failed')",
]


def check_migrated(store: Any) -> None:
    """The old rows are all there, read and written by today's code, and an event is
    now its (organization, id). The live state holds acme/a, acme/b and globex/a."""
    assert store.event(EventKey("acme", "r17:2026-11-30")) == EventRecord(
        "r17:2026-11-30", "new_rule_violation", "acme", "no-public-s3", "old one", TIME
    )
    assert store.event(EventKey("globex", "g-1")) is not None
    assert store.event(EventKey("acme", "g-1")) is None

    rows = {r.id: r for r in store.deliveries()}
    assert {d: (r.organization, r.event_id, r.webhook, r.status) for d, r in rows.items()} == {
        "msg_old1": ("acme", "r17:2026-11-30", "a", "pending"),
        "msg_old2": ("acme", "evt-2", "a", "delivered"),
        "msg_old3": ("acme", "evt-2", "b", "failed"),
    }
    assert (rows["msg_old3"].last_status, rows["msg_old3"].last_error) == (404, "HTTP 404")
    assert [r.id for r in store.deliveries(event=EventKey("acme", "evt-2"))] == [
        "msg_old2",
        "msg_old3",
    ]
    found, attempts = store.delivery("msg_old2")
    assert found.attempts == 2
    assert [(a.number, a.outcome, a.status, a.response_excerpt) for a in attempts] == [
        (1, "retry", 500, "busy"),
        (2, "delivered", 200, "ok"),
    ]

    # The old pending delivery is claimed with its event, and its attempt recorded
    # after the old ones.
    (claim,) = store.claim("w1", 10, NOW, 90.0)
    assert (claim.delivery_id, claim.event.key, claim.attempt) == (
        "msg_old1",
        EventKey("acme", "r17:2026-11-30"),
        1,
    )
    done = AttemptResult("msg_old1", 1, NOW, 4.0, "delivered", status=200)
    assert store.finish([done], "w1", NOW) == 1
    assert [a.outcome for a in store.delivery("msg_old1")[1]] == ["delivered"]
    assert store.replay(["msg_old3"], NOW) == ["msg_old3"]

    # The old ids still deduplicate within their organization, and no further.
    again = EventRecord("r17:2026-11-30", "new_rule_violation", "acme", "x", "", TIME)
    assert store.add_event(again, NOW) == IntakeResult("r17:2026-11-30", "acme", 1, True)
    other = EventRecord("r17:2026-11-30", "new_rule_violation", "globex", "x", "", TIME)
    assert store.add_event(other, NOW) == IntakeResult("r17:2026-11-30", "globex", 1, False)
    (new,) = store.deliveries(event=EventKey("globex", "r17:2026-11-30"))
    assert (new.organization, new.webhook, new.status) == ("globex", "a", "pending")
    assert len(store.deliveries()) == 4
