"""SQLite's named schema migrations, applied in order and recorded in schema_migrations.

A migration is never edited once released: a change to the schema is a new
entry at the end. So the lines that repeat here stay: a later migration that
rebuilds a table (SQLite changes a table by copying it) restates its columns, and
postgres_migrations.py states the same tables in PostgreSQL's types. Each is the
record of a released schema, not code to share.
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
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at TEXT NOT NULL,
                serial INTEGER NOT NULL,
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
            """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TABLE locks (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                pid INTEGER NOT NULL,
                host TEXT NOT NULL,
                token TEXT NOT NULL,
                acquired_at TEXT NOT NULL,
                expires_at REAL NOT NULL
            )""",
        ],
    ),
]

MIGRATIONS.append(
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
                received_at REAL NOT NULL,
                deliveries INTEGER NOT NULL
            )""",
            """CREATE TABLE deliveries (
                id TEXT PRIMARY KEY,
                event_id TEXT NOT NULL REFERENCES events (id),
                organization TEXT NOT NULL,
                webhook TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                due_at REAL,
                lease_owner TEXT,
                lease_expires REAL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                last_status INTEGER,
                last_error TEXT
            )""",
            "CREATE INDEX deliveries_due ON deliveries (status, due_at)",
            "CREATE INDEX deliveries_lease ON deliveries (status, lease_expires)",
            "CREATE INDEX deliveries_by_webhook ON deliveries (organization, webhook)",
            "CREATE INDEX deliveries_by_event ON deliveries (event_id)",
            """CREATE TABLE attempts (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                delivery_id TEXT NOT NULL REFERENCES deliveries (id),
                number INTEGER NOT NULL,
                started_at REAL NOT NULL,
                duration_ms REAL NOT NULL,
                status INTEGER,
                response_headers TEXT,
                response_excerpt TEXT,
                error TEXT,
                outcome TEXT NOT NULL
            )""",
            "CREATE INDEX attempts_by_delivery ON attempts (delivery_id)",
        ],
    )
)

MIGRATIONS.append(
    (
        "0003_retry_schedule_restarts_on_replay",
        ["ALTER TABLE deliveries ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0"],
    )
)

MIGRATIONS.append(
    (
        "0004_api_tokens",
        [
            # organizations: a JSON list. token_hash: hex SHA-256 of the secret, which
            # is never stored (reconciler/tokens.py says why SHA-256 is enough).
            """CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                organizations TEXT NOT NULL,
                all_organizations INTEGER NOT NULL DEFAULT 0,
                token_hash TEXT NOT NULL UNIQUE,
                created_at REAL NOT NULL,
                expires_at REAL,
                revoked_at REAL
            )""",
        ],
    )
)

# An event's id is its sender's, unique only within its organization: the key of an
# event becomes (organization, id), and a delivery refers to its event by both (a
# delivery's organization is its event's). SQLite changes neither a primary key nor
# a foreign key in place, so the three tables are rebuilt in this one transaction:
# the new ones filled with every row, ids included, before the old ones are dropped
# (attempts are never deleted, so the AUTOINCREMENT sequence goes on from the
# largest id copied); renaming a table carries the references to it along.
MIGRATIONS.append(
    (
        "0005_event_id_per_organization",
        [
            """CREATE TABLE events_0005 (
                id TEXT NOT NULL,
                type TEXT NOT NULL,
                organization TEXT NOT NULL,
                name TEXT NOT NULL,
                description TEXT NOT NULL,
                time TEXT NOT NULL,
                received_at REAL NOT NULL,
                deliveries INTEGER NOT NULL,
                PRIMARY KEY (organization, id)
            )""",
            """INSERT INTO events_0005 (id, type, organization, name, description, time,
                   received_at, deliveries)
               SELECT id, type, organization, name, description, time, received_at,
                   deliveries FROM events""",
            """CREATE TABLE deliveries_0005 (
                id TEXT PRIMARY KEY,
                event_id TEXT NOT NULL,
                organization TEXT NOT NULL,
                webhook TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                due_at REAL,
                lease_owner TEXT,
                lease_expires REAL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                last_status INTEGER,
                last_error TEXT,
                retry_base INTEGER NOT NULL DEFAULT 0,
                FOREIGN KEY (organization, event_id) REFERENCES events_0005 (organization, id)
            )""",
            """INSERT INTO deliveries_0005 (id, event_id, organization, webhook, status,
                   attempts, due_at, lease_owner, lease_expires, created_at, updated_at,
                   last_status, last_error, retry_base)
               SELECT id, event_id, organization, webhook, status, attempts, due_at,
                   lease_owner, lease_expires, created_at, updated_at, last_status,
                   last_error, retry_base FROM deliveries""",
            """CREATE TABLE attempts_0005 (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                delivery_id TEXT NOT NULL REFERENCES deliveries_0005 (id),
                number INTEGER NOT NULL,
                started_at REAL NOT NULL,
                duration_ms REAL NOT NULL,
                status INTEGER,
                response_headers TEXT,
                response_excerpt TEXT,
                error TEXT,
                outcome TEXT NOT NULL
            )""",
            """INSERT INTO attempts_0005 (id, delivery_id, number, started_at, duration_ms,
                   status, response_headers, response_excerpt, error, outcome)
               SELECT id, delivery_id, number, started_at, duration_ms, status,
                   response_headers, response_excerpt, error, outcome FROM attempts""",
            "DROP TABLE attempts",
            "DROP TABLE deliveries",
            "DROP TABLE events",
            "ALTER TABLE events_0005 RENAME TO events",
            "ALTER TABLE deliveries_0005 RENAME TO deliveries",
            "ALTER TABLE attempts_0005 RENAME TO attempts",
            "CREATE INDEX deliveries_due ON deliveries (status, due_at)",
            "CREATE INDEX deliveries_lease ON deliveries (status, lease_expires)",
            "CREATE INDEX deliveries_by_webhook ON deliveries (organization, webhook)",
            "CREATE INDEX deliveries_by_event ON deliveries (organization, event_id)",
            "CREATE INDEX attempts_by_delivery ON attempts (delivery_id)",
        ],
    )
)

