"""Named schema migrations for PostgreSQL, applied in order, recorded by name.

The same tables as SQLite's (store/sqlite_migrations.py), in PostgreSQL's types.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_live_state_and_audit_log",
        [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE webhooks (
                organization TEXT NOT NULL,
                name TEXT NOT NULL,
                spec TEXT NOT NULL,
                applied_spec TEXT NOT NULL,
                paused_reason TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (organization, name)
            )""",
            """CREATE TABLE audit_log (
                id BIGSERIAL PRIMARY KEY,
                at TEXT NOT NULL,
                serial BIGINT NOT NULL,
                action TEXT NOT NULL,
                organization TEXT NOT NULL,
                name TEXT NOT NULL,
                before TEXT,
                after TEXT,
                actor TEXT NOT NULL,
                git_commit TEXT,
                plan_checksum TEXT,
                note TEXT
            )""",
            "CREATE INDEX audit_log_by_webhook ON audit_log (organization, name)",
            """CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
            """CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
               FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
            """CREATE TABLE locks (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                pid INTEGER NOT NULL,
                host TEXT NOT NULL,
                token TEXT NOT NULL,
                acquired_at TEXT NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
        ],
    ),
    (
        "0002_events_and_deliveries",
        [
            """CREATE TABLE events (
                id TEXT PRIMARY KEY,
                type TEXT NOT NULL,
                organization TEXT NOT NULL,
                name TEXT NOT NULL,
                description TEXT NOT NULL,
                time TEXT NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                deliveries INTEGER NOT NULL
            )""",
            """CREATE TABLE deliveries (
                id TEXT PRIMARY KEY,
                event_id TEXT NOT NULL REFERENCES events (id),
                organization TEXT NOT NULL,
                webhook TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                due_at DOUBLE PRECISION,
                lease_owner TEXT,
                lease_expires DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                last_status INTEGER,
                last_error TEXT
            )""",
            "CREATE INDEX deliveries_due ON deliveries (status, due_at)",
            "CREATE INDEX deliveries_lease ON deliveries (status, lease_expires)",
            "CREATE INDEX deliveries_by_webhook ON deliveries (organization, webhook)",
            "CREATE INDEX deliveries_by_event ON deliveries (event_id)",
            """CREATE TABLE attempts (
                id BIGSERIAL PRIMARY KEY,
                delivery_id TEXT NOT NULL REFERENCES deliveries (id),
                number INTEGER NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                duration_ms DOUBLE PRECISION NOT NULL,
                status INTEGER,
                response_headers TEXT,
                response_excerpt TEXT,
                error TEXT,
                outcome TEXT NOT NULL
            )""",
            "CREATE INDEX attempts_by_delivery ON attempts (delivery_id)",
        ],
    ),
    (
        "0003_retry_schedule_restarts_on_replay",
        ["ALTER TABLE deliveries ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0"],
    ),
    (
        "0004_api_tokens",
        [
            """CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                organizations TEXT NOT NULL,
                all_organizations BOOLEAN NOT NULL DEFAULT false,
                token_hash TEXT NOT NULL UNIQUE,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION,
                revoked_at DOUBLE PRECISION
            )""",
        ],
    ),
]

# An event's id is its sender's, unique only within its organization: the key of an
# event becomes (organization, id), and a delivery refers to its event by both (a
# delivery's organization is its event's). Constraints change in place; no row moves.
MIGRATIONS.append(
    (
        "0005_event_id_per_organization",
        [
            "ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey",
            "ALTER TABLE events DROP CONSTRAINT events_pkey",
            "ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (organization, id)",
            """ALTER TABLE deliveries ADD CONSTRAINT deliveries_event_fkey
               FOREIGN KEY (organization, event_id) REFERENCES events (organization, id)""",
            "DROP INDEX deliveries_by_event",
            "CREATE INDEX deliveries_by_event ON deliveries (organization, event_id)",
        ],
    )
)

# Claims go round the webhooks with due deliveries, each up to its max_in_flight (see
# store/sqlite_migrations.py).
MIGRATIONS.append(
    (
        "0006_fair_claims",
        ["CREATE INDEX deliveries_fair ON deliveries (status, organization, webhook, due_at)"],
    )
)

# A circuit breaker per webhook (reconciler/store/breakers.py): every dispatcher
# sharing the state reads and moves the same one.
MIGRATIONS.append(
    (
        "0007_webhook_breakers",
        [
            """CREATE TABLE webhook_breakers (
                organization TEXT NOT NULL,
                webhook TEXT NOT NULL,
                state TEXT NOT NULL DEFAULT 'closed',
                consecutive_failures INTEGER NOT NULL DEFAULT 0,
                failing_since DOUBLE PRECISION,
                opened_at DOUBLE PRECISION,
                next_probe_at DOUBLE PRECISION,
                probe_interval DOUBLE PRECISION NOT NULL DEFAULT 0,
                probe_owner TEXT,
                probe_expires DOUBLE PRECISION,
                probes_failed INTEGER NOT NULL DEFAULT 0,
                last_failure TEXT,
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (organization, webhook)
            )""",
        ],
    )
)

# A webhook's rate_limit and its receivers' Retry-After, shared by every dispatcher
# (see store/sqlite_migrations.py).
MIGRATIONS.append(
    (
        "0008_rate_limit_slots",
        [
            """CREATE TABLE rate_limit_slots (
                organization TEXT NOT NULL,
                webhook TEXT NOT NULL,
                next_free DOUBLE PRECISION NOT NULL,
                held_until DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (organization, webhook)
            )""",
            "ALTER TABLE deliveries ADD COLUMN rate_slot DOUBLE PRECISION",
        ],
    )
)

# Endpoint health's indexes (see store/sqlite_migrations.py).
MIGRATIONS.append(
    (
        "0009_endpoint_health_indexes",
        [
            "CREATE INDEX attempts_by_time ON attempts (started_at)",
            """CREATE INDEX deliveries_delivered ON deliveries (organization, webhook, updated_at)
               WHERE status = 'delivered'""",
            """CREATE INDEX deliveries_failed ON deliveries (organization, webhook, updated_at)
               WHERE status = 'failed'""",
        ],
    )
)

# Retention's indexes and tables (see store/sqlite_migrations.py).
MIGRATIONS.append(
    (
        "0010_retention",
        [
            """CREATE INDEX deliveries_finished ON deliveries (organization, updated_at)
               WHERE status IN ('delivered', 'failed', 'cancelled')""",
            """CREATE INDEX events_without_deliveries ON events (organization, received_at)
               WHERE deliveries = 0""",
            """CREATE TABLE webhook_days (
                organization TEXT NOT NULL,
                webhook TEXT NOT NULL,
                day TEXT NOT NULL,
                delivered BIGINT NOT NULL DEFAULT 0,
                failed BIGINT NOT NULL DEFAULT 0,
                cancelled BIGINT NOT NULL DEFAULT 0,
                attempts BIGINT NOT NULL DEFAULT 0,
                retried BIGINT NOT NULL DEFAULT 0,
                durations TEXT NOT NULL DEFAULT '{}',
                PRIMARY KEY (organization, webhook, day)
            )""",
            """CREATE TABLE retention_runs (
                id BIGSERIAL PRIMARY KEY,
                owner TEXT NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                finished_at DOUBLE PRECISION NOT NULL,
                deliveries BIGINT NOT NULL,
                attempts BIGINT NOT NULL,
                events BIGINT NOT NULL,
                breakers BIGINT NOT NULL,
                rate_slots BIGINT NOT NULL,
                bytes_released BIGINT NOT NULL
            )""",
        ],
    )
)

# Retention deletes a steady trickle of rows from the queue's tables: autovacuum
# visits them after 2% of their rows changed (not PostgreSQL's default 20%), so the
# space of removed rows is reused by new ones and the tables stay the size of the
# retention window (docs/benchmarks.md, "Soak").
MIGRATIONS.append(
    (
        "0011_space_given_back",
        [
            f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0.02, "
            "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 1)"
            for table in ("events", "deliveries", "attempts")
        ],
    )
)

# What each attempt sent (sqlite_migrations.py says why).
MIGRATIONS.append(
    (
        "0012_attempt_request_as_sent",
        [
            f"ALTER TABLE attempts ADD COLUMN {column} TEXT"
            for column in ("request_method", "request_url", "request_headers", "request_body")
        ],
    )
)

# The web console's sessions and the deliveries page's keyset indexes
# (store/sqlite_migrations.py says why).
MIGRATIONS.append(
    (
        "0013_console_sessions",
        [
            """CREATE TABLE console_sessions (
                id_hash TEXT PRIMARY KEY,
                token_id TEXT NOT NULL,
                csrf_secret TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                idle_expires_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX console_sessions_by_expiry ON console_sessions (idle_expires_at)",
            "CREATE INDEX deliveries_newest ON deliveries (created_at, id)",
            "CREATE INDEX deliveries_newest_by_org ON deliveries (organization, created_at, id)",
            # One webhook's deliveries, newest first: the same lookups as before
            # (organization, webhook), now in order.
            "DROP INDEX deliveries_by_webhook",
            "CREATE INDEX deliveries_by_webhook ON deliveries "
            "(organization, webhook, created_at, id)",
            # The history page by webhook or by actor, newest first, across
            # organizations (the audit log is written only by apply and resume).
            "CREATE INDEX audit_log_by_name ON audit_log (name, id)",
            "CREATE INDEX audit_log_by_actor ON audit_log (actor, id)",
        ],
    )
)


# The file each applied definition came from (sqlite_migrations.py says why).
MIGRATIONS.append(("0014_audit_source", ["ALTER TABLE audit_log ADD COLUMN source TEXT"]))
