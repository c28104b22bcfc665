"""What the console's keyset indexes of deliveries cost intake, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_delivery_indexes.py [--events 3000] [--rounds 5]
        [--backend both|sqlite|postgres] [--postgres URL]

Migration 0013_console_sessions gives every state, console mounted or not, two more
indexes of deliveries, `deliveries_newest (created_at, id)` and
`deliveries_newest_by_org (organization, created_at, id)`, and widens
`deliveries_by_webhook` from (organization, webhook) to (organization, webhook,
created_at, id): each delivery intake stores writes those entries. This measures that
cost where it is paid, the store's `add_event` (the transaction intake commits per
event), in this process, against the same state with the three indexes as they were
before the migration.

Each round makes two new states of the backend (a SQLite file; a PostgreSQL schema),
both migrated to today's schema; in one ("before") the three indexes are put back as
they were. Each gets 10 webhooks of organization acme on new_rule_violation, then
--events events, each stored with its 10 deliveries by `add_event`, timed by this
process's CPU time and by wall time (PostgreSQL's own CPU is not in the first:
its wall time is the figure there). Which state goes first alternates by round;
medians over --rounds; ratio = today / before.

Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(BENCH.parent))

from reconciler.events import checked_event  # noqa: E402
from reconciler.model import WebhookSpec  # noqa: E402
from reconciler.store import open_store  # noqa: E402
from reconciler.store.base import Write  # noqa: E402

WEBHOOKS = 10
BEFORE = [
    "DROP INDEX deliveries_newest",
    "DROP INDEX deliveries_newest_by_org",
    "DROP INDEX deliveries_by_webhook",
    "CREATE INDEX deliveries_by_webhook ON deliveries (organization, webhook)",
]


def _specs() -> list[WebhookSpec]:
    return [
        WebhookSpec.model_validate(
            {
                "name": f"hook-{n}",
                "organization": "acme",
                "event": "new_rule_violation",
                "method": "POST",
                "url": f"https://hooks.example.com/{n}",
                "body": {"text": "{{name}} at {{time}}"},
            }
        )
        for n in range(WEBHOOKS)
    ]


def _state(url: str, before: bool, execute: Callable[[Any, str], None]) -> Any:
    store = open_store(url, create=True)
    if before:
        for statement in BEFORE:
            execute(store, statement)
    specs = _specs()
    writes = [Write("put", *s.key, s.canonical_json()) for s in specs]
    store.commit(writes, [], expected_serial=store.state().serial)
    return store


def _time_intake(store: Any, events: int) -> tuple[float, float]:
    records = [
        checked_event(
            {
                "type": "new_rule_violation",
                "organization": "acme",
                "name": f"rule-{n}",
                "description": "a bucket is public",
                "id": f"e-{n}",
            }
        )
        for n in range(events)
    ]
    cpu, wall = time.process_time(), time.perf_counter()
    for record in records:
        store.add_event(record, time.time())
    return time.process_time() - cpu, time.perf_counter() - wall


def _sqlite_execute(store: Any, statement: str) -> None:
    store._db.execute(statement)  # a bench reaches into the backend it measures


def _postgres_execute(store: Any, statement: str) -> None:
    with store._tx() as cur:
        cur.execute(statement)


def run(backend: str, events: int, rounds: int, postgres: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"today cpu": [], "before cpu": [], "today wall": [],
                                     "before wall": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-indexes-") as scratch:
        for round_number in range(rounds):
            order = ["today", "before"] if round_number % 2 == 0 else ["before", "today"]
            for which in order:
                if backend == "sqlite":
                    url = f"sqlite:///{Path(scratch) / f'{round_number}-{which}.db'}"
                    execute = _sqlite_execute
                else:
                    url = f"{postgres}?schema=bench_{uuid.uuid4().hex[:10]}"
                    execute = _postgres_execute
                store = _state(url, which == "before", execute)
                try:
                    cpu, wall = _time_intake(store, events)
                finally:
                    if backend == "postgres":
                        schema = url.rsplit("schema=", 1)[1]
                        execute(store, f"DROP SCHEMA {schema} CASCADE")
                    store.close()
                found[f"{which} cpu"].append(cpu)
                found[f"{which} wall"].append(wall)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", choices=["both", "sqlite", "postgres"], default="both")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    deliveries = args.events * WEBHOOKS
    print(f"{args.events} events x {WEBHOOKS} webhooks = {deliveries} deliveries a state")
    print("| backend | measure | before (3 indexes as before) | today | ratio |")
    print("|---|---|---:|---:|---:|")
    for backend in backends:
        found = run(backend, args.events, args.rounds, args.postgres)
        for measure in ("cpu", "wall"):
            before = statistics.median(found[f"before {measure}"])
            today = statistics.median(found[f"today {measure}"])
            print(
                f"| {backend} | {measure} per delivery | {before / deliveries * 1e6:.1f} µs "
                f"| {today / deliveries * 1e6:.1f} µs | {today / before:.3f}× |"
            )


if __name__ == "__main__":
    main()
