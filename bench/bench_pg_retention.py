"""PostgreSQL retention: batched deletes against dropping a time partition, measured.

    .venv/bin/python bench/bench_pg_retention.py [--postgres URL] [--days 6] [--per-day 30000]

Two copies of a table shaped like `deliveries` (a text key, organization, webhook,
status, times, a 300-byte payload) hold --days days of --per-day rows each: one plain
(the store's), one partitioned by day on its creation time. For each, one day is
removed while an intake thread inserts single rows in their own transactions as fast
as it can; measured: the time the removal takes, rows removed per second, the
inserts' p50/p99 meanwhile, and the inserts per second the table takes with nothing
else running. The plain table's removal is the store's: batches of 200 rows, each its
own transaction, then a VACUUM as autovacuum would (migration 0011's settings); its
size after the day's space is reused by a new day is shown against its size before.
Prints one JSON line per table and a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
import uuid
from typing import Any

import psycopg

DAY = 86_400.0
BATCH = 200
T0 = 1_700_000_000.0


def create(conn: psycopg.Connection[Any], schema: str, parted: bool, days: int) -> None:
    conn.execute(f'CREATE SCHEMA "{schema}"')
    conn.execute(f'SET search_path = "{schema}"')
    key = "PRIMARY KEY (id, created_at)" if parted else "PRIMARY KEY (id)"
    conn.execute(
        f"""CREATE TABLE deliveries (
            id TEXT NOT NULL, organization TEXT NOT NULL, webhook TEXT NOT NULL,
            status TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL, payload TEXT NOT NULL, {key}
        ) {"PARTITION BY RANGE (created_at)" if parted else ""}"""
    )
    conn.execute(
        "CREATE INDEX deliveries_finished ON deliveries (organization, updated_at) "
        "WHERE status IN ('delivered', 'failed', 'cancelled')"
    )
    if parted:
        for day in range(days + 2):
            start = T0 + day * DAY
            conn.execute(
                f"CREATE TABLE deliveries_d{day} PARTITION OF deliveries "
                f"FOR VALUES FROM ({start}) TO ({start + DAY})"
            )
    else:
        conn.execute(
            "ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.02, "
            "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 1)"
        )


def fill(conn: psycopg.Connection[Any], day: int, rows: int) -> None:
    start = T0 + day * DAY
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO deliveries SELECT 'msg_' || md5(random()::text || g::text), "
            "'acme', 'hook-' || (g %% 10), 'delivered', %s + g * %s, %s + g * %s + 1, "
            "repeat('x', 300) FROM generate_series(1, %s) g",
            (start, DAY / (rows + 1), start, DAY / (rows + 1), rows),
        )


def size(conn: psycopg.Connection[Any], schema: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r'",
        (schema,),
    ).fetchone()
    return int(row[0]) if row else 0


class Intake(threading.Thread):
    """Single-row inserts, each its own transaction, as fast as they go, until stopped."""

    def __init__(self, url: str, schema: str) -> None:
        super().__init__(daemon=True)
        self.url, self.schema = url, schema
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'SET search_path = "{self.schema}"')
            now = T0 + 7.5 * DAY
            while not self.stop.is_set():
                began = time.perf_counter()
                conn.execute(
                    "INSERT INTO deliveries VALUES (%s, 'acme', 'hook-1', 'pending', %s, %s, %s)",
                    (f"msg_{uuid.uuid4().hex}", now, now, "x" * 300),
                )
                self.latencies.append(time.perf_counter() - began)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000 if ordered else 0.0


def alone(url: str, schema: str, seconds: float = 5.0) -> float:
    intake = Intake(url, schema)
    intake.start()
    time.sleep(seconds)
    intake.stop.set()
    intake.join()
    return len(intake.latencies) / seconds


def remove_day(conn: psycopg.Connection[Any], parted: bool, day: int) -> int:
    if parted:
        count = conn.execute(f"SELECT count(*) FROM deliveries_d{day}").fetchone()
        conn.execute(f"ALTER TABLE deliveries DETACH PARTITION deliveries_d{day}")
        conn.execute(f"DROP TABLE deliveries_d{day}")
        return int(count[0]) if count else 0
    cutoff = T0 + (day + 1) * DAY
    removed = 0
    while True:
        with conn.transaction():
            cur = conn.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries "
                "WHERE organization = 'acme' AND status IN ('delivered', 'failed', 'cancelled') "
                "AND updated_at < %s ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED)",
                (cutoff, BATCH),
            )
            removed += cur.rowcount
        if cur.rowcount < BATCH:
            return removed


def measure(url: str, parted: bool, days: int, per_day: int) -> dict[str, Any]:
    schema = f"bench_ret_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            create(conn, schema, parted, days)
            for day in range(days):
                fill(conn, day, per_day)
            conn.execute("VACUUM ANALYZE deliveries")
            url_schema = url
            inserts_alone = alone(url_schema, schema)
            before = size(conn, schema)
            intake = Intake(url_schema, schema)
            intake.start()
            time.sleep(1.0)
            base = len(intake.latencies)
            began = time.perf_counter()
            removed = remove_day(conn, parted, 0)
            if not parted:
                conn.execute("VACUUM deliveries")  # what autovacuum does next
            took = time.perf_counter() - began
            intake.stop.set()
            intake.join()
            during = intake.latencies[base:]
            fill(conn, days, per_day)  # a new day where the old one was
            if not parted:
                conn.execute("VACUUM deliveries")
            after = size(conn, schema)
        finally:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return {
        "table": "partitioned by day" if parted else "plain, batched deletes",
        "rows_removed": removed,
        "seconds": round(took, 3),
        "rows_per_second": round(removed / took) if took else None,
        "insert_p50_ms": round(pct(during, 0.50), 3),
        "insert_p99_ms": round(pct(during, 0.99), 3),
        "inserts_per_second_alone": round(inserts_alone),
        "bytes_before": before,
        "bytes_after_a_new_day": after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--days", type=int, default=6)
    parser.add_argument("--per-day", type=int, default=30_000)
    args = parser.parse_args(argv)
    results = [measure(args.postgres, parted, args.days, args.per_day) for parted in (False, True)]
    for r in results:
        print(json.dumps(r))
    print(
        "| table | removed one day | rows/s | insert p50 / p99 meanwhile | inserts/s alone "
        "| size before → after a new day |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['table']} | {r['rows_removed']:,} rows in {r['seconds']} s "
            f"| {r['rows_per_second']:,} | {r['insert_p50_ms']} / {r['insert_p99_ms']} ms "
            f"| {r['inserts_per_second_alone']:,} "
            f"| {r['bytes_before'] / 2**20:.1f} → {r['bytes_after_a_new_day'] / 2**20:.1f} MiB |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
