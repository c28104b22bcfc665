"""The console's pages over a big state, and the dispatcher with and without the console.

    .venv/bin/python bench/bench_console.py [--backends sqlite,postgres|none]
        [--webhooks 10000] [--deliveries 1000000] [--requests 40]
        [--dispatch-rounds 3] [--dispatch-deliveries 5000] [--fresh]

Every process talks over loopback (127.0.0.1) only, every loop is bounded in count
and in time. One run:

  seed      a state per backend with --webhooks webhooks in 100 organizations
            (bench/generate.py's definitions, 100 per organization, applied with
            `reconciler apply`: their live rows and the audit log's `create`
            entries are what apply writes), then, with bulk SQL in one transaction
            each (a recursive CTE on SQLite, generate_series on PostgreSQL), nine
            more audit entries per webhook (`update` and `resume`, by several
            actors, over the last 30 days), --deliveries / 2 events of two
            deliveries each, to two webhooks of the event's organization, and their
            attempts: 40% of the events in the last 24 hours, the rest over the 6
            days before; 88% delivered (one in ten after a 503), 8% failed (a 400
            at once, or three 503s), 2% cancelled, 2% pending (a retry due in 30
            days, so nothing is sent). Ids are time-ordered as the dispatcher's
            (reconciler/ids.py). The SQLite file is kept in bench/.data/ and reused
            (`reconciler migrate` brings it to the checkout's schema; a
            migration changed since, or --fresh, seeds it again);
            PostgreSQL's is a scratch database, reconciler_bench_console, made and
            dropped by each run.
  pages     `reconciler serve` on the state (as deployed: retention and every
            default on), an admin token for every organization signed in to the
            console through its sign-in form (the session cookie and the form's
            CSRF token, as a browser does), then each page --requests times in
            turn, one request at a time over one keep-alive connection, after
            two untimed ones: p50, p95 and max of the time to the last byte of the
            answer, per page and backend. Pages: the lists with and without
            filters (one organization, an event type, a status, a time window),
            the deliveries list 200 "Older" pages deep (keyset), one webhook, one
            delivery with its attempts, the history, the activity chart, the new
            webhook form and its JSON check.
  dispatch  bench/bench_dispatch.py's durable run (K=1, one process, SQLite,
            --dispatch-deliveries each) with the console mounted and with
            `serve --no-console`, alternating, --dispatch-rounds times each: the
            medians and the ratio.

Goal (the issue): every page's p95 under 200 ms on both backends; the dispatcher's
throughput with the console mounted within noise of `--no-console`'s. Exit 1 when a
page misses.

Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_dispatch  # noqa: E402
from harness import (  # noqa: E402
    Sink,
    code_version,
    machine_busy,
    machine_line,
    percentile,
    read_line,
    stop,
)

from bench.generate import write_definitions  # noqa: E402

GOAL_P95_MS = 200.0
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "reconciler_bench_console"
PER_ORG = 100
DEEP_PAGES = 200
DATA = BENCH / ".data"
DAY = 86400.0


# -- seeding ----------------------------------------------------------------------------

# The same rows on both backends, from one integer sequence: `n` numbers the events
# (0 .. events-1); deliveries 2n and 2n+1 are event n's. Only the SQL functions
# differ (SQLite's printf and integer division against PostgreSQL's to_hex/lpad),
# so each statement is written once with {placeholders} filled per backend.
SQL_FUNCS = {
    "sqlite": {
        "hex12": "printf('%012x', {x})",
        "hex20": "printf('%020x', {x})",
        "iso": "strftime('%Y-%m-%dT%H:%M:%fZ', {x}, 'unixepoch')",
        "float": "CAST({x} AS REAL)",
        "seq": (
            "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {last}) "
        ),
        "from_seq": "seq",
    },
    "postgres": {
        "hex12": "lpad(to_hex(({x})::bigint), 12, '0')",
        "hex20": "lpad(to_hex(({x})::bigint), 20, '0')",
        "iso": "to_char(to_timestamp({x}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
        "float": "({x})::double precision",
        "seq": "",
        "from_seq": "generate_series(0::bigint, {last}) AS seq(n)",
    },
}


def _sql(backend: str, text: str, **values: Any) -> str:
    """`text` with {f:NAME(expr)} calls expanded for the backend, then `values`."""
    funcs = SQL_FUNCS[backend]

    def call(found: re.Match[str]) -> str:
        return funcs[found.group(1)].format(x=found.group(2))

    expanded = re.sub(r"\{f:(\w+)\(((?:[^()]|\([^()]*\))*)\)\}", call, text)
    expanded = expanded.replace("{SEQ}", funcs["seq"]).replace("{FROM_SEQ}", funcs["from_seq"])
    return expanded.format(**values)


# A webhook is chosen by number: the temporary table `w` numbers the applied webhooks
# 0 .. W-1, an organization's 100 in a row, so w.i and w.i # 1 (xor 1) share it.
EVENTS_SQL = """
INSERT INTO events (id, type, organization, name, description, time, received_at, deliveries)
{SEQ}
SELECT 'evt_' || {f:hex12(CAST(t.at * 1000 AS BIGINT))} || {f:hex20(t.n)},
       w.event, w.organization, 'rule-' || (t.n % 997),
       'bench event ' || t.n, {f:iso(t.at)}, t.at, 2