# Claims go round the webhooks with due deliveries, each up to its max_in_flight:
# the webhooks with a pending delivery are found by skipping through this index
# (one probe per webhook, however deep its backlog), and each one's due
# deliveries and its requests in flight are read from it in order.
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
                failing_since REAL,
                opened_at REAL,
                next_probe_at REAL,
                probe_interval REAL NOT NULL DEFAULT 0,
                probe_owner TEXT,
                probe_expires REAL,
                probes_failed INTEGER NOT NULL DEFAULT 0,
                last_failure TEXT,
                updated_at REAL NOT NULL,
                PRIMARY KEY (organization, webhook)
            )""",
        ],
    )
)

# A webhook's rate_limit and the pauses its receivers ask for (Retry-After), kept in
# the state so that every dispatcher sharing it keeps to them together: per webhook,
# the next free slot and the time it is held until (seconds since the epoch). A
# delivery put off to its slot keeps it in rate_slot, so it goes then without taking
# another. Rows exist only for webhooks that have a rate_limit or were held.
MIGRATIONS.append(
    (
        "0008_rate_limit_slots",
        [
            """CREATE TABLE rate_limit_slots (
                organization TEXT NOT NULL,
                webhook TEXT NOT NULL,
                next_free REAL NOT NULL,
                held_until REAL NOT NULL,
                PRIMARY KEY (organization, webhook)
            )""",
            "ALTER TABLE deliveries ADD COLUMN rate_slot REAL",
        ],
    )
)

# Endpoint health (reconciler/health.py) reads a webhook's last hour of attempts by
# their time, and its latest delivered and latest failed delivery, without walking
# every delivery it ever had. The partial indexes hold only finished deliveries
# of their status, so a delivery on its way (claimed, retried) never touches them.
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

# Retention (reconciler/store/retention.py): finished deliveries, their attempts and
# their events go once older than the retention age, in small batches. What stays is
# one row per webhook and day (counts by outcome, a histogram of attempt durations),
# written in the batch's own transaction before its rows go, and a short record of
# each run. The partial indexes hold only what retention may remove: finished
# deliveries (in the order they finished, per organization), and events that queued
# no delivery at all; pending work never enters them.
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
                delivered INTEGER NOT NULL DEFAULT 0,
                failed INTEGER NOT NULL DEFAULT 0,
                cancelled INTEGER NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                retried INTEGER NOT NULL DEFAULT 0,
                durations TEXT NOT NULL DEFAULT '{}',
                PRIMARY KEY (organization, webhook, day)
            )""",
            """CREATE TABLE retention_runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                owner TEXT NOT NULL,
                started_at REAL NOT NULL,
                finished_at REAL NOT NULL,
                deliveries INTEGER NOT NULL,
                attempts INTEGER NOT NULL,
                events INTEGER NOT NULL,
                breakers INTEGER NOT NULL,
                rate_slots INTEGER NOT NULL,
                bytes_released INTEGER NOT NULL
            )""",
        ],
    )
)

# The file gives back the pages retention frees: incremental auto-vacuum, released
# a few hundred pages at a time after each retention run. A new state has it from
# its first page (SqliteStore sets it before any table exists). A file made before
# keeps its mode until it is rebuilt: `PRAGMA auto_vacuum = INCREMENTAL; VACUUM;`,
# once, with every dispatcher stopped (docs/operations.md); until then this is a
# no-op and retention's freed pages are reused rather than given back.
MIGRATIONS.append(
    (
        "0011_space_given_back",
        ["PRAGMA auto_vacuum = INCREMENTAL"],
    )
)

# What each attempt sent, beside its response (`deliveries show`): the request as
# rendered, secrets put back as references and credentials masked before it is
# written (reconciler/sent_request.py). NULL for attempts made before, and for those
# where nothing went out.
MIGRATIONS.append(
    (
        "0012_attempt_request_as_sent",
        [
            f"ALTER TABLE attempts ADD COLUMN {column} TEXT"
            for column in ("request_method", "request_url", "request_headers", "request_body")
        ],
    )
)

# The web console (reconciler/dispatch/console/): its sessions live in the state, so
# every `serve` sharing it knows them; a row holds the SHA-256 of the session id and
# the id of the token it was opened with, never either secret. The deliveries page
# walks deliveries newest first from a cursor (keyset paging): by (created_at, id)
# across organizations, by (organization, created_at, id) within one, and by
# (organization, webhook, created_at, id) for one webhook, which replaces the index
# of (organization, webhook) it extends. The history page finds a webhook's or an
# actor's entries by (name, id) and (actor, id).
MIGRATIONS.append(
    (
        "0013_console_sessions",
        [
            """CREATE TABLE console_sessions (
                id_hash TEXT PRIMARY KEY,
                token_id TEXT NOT NULL,
                csrf_secret TEXT NOT NULL,
                created_at REAL NOT NULL,
                idle_expires_at REAL NOT NULL,
                expires_at REAL NOT NULL
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


# The file each applied definition came from (`webhooks.d/acme/slack.yaml`), as the
# definitions' folder was read by the apply that wrote the entry: the console shows
# where a webhook lives in git. NULL for entries written before, and for those no
# file wrote (pause, resume, breakers, deletes).
MIGRATIONS.append(("0014_audit_source", ["ALTER TABLE audit_log ADD COLUMN source TEXT"]))
