"""Per-webhook aggregates for endpoint health, one SQL statement for both stores.

What each part reads, and the index it reads it by (a state with a long history
stays cheap: nothing here walks every delivery ever made):

    hooks        the live webhooks of the organizations asked (the primary key)
    queue        deliveries pending or in flight (deliveries_due): as many rows as
                 the backlog
    recent       attempts started in the window (attempts_by_time), each joined to
                 its delivery by id: as many rows as the window's attempts
    last success the latest delivered delivery of each webhook (the partial index
                 deliveries_delivered): one index probe per webhook
    failing      the latest attempt that failed: in the window (recent), of a
                 delivery still on its way that failed before (queue, with its
                 attempts by attempts_by_delivery), or of the latest delivery that
                 failed for good (the partial index deliveries_failed)

The percentile is the nearest rank, computed the same way in both databases: the
k-th shortest duration, k = ceil(0.95 n), as (95 n + 99) / 100 in integers.

Placeholders are written `:name`; PostgreSQL's text has them as `%(name)s`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Dialect = Literal["sqlite", "postgres"]


@dataclass(frozen=True)
class _Dialect:
    enabled: str  # the definition's `enabled`, true when absent
    in_orgs: str  # `{column}` is one of the organizations asked
    by_status: str  # read deliveries by (status, due_at)


_DIALECTS: dict[Dialect, _Dialect] = {
    "sqlite": _Dialect(
        enabled="coalesce(json_extract(w.spec, '$.enabled'), 1)",
        in_orgs="{column} IN (SELECT value FROM json_each(:orgs))",
        # SQLite's statistics (after an ANALYZE) know that a status has a third of
        # the rows on average, not that few are pending: without this it walks
        # every delivery of the organization rather than its backlog.
        by_status="INDEXED BY deliveries_due",
    ),
    "postgres": _Dialect(
        enabled="coalesce((w.spec::jsonb ->> 'enabled')::boolean, true)",
        in_orgs="{column} = ANY(:orgs)",
        by_status="",
    ),
}

_HOOKS = """hooks AS (
    SELECT w.organization, w.name, {enabled} AS enabled, w.paused_reason
    FROM webhooks w WHERE {orgs_w}
)"""

_QUEUE = """queue AS (
    SELECT d.organization, d.webhook,
        count(CASE WHEN d.status = 'in_flight' THEN 1 END) AS in_flight,
        count(CASE WHEN d.status = 'pending' AND d.due_at <= :now THEN 1 END) AS due,
        count(CASE WHEN d.status = 'pending' AND d.due_at > :now THEN 1 END) AS later,
        min(CASE WHEN d.status = 'pending' AND d.due_at <= :now THEN d.due_at END) AS oldest
    FROM deliveries d {by_status}
    WHERE d.status IN ('pending', 'in_flight') AND {orgs_d}
    GROUP BY d.organization, d.webhook
)"""

_QUEUE_COLUMNS = """h.organization, h.name, h.enabled, h.paused_reason,
    coalesce(q.in_flight, 0), coalesce(q.due, 0), coalesce(q.later, 0), q.oldest"""

_QUEUE_JOIN = "LEFT JOIN queue q ON q.organization = h.organization AND q.webhook = h.name"

QUEUE = f"""WITH {_HOOKS}, {_QUEUE}
SELECT {_QUEUE_COLUMNS}
FROM hooks h {_QUEUE_JOIN}
ORDER BY h.organization, h.name"""

HEALTH = f"""WITH {_HOOKS}, {_QUEUE},
recent AS (
    SELECT d.organization, d.webhook, a.id, a.started_at, a.duration_ms, a.outcome,
        a.status, a.error
    FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
    WHERE a.started_at > :since AND a.started_at <= :now
        AND a.outcome IN ('delivered', 'retry', 'failed') AND {{orgs_d}}
),
ranked AS (
    SELECT r.*,
        row_number() OVER (
            PARTITION BY organization, webhook ORDER BY duration_ms
        ) AS by_duration,
        row_number() OVER (
            PARTITION BY organization, webhook
            ORDER BY CASE WHEN outcome = 'delivered' THEN 1 ELSE 0 END, started_at DESC, id DESC
        ) AS by_failure,
        count(*) OVER (PARTITION BY organization, webhook) AS n
    FROM recent r
),
stats AS (
    SELECT organization, webhook, max(n) AS attempts,
        count(CASE WHEN outcome = 'delivered' THEN 1 END) AS delivered,
        max(CASE WHEN by_duration = (95 * n + 99) / 100 THEN duration_ms END) AS p95
    FROM ranked GROUP BY organization, webhook
),
failed_last AS (
    SELECT h.organization, h.name, (
        SELECT max(f.updated_at) FROM deliveries f
        WHERE f.organization = h.organization AND f.webhook = h.name AND f.status = 'failed'
    ) AS at
    FROM hooks h
),
failures AS (
    SELECT organization, webhook, started_at AS at, id, status, error
    FROM ranked WHERE by_failure = 1 AND outcome <> 'delivered'
    UNION ALL
    SELECT d.organization, d.webhook, a.started_at, a.id, a.status, a.error
    FROM deliveries d {{by_status}} JOIN attempts a ON a.delivery_id = d.id
    WHERE d.status IN ('pending', 'in_flight') AND d.attempts > 0
        AND a.outcome IN ('retry', 'failed') AND {{orgs_d}}
    UNION ALL
    SELECT d.organization, d.webhook, a.started_at, a.id, a.status, a.error
    FROM failed_last l
    CROSS JOIN deliveries d
    JOIN attempts a ON a.delivery_id = d.id
    WHERE d.organization = l.organization AND d.webhook = l.name AND d.status = 'failed'
        AND d.updated_at = l.at AND a.outcome IN ('retry', 'failed')
),
last_failure AS (
    SELECT organization, webhook, at, status, error,
        row_number() OVER (
            PARTITION BY organization, webhook ORDER BY at DESC, id DESC
        ) AS newest
    FROM failures
)
SELECT {_QUEUE_COLUMNS},
    coalesce(s.attempts, 0), coalesce(s.delivered, 0), s.p95,
    (
        SELECT max(x.updated_at) FROM deliveries x
        WHERE x.organization = h.organization AND x.webhook = h.name
            AND x.status = 'delivered'
    ),
    lf.at, lf.status, lf.error
FROM hooks h
{_QUEUE_JOIN}
LEFT JOIN stats s ON s.organization = h.organization AND s.webhook = h.name
LEFT JOIN last_failure lf
    ON lf.organization = h.organization AND lf.webhook = h.name AND lf.newest = 1
ORDER BY h.organization, h.name"""


def query(template: str, dialect: Dialect, filtered: bool) -> str:
    """The statement for one database: `filtered` when organizations are given."""
    parts = _DIALECTS[dialect]

    def orgs(column: str) -> str:
        return parts.in_orgs.format(column=column) if filtered else "TRUE"

    text = template.format(
        enabled=parts.enabled,
        by_status=parts.by_status,
        orgs_w=orgs("w.organization"),
        orgs_d=orgs("d.organization"),
    )
    if dialect == "postgres":
        text = re.sub(r"(?<!:):([a-z]+)\b", r"%(\1)s", text)
    return text


def params(
    dialect: Dialect,
    organizations: Sequence[str] | None,
    now: float,
    since: float | None = None,
) -> dict[str, Any]:
    values: dict[str, Any] = {"now": now, "since": since}
    if organizations is not None:
        orgs = sorted(set(organizations))
        values["orgs"] = orgs if dialect == "postgres" else json.dumps(orgs)
    return values