FROM (SELECT n, {f:float({now} - CASE WHEN n % 10 < 4 THEN (n * 7919) % 86400000 / 1000.0
                                ELSE 86400 + (n * 104729) % 518400000 / 1000.0 END)} AS at,
             (n * 7919) % {webhooks} AS wi
      FROM {FROM_SEQ}) AS t
JOIN w ON w.i = t.wi
"""

# status by (2n + k) * 37 % 100: 0-87 delivered, 88-95 failed, 96-97 cancelled, 98-99 pending
DELIVERIES_SQL = """
INSERT INTO deliveries (id, event_id, organization, webhook, status, attempts, due_at,
                        created_at, updated_at, last_status, last_error)
{SEQ}
SELECT 'msg_' || {f:hex12(CAST(d.at * 1000 AS BIGINT))} || {f:hex20(d.m)},
       'evt_' || {f:hex12(CAST(d.at * 1000 AS BIGINT))} || {f:hex20(d.n)},
       w.organization, w.name,
       CASE WHEN d.r < 88 THEN 'delivered' WHEN d.r < 96 THEN 'failed'
            WHEN d.r < 98 THEN 'cancelled' ELSE 'pending' END,
       CASE WHEN d.r < 88 THEN (CASE WHEN d.m % 10 = 0 THEN 2 ELSE 1 END)
            WHEN d.r < 96 THEN (CASE WHEN d.m % 2 = 0 THEN 1 ELSE 3 END)
            WHEN d.r < 98 THEN 0 ELSE 1 END,
       CASE WHEN d.r >= 98 THEN d.at + 30 * 86400 END,
       d.at,
       d.at + CASE WHEN d.r >= 88 AND d.r < 96 AND d.m % 2 = 1 THEN 70.0 ELSE 0.2 END,
       CASE WHEN d.r < 88 THEN 200 WHEN d.r < 96 THEN (CASE WHEN d.m % 2 = 0 THEN 400 ELSE 503 END)
            WHEN d.r < 98 THEN NULL ELSE 503 END,
       CASE WHEN d.r >= 88 AND d.r < 96 AND d.m % 2 = 0 THEN 'HTTP 400'
            WHEN d.r >= 88 AND d.r < 96 THEN 'HTTP 503 (retries exhausted)'
            WHEN d.r >= 96 AND d.r < 98 THEN 'webhook deleted'
            WHEN d.r >= 98 THEN 'HTTP 503' END
FROM (SELECT e.n, 2 * e.n + k.k AS m, ((2 * e.n + k.k) * 37) % 100 AS r, e.at,
             (e.wi - e.wi % 2) + ((e.wi % 2 + k.k) % 2) AS wi
      FROM (SELECT n, {f:float({now} - CASE WHEN n % 10 < 4 THEN (n * 7919) % 86400000 / 1000.0
                                       ELSE 86400 + (n * 104729) % 518400000 / 1000.0 END)} AS at,
                   (n * 7919) % {webhooks} AS wi
            FROM {FROM_SEQ}) AS e
      CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1) AS k) AS d
