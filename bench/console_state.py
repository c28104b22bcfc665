"""Fill a state for the console's benchmark, and time its pages.

    python -m bench.console_state fill STATE_URL --webhooks 10000 --deliveries 1000000
    python -m bench.console_state time STATE_URL [--rounds 20]

`fill` makes a new state (SQLite file or PostgreSQL schema) with --webhooks live
webhooks in 100 organizations, and --deliveries finished deliveries (90% delivered,
8% failed, 2% pending) with one attempt each, spread over the last 24 hours, written
in bulk (executemany on SQLite, COPY on PostgreSQL).

`time` signs in with an all-organizations admin token and a one-organization
auditor token and prints each page's p50 and p95 over --rounds requests, through the
real app in process (the ASGI interface: no network in the figure).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import time
import uuid
from typing import Any

import httpx

from reconciler import tokens
from reconciler.dispatch.app import create_app
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.model import WebhookSpec
from reconciler.store import open_store
from reconciler.store.base import Write

ORGS = 100
DAY = 86_400.0


def _spec(org: str, name: str, n: int) -> str:
    return WebhookSpec.model_validate(
        {
            "name": name,
            "organization": org,
            "event": ("new_rule_violation", "reserved_instance_surplus")[n % 2],
            "method": "POST",
            "url": f"https://hooks.example.com/{org}/{name}",
            "headers": {"Authorization": "${env:" + org.upper().replace("-", "_") + "_TOKEN}"},
            "body": {"text": "The rule {{name}} was violated at: {{time}}."},
        }
    ).canonical_json()


def fill(url: str, webhooks: int, deliveries: int) -> None:
    store = open_store(url, create=True)
    rng = random.Random(0)
    keys = [(f"org-{n % ORGS:03}", f"hook-{n:05}") for n in range(webhooks)]
    store.commit(
        [Write("put", org, name, _spec(org, name, n)) for n, (org, name) in enumerate(keys)],
        [],
        store.state().serial,
    )
    now = time.time()
    events, rows, attempts = [], [], []
    for n in range(deliveries):
        org, name = keys[rng.randrange(len(keys))]
        created = now - DAY + DAY * n / deliveries
        roll = rng.random()
        status = "delivered" if roll < 0.9 else "failed" if roll < 0.98 else "pending"
        event_id = f"evt_{n:08}"
        delivery_id = f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex}"
        events.append(
            (event_id, "new_rule_violation", org, "rule", "", "2026-12-01T00:00:00Z", created, 1)
        )
        rows.append(
            (
                delivery_id, event_id, org, name, status, 0 if status == "pending" else 1,
                created if status == "pending" else None, created, created + 0.2,
                200 if status == "delivered" else 500 if status == "failed" else None,
                "HTTP 500" if status == "failed" else None,
            )
        )  # fmt: skip
        if status != "pending":
            outcome = "delivered" if status == "delivered" else "failed"
            attempts.append(
                (delivery_id, 1, created, rng.uniform(20, 400), rows[-1][9], "{}", "ok", None,
                 outcome)
            )  # fmt: skip
    event_sql = (
        "INSERT INTO events (id, type, organization, name, description, time, received_at, "
        "deliveries) VALUES ({})"
    )
    delivery_sql = (
        "INSERT INTO deliveries (id, event_id, organization, webhook, status, attempts, due_at, "
        "created_at, updated_at, last_status, last_error) VALUES ({})"
    )
    attempt_sql = (
        "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status, "
        "response_headers, response_excerpt, error, outcome) VALUES ({})"
    )
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.executemany(event_sql.format(", ".join("?" * 8)), events)
            db.executemany(delivery_sql.format(", ".join("?" * 11)), rows)
            db.executemany(attempt_sql.format(", ".join("?" * 9)), attempts)
            db.execute("ANALYZE")
    else:
        pg: Any = store
        with pg._tx() as cur:
            for sql, data in (
                ("COPY events (id, type, organization, name, description, time, received_at, "
                 "deliveries) FROM STDIN", events),
                ("COPY deliveries (id, event_id, organization, webhook, status, attempts, "
                 "due_at, created_at, updated_at, last_status, last_error) FROM STDIN", rows),
                ("COPY attempts (delivery_id, number, started_at, duration_ms, status, "
                 "response_headers, response_excerpt, error, outcome) FROM STDIN", attempts),
            ):  # fmt: skip
                with cur.copy(sql) as copy:
                    for row in data:
                        copy.write_row(row)
            cur.execute("ANALYZE")
    store.close()
    print(f"filled {url}: {webhooks} webhooks, {deliveries} deliveries")


PAGES = [
    "/ui/webhooks",
    "/ui/webhooks?org=org-007",
    "/ui/webhooks?state=enabled&event=new_rule_violation",
    "/ui/webhooks/org-007/hook-00007",
    "/ui/deliveries",
    "/ui/deliveries?org=org-007",
    "/ui/deliveries?status=failed",
    "/ui/deliveries?webhook=hook-00007&org=org-007",
    "/ui/history",
    "/ui/activity",
    "/ui/activity?org=org-007",
    "/ui/new",
]


async def _time(url: str, rounds: int) -> None:
    store = open_store(url)
    sender = Sender(httpx.AsyncHTTPTransport())
    dispatcher = Dispatcher(store, sender)
    app = create_app(dispatcher)
    for label, orgs, role in (
        ("admin, all orgs", (), "admin"),
        ("auditor, 1 org", ("org-007",), "auditor"),
    ):
        _, secret = tokens.create_token(
            store, role=role, organizations=orgs, all_organizations=not orgs,
            name="bench", expires_in=None, now=time.time(),
        )  # fmt: skip
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            form = await client.get("/ui/sign-in")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert csrf
            await client.post("/ui/sign-in", data={"token": secret, "csrf_token": csrf.group(1)})
            print(f"-- {label}")
            for page in PAGES:
                times = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    answer = await client.get(page)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code in (200, 404), (page, answer.status_code)
                times.sort()
                p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
                first = times[0]
                print(
                    f"{page:<55} p50 {statistics.median(times):7.1f} ms  p95 {p95:7.1f} ms"
                    f"  min {first:6.1f} ms"
                )
    await sender.aclose()
    dispatcher.db.close()
    store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fill")
    f.add_argument("url")
    f.add_argument("--webhooks", type=int, default=10_000)
    f.add_argument("--deliveries", type=int, default=1_000_000)
    t = sub.add_parser("time")
    t.add_argument("url")
    t.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command == "fill":
        fill(args.url, args.webhooks, args.deliveries)
    else:
        asyncio.run(_time(args.url, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