JOIN w ON w.i = d.wi
"""

# One row per attempt: number 1..attempts of each delivery.
ATTEMPTS_SQL = """
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status, response_headers,
                      response_excerpt, error, outcome)
SELECT d.id, a.k, d.created_at + (a.k - 1) * 30.0 + 0.05,
       20.0 + (a.k * 13 + length(d.webhook)) % 180,
       CASE WHEN d.status = 'delivered' AND a.k = d.attempts THEN 200
            WHEN d.status = 'failed' AND d.attempts = 1 THEN 400 ELSE 503 END,
       '{{"content-type": "application/json"}}',
       CASE WHEN d.status = 'delivered' AND a.k = d.attempts THEN 'ok'
            WHEN d.status = 'failed' AND d.attempts = 1 THEN '{{"error": "channel_not_found"}}'
            ELSE 'Service Unavailable' END,
       NULL,
       CASE WHEN d.status = 'delivered' AND a.k = d.attempts THEN 'delivered'
            WHEN d.status = 'failed' AND a.k = d.attempts THEN 'failed' ELSE 'retry' END
FROM deliveries AS d
JOIN (SELECT 1 AS k UNION ALL SELECT 2 UNION ALL SELECT 3) AS a ON a.k <= d.attempts
"""

AUDIT_SQL = """
INSERT INTO audit_log (at, serial, action, organization, name, before, after, actor,
                       git_commit, plan_checksum, note)
SELECT {f:iso({now} - (w.i * 9 + k.k) * 2654435761 % 2592000)},
       {serial} + w.i * 9 + k.k,
       CASE WHEN k.k = 8 THEN 'resume' ELSE 'update' END,
       w.organization, w.name, w.spec, w.spec,
       CASE k.k % 3 WHEN 0 THEN 'alice@' || w.organization WHEN 1 THEN 'ci (github actions)'
            ELSE 'bob@' || w.organization END,
       {f:hex12(w.i * 9 + k.k)}, NULL, NULL
FROM w CROSS JOIN ({ks}) AS k
"""


def _w_table(backend: str) -> list[str]:
    """The numbered webhooks, as a temporary table `w`."""
    event = "json_extract(spec, '$.event')" if backend == "sqlite" else "(spec::json ->> 'event')"
    return [
        "CREATE TEMPORARY TABLE w AS SELECT "
        "(ROW_NUMBER() OVER (ORDER BY organization, name)) - 1 AS i, organization, name, "
        f"{event} AS event, spec FROM webhooks",
        "CREATE INDEX w_i ON w (i)",
    ]


def seed_statements(backend: str, events: int, webhooks: int, now: float) -> list[str]:
    serial = 1_000_000
    ks = " UNION ALL ".join(f"SELECT {k} AS k" for k in range(9))
    values = {"now": f"{now:.3f}", "webhooks": webhooks, "last": events - 1}
    return [
        *_w_table(backend),
        _sql(backend, AUDIT_SQL, serial=serial, ks=ks, **values),
        _sql(backend, EVENTS_SQL, **values),
        _sql(backend, DELIVERIES_SQL, **values),
        _sql(backend, ATTEMPTS_SQL),
    ]


def cli(*args: str, timeout: float = 900) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"reconciler {' '.join(args[:2])} failed: {done.stdout}{done.stderr}")
    return done.stdout


def definitions(webhooks: int) -> Path:
    """bench/generate.py's definitions, 100 per organization, written once."""
    folder = DATA / f"console-defs-{webhooks}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_definitions(folder, orgs=max(1, webhooks // PER_ORG), per_org=PER_ORG)
        (folder / ".complete").write_text("")
    return folder


def migrations_key() -> str:
    """Each SQLite migration's name and a hash of its statements, a line each."""
    from reconciler.store.sqlite_migrations import MIGRATIONS

    return "".join(
        f"{name} {hashlib.sha256(repr(statements).encode()).hexdigest()[:16]}\n"
        for name, statements in MIGRATIONS
    )


def migrated_only(kept: str) -> bool:
    """Whether the kept file's migrations are the checkout's first ones, unchanged (then
    `reconciler migrate` brings it up to date); a migration changed before it was
    released means seeding again."""
    return migrations_key().startswith(kept)


def seed(backend: str, url: str, webhooks: int, deliveries: int) -> dict[str, float]:
    """Apply the definitions, then the bulk rows; seconds per step."""
    times: dict[str, float] = {}
    started = time.perf_counter()
    cli("apply", str(definitions(webhooks)), "--state", url, "--auto-approve", "--actor",
        "alice@bench")  # fmt: skip
    times["apply"] = time.perf_counter() - started
    statements = seed_statements(backend, deliveries // 2, webhooks, time.time())
    started = time.perf_counter()
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("PRAGMA cache_size = -1000000")
            conn.execute("BEGIN")
            for sql in statements:
                conn.execute(sql)
            conn.execute("COMMIT")
            # No ANALYZE: reconciler never runs one, so a real state's planner has no
            # statistics either (PostgreSQL's autovacuum gathers them there).
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=False) as pg:
            pg.execute("SET maintenance_work_mem = '512MB'")
            for sql in statements:
                pg.execute(sql)  # type: ignore[arg-type]
            pg.commit()
            pg.autocommit = True
            pg.execute("VACUUM ANALYZE")
    times["bulk"] = time.perf_counter() - started
    return times


def counts(backend: str, url: str) -> dict[str, int]:
    tables = ("webhooks", "audit_log", "events", "deliveries", "attempts")
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    import psycopg

    with psycopg.connect(url) as pg:
        return {t: pg.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # type: ignore[index]


@contextlib.contextmanager
def seeded_state(
    backend: str, webhooks: int, deliveries: int, fresh: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The state URL of a seeded state of `backend`, and how it was made."""
    if backend == "sqlite":
        DATA.mkdir(exist_ok=True)
        db = DATA / f"console-{webhooks}-{deliveries}.db"
        key = DATA / f"{db.name}.migrations"
        url = f"sqlite:///{db}"
        made: dict[str, Any] = {"reused": True}
        if fresh or not db.exists() or not key.exists() or not migrated_only(key.read_text()):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            key.unlink(missing_ok=True)
            made = seed(backend, url, webhooks, deliveries)
        elif key.read_text() != migrations_key():
            cli("migrate", "--state", url)  # the checkout's newer migrations
            made["migrated"] = True
        key.write_text(migrations_key())
        made["size_mb"] = db.stat().st_size / 2**20
        made["rows"] = counts(backend, url)
        yield url, made
        return
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {PG_DATABASE}")
    url = POSTGRES_ADMIN.rpartition("/")[0] + f"/{PG_DATABASE}"
    try:
        made = seed(backend, url, webhooks, deliveries)
        with psycopg.connect(url) as pg:
            made["size_mb"] = (
                pg.execute(  # type: ignore[index]
                    f"SELECT pg_database_size('{PG_DATABASE}')"
                ).fetchone()[0]
                / 2**20
            )
        made["rows"] = counts(backend, url)
        yield url, made
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")


# -- the pages ------------------------------------------------------------------------------


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str


def start_serve(state: str, workdir: Path, tag: str, *extra: str) -> Served:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "--state", state, "--host", "127.0.0.1",
         "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=open(workdir / f"serve-{tag}.log", "w"),  # noqa: SIM115
        text=True, cwd=ROOT,
    )  # fmt: skip
    port = int(read_line(proc, r"serving on http://[\d.]+:(\d+)", 120).group(1))
    return Served(proc, f"http://127.0.0.1:{port}")


def signed_in(url: str, token: str) -> Any:
    """An httpx client with a console session, signed in through the form."""
    import httpx

    client = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
    form = client.get("/ui/sign-in")
    form.raise_for_status()
    answer = client.post("/ui/sign-in", data={"token": token, "csrf_token": csrf_of(form.text)})
    if answer.status_code not in (302, 303):
        raise SystemExit(f"sign-in answered {answer.status_code}: {answer.text[:300]}")
    return client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]*)"', page) or re.search(
        r'value="([^"]*)"[^>]*name="csrf_token"', page
    )
    if not found:
        raise SystemExit("no csrf_token field in the page")
    return html.unescape(found.group(1))


def older_link(page: str) -> str | None:
    for found in re.finditer(r"<a\s[^>]*>", page):
        tag = found.group(0)
        end = page.find("</a>", found.end())
        text = re.sub(r"<[^>]+>", "", page[found.end() : end])
        if "Older" in text:
            href = re.search(r'href="([^"]+)"', tag)
            return html.unescape(href.group(1)) if href else None
    return None


def first_link(page: str, prefix: str) -> str:
    found = re.search(rf'href="({re.escape(prefix)}[^"?#]+)"', page)
    if not found:
        raise SystemExit(f"no link to {prefix}... in the page")
    return html.unescape(found.group(1))


def pages(client: Any) -> list[tuple[str, str, str]]:
    """(name, method, path) of every page measured; found by following the console's
    own links, as a person would."""
    listed = client.get("/ui/webhooks?org=acme-000").text
    webhook = first_link(listed, "/ui/webhooks/")
    deliveries = client.get("/ui/deliveries?status=failed").text
    delivery = first_link(deliveries, "/ui/deliveries/")
    deep = "/ui/deliveries"
    for _ in range(DEEP_PAGES):
        found = older_link(client.get(deep).text)
        if found is None:
            break
        deep = urljoin("/ui/deliveries", found)
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - DAY))
    until = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - DAY / 2))
    org, name = webhook.removeprefix("/ui/webhooks/").split("/", 1)
    return [
        ("sign-in form", "GET", "/ui/sign-in"),
        ("webhooks", "GET", "/ui/webhooks"),
        ("webhooks ?org", "GET", "/ui/webhooks?org=acme-000"),
        ("webhooks ?event", "GET", "/ui/webhooks?event=new_rule_violation"),
        ("one webhook", "GET", webhook),
        ("deliveries", "GET", "/ui/deliveries"),
        ("deliveries ?status=failed", "GET", "/ui/deliveries?status=failed"),
        ("deliveries ?org", "GET", "/ui/deliveries?org=acme-000"),
        ("deliveries ?org&webhook", "GET", f"/ui/deliveries?org={org}&webhook={name}"),
        ("deliveries ?event", "GET", "/ui/deliveries?event=reserved_instance_surplus"),
        ("deliveries ?since&until", "GET", f"/ui/deliveries?since={since}&until={until}"),
        (f"deliveries, {DEEP_PAGES} pages deep", "GET", deep),
        ("one delivery", "GET", delivery),
        ("history", "GET", "/ui/history"),
        ("history ?webhook", "GET", f"/ui/history?webhook={name}"),
        ("history ?actor", "GET", "/ui/history?actor=ci%20(github%20actions)"),
        ("activity", "GET", "/ui/activity"),
        ("activity ?org", "GET", "/ui/activity?org=acme-000"),
        ("new webhook form", "GET", "/ui/new"),
    ]


PARTNER_PAGES = (
    "webhooks",
    "deliveries",
    "deliveries ?status=failed",
    "deliveries ?event",
    "history",
    "activity",
)


def time_pages(
    client: Any, measured: list[tuple[str, str, str]], n: int, budget: float
) -> dict[str, Any]:
    """Each page n times, one after another, after two untimed requests (the first one
    is reported apart: a cold cache); at least 5 and at most `budget` seconds a page."""
    out: dict[str, Any] = {}
    for name, method, path in measured:
        started = time.perf_counter()
        client.request(method, path).raise_for_status()
        first = (time.perf_counter() - started) * 1000
        client.request(method, path)
        times: list[float] = []
        spent = time.perf_counter()
        while len(times) < n and (len(times) < 5 or time.perf_counter() - spent < budget):
            started = time.perf_counter()
            answer = client.request(method, path)
            _ = answer.content
            times.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise SystemExit(f"{name} ({path}) answered {answer.status_code}")
        out[name] = {
            "path": path,
            "n": len(times),
            "first": first,
            "p50": percentile(times, 50),
            "p95": percentile(times, 95),
            "max": max(times),
            "bytes": len(answer.content),
        }
        print(
            f"  {name:34} p50 {out[name]['p50']:7.1f} ms  p95 {out[name]['p95']:7.1f} ms  "
            f"max {out[name]['max']:7.1f} ms  (n={len(times)}, first {first:,.0f} ms)  "
            f"{out[name]['bytes'] / 1024:6.1f} KiB",
            flush=True,
        )
    return out


def measure_pages(state: str, workdir: Path, backend: str, n: int, budget: float) -> dict[str, Any]:
    """Every page for an admin of every organization, then the main pages for a
    partner's admin token of 10 named organizations (the IN-list queries)."""
    every = cli("tokens", "create", "--role", "admin", "--all-orgs", "--name", "bench-console",
                "--state", state).strip()  # fmt: skip
    orgs = [f"--org={o}" for o in organizations(state)[:10]]
    partner = cli("tokens", "create", "--role", "admin", *orgs, "--name", "bench-partner",
                  "--state", state).strip()  # fmt: skip
    served = start_serve(state, workdir, f"pages-{backend}")
    out: dict[str, Any] = {}
    try:
        busy0, _ = machine_busy()
        wall0 = time.monotonic()
        for who, token in (("every organization", every), ("10 organizations", partner)):
            print(f" admin of {who}:", flush=True)
            client = signed_in(served.url, token)
            try:
                measured = pages(client)
                if who != "every organization":
                    measured = [page for page in measured if page[0] in PARTNER_PAGES]
                out[who] = time_pages(client, measured, n, budget)
            finally:
                client.close()
        busy1, _ = machine_busy()
        load = (busy1 - busy0) / (time.monotonic() - wall0)
    finally:
        stop(served.proc)
    return {"pages": out, "machine_busy_cores": load}


def organizations(state: str) -> list[str]:
    from reconciler.store import open_store

    store = open_store(state)
    try:
        return sorted({w.organization for w in store.webhooks()})
    finally:
        store.close()


# -- the dispatcher with and without the console --------------------------------------------


def measure_dispatch(workdir: Path, rounds: int, deliveries: int) -> dict[str, Any]:
    """bench_dispatch's durable run, console mounted and --no-console, alternating."""
    concurrency = 50
    sink = Sink(workdir)
    rates: dict[str, list[float]] = {"console": [], "no-console": []}
    cpu_us: dict[str, list[float]] = {"console": [], "no-console": []}
    base = bench_dispatch.serve_flags()
    try:
        template = bench_dispatch.make_state(workdir, sink.port, 1, concurrency)
        bench_dispatch.SERVE_FLAGS[:] = base
        bench_dispatch.durable(sink, template, workdir, 1, concurrency, 1000)  # warm-up
        for round_ in range(rounds):
            order = ("console", "no-console") if round_ % 2 == 0 else ("no-console", "console")
            for layout in order:
                bench_dispatch.SERVE_FLAGS[:] = base + (
                    ["--no-console"] if layout == "no-console" else []
                )
                run = bench_dispatch.durable(sink, template, workdir, 1, concurrency, deliveries)
                rates[layout].append(run.rate)
                cpu_us[layout].append(run.cpu_us)
                print(
                    f"  [{round_ + 1}] {layout:10} {run.rate:8,.0f} deliveries/s "
                    f"({run.cpu_us:,.0f} µs CPU per delivery; other load {run.others:.2f} cores)",
                    flush=True,
                )
    finally:
        sink.close()
    return {"rates": rates, "cpu_us": cpu_us}


# -- report -------------------------------------------------------------------------------


def print_pages(results: dict[str, Any], backends: list[str], requests: int) -> bool:
    """The pages' table; whether every p95 is under the goal."""
    met = True
    print(f"\nPages, up to {requests} requests each after two (goal: p95 < "
          f"{GOAL_P95_MS:.0f} ms):\n")  # fmt: skip
    print(
        "| token | page | " + " | ".join(f"{b} p50 | {b} p95 | {b} first" for b in backends) + " |"
    )
    print("|---|---|" + "---:|---:|---:|" * len(backends))
    for who, measured in results[backends[0]]["pages"].items():
        for name in measured:
            cells = []
            for backend in backends:
                page = results[backend]["pages"][who][name]
                met &= page["p95"] < GOAL_P95_MS
                cells.append(
                    f"{page['p50']:.1f} ms | {page['p95']:.1f} ms | {page['first']:,.0f} ms"
                )
            print(f"| {who} | {name} | " + " | ".join(cells) + " |")
    for backend in backends:
        print(f"{backend}: machine busy {results[backend]['machine_busy_cores']:.2f} of 2 cores "
              "while measured (this process and serve included)")  # fmt: skip
    return met


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends",
        default="sqlite,postgres",
        help="a list of sqlite and postgres, or none (the dispatcher alone)",
    )
    parser.add_argument("--webhooks", type=int, default=10_000)
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument(
        "--budget", type=float, default=20.0, help="seconds a page at most (>= 5 requests)"
    )
    parser.add_argument("--dispatch-rounds", type=int, default=3, help="0: skip")
    parser.add_argument("--dispatch-deliveries", type=int, default=5000)
    parser.add_argument("--fresh", action="store_true", help="seed the SQLite file again")
    parser.add_argument("--seed-only", action="store_true", help="seed, count, stop")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = [] if args.backends == "none" else args.backends.split(",")
    print(f"machine: {machine_line(POSTGRES_ADMIN if 'postgres' in backends else None)}")
    print(f"code: {code_version()}", flush=True)
    results: dict[str, Any] = {}
    met = True
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        work = Path(tmp)
        for backend in backends:
            print(f"\n{backend}: seeding {args.webhooks:,} webhooks, {args.deliveries:,} "
                  "deliveries", flush=True)  # fmt: skip
            with seeded_state(backend, args.webhooks, args.deliveries, args.fresh) as (url, made):
                print(f"  seeded: {json.dumps(made)}", flush=True)
                if args.seed_only:
                    continue
                figures = measure_pages(url, work, backend, args.requests, args.budget)
                results[backend] = {"seed": made, **figures}
        if args.dispatch_rounds and not args.seed_only:
            print("\ndispatcher, SQLite, K=1: console mounted against --no-console", flush=True)
            rates = measure_dispatch(work, args.dispatch_rounds, args.dispatch_deliveries)
            results["dispatch"] = rates
    if args.seed_only:
        return 0
    if backends:
        met = print_pages(results, backends, args.requests)
    if "dispatch" in results:
        rates, cpu = results["dispatch"]["rates"], results["dispatch"]["cpu_us"]
        with_console = statistics.median(rates["console"])
        without = statistics.median(rates["no-console"])
        spread = max(rates["no-console"]) / min(rates["no-console"]) - 1
        print(
            f"\ndispatcher: console mounted {with_console:,.0f}/s "
            f"({', '.join(f'{r:,.0f}' for r in rates['console'])}), --no-console "
            f"{without:,.0f}/s ({', '.join(f'{r:,.0f}' for r in rates['no-console'])}): "
            f"ratio {with_console / without:.2f}; --no-console's own spread {spread:.0%}"
        )
        cpu_with, cpu_without = (statistics.median(cpu[k]) for k in ("console", "no-console"))
        print(
            f"dispatcher CPU per delivery (medians): console mounted {cpu_with:,.0f} µs, "
            f"--no-console {cpu_without:,.0f} µs: ratio {cpu_with / cpu_without:.2f}"
        )
    print(f"verdict: {'goal met' if met else 'goal MISSED'}")
    print(f"code at the end of the run: {code_version()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
