"""Faults between dispatchers and PostgreSQL: how long takeover and unreadiness take,
and how many deliveries are sent twice, per fault, with the shipped deadlines.

Real `reconciler serve` processes on one PostgreSQL state, reached directly or through
the tests' fault-injecting TCP proxy (tests/support/pg_proxy.py), sending to a receiver on
loopback. Every deadline is the shipped default (idle-in-transaction 30 s, intake 10 s,
/readyz's probe), the webhook's timeout is --timeout (5 s: its lease is 15 s).

    stall     a link stalls right after a claim (the server commits nothing): time
              until /readyz says unready, until the claimed rows are free again
              (idle_in_transaction_session_timeout), how long intake took to answer
              meanwhile, and until another dispatcher had delivered them all
    late      a claim commits, its answer reaches its dispatcher after the lease:
              time until another dispatcher delivered them all (the lease running
              out), and what the late one sent (it must send nothing)
    kill      SIGKILL of a dispatcher with requests in flight, no restart: time until
              a survivor on the same host has taken every delivery it held
    terminate every backend of two dispatchers terminated 4 times, a second apart,
              while events are posted: refusals (503, JSON) and 500s seen by clients,
              the slowest intake answer, duplicates
    latency   20 ms added each way, then more than the intake deadline: intake answer
              times

Usage (the PostgreSQL server as the tests use it; a schema of its own, dropped after):

    .venv/bin/python bench/bench_faults.py [--repeat 1] [--timeout 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import psycopg  # noqa: E402

from reconciler.dispatch.service import INTAKE_DEADLINE  # noqa: E402
from reconciler.store.postgres import SESSION_DEFAULTS  # noqa: E402
from reconciler.store.queue import LEASE_MARGIN  # noqa: E402
from tests.support.fault_fleet import Fleet  # noqa: E402
from tests.support.receiver import hang  # noqa: E402
from tests.support.serve_process import rows  # noqa: E402

POSTGRES = os.environ.get("RECONCILER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
IDLE = int(SESSION_DEFAULTS["idle_in_transaction_session_timeout"].removesuffix("s"))
WAIT = 120.0  # no single wait may take longer
EVENTS = 50


def until(check: Callable[[], bool], what: str, limit: float = WAIT) -> float:
    """Poll `check` every 50 ms; seconds until it held (fails after `limit`)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > limit:
            raise SystemExit(f"not within {limit:g}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def duplicates(fleet: Fleet) -> int:
    return sum(n - 1 for n in fleet.sent().values() if n > 1)


def delivered(fleet: Fleet, count: int) -> Callable[[], bool]:
    return lambda: fleet.statuses().get("delivered", 0) == count


def stall(fleet: Fleet) -> dict[str, Any]:
    proxy = fleet.proxy()
    stalled = fleet.start(proxy)
    until(lambda: fleet.ready(stalled), "ready")
    proxy.stall_after_claim()
    fleet.add_events(EVENTS)
    if not proxy.tripped.wait(WAIT):
        raise SystemExit("no claim went through the proxy")
    tripped = time.monotonic()
    posted: list[tuple[Any, float]] = []  # intake's answer meanwhile, from another thread
    poster = threading.Thread(
        target=lambda: posted.append(fleet.post(stalled, "during-the-stall")), daemon=True
    )
    poster.start()
    until(lambda: not fleet.ready(stalled), "unready")
    unready = time.monotonic() - tripped
    free_sql = (
        "SELECT count(*) FROM (SELECT id FROM deliveries WHERE status = 'pending' "
        "FOR UPDATE SKIP LOCKED) free"
    )
    until(lambda: rows(fleet.state, free_sql)[0][0] == EVENTS, "rows free")
    released = time.monotonic() - tripped
    poster.join(WAIT)
    ((response, intake),) = posted
    fleet.start()
    until(delivered(fleet, EVENTS), "delivered by the other")
    taken = time.monotonic() - tripped
    proxy.release()
    until(lambda: fleet.ready(stalled), "ready again")
    time.sleep(1.0)
    return {
        "fault": "stall",
        "unready_s": unready,
        "rows_free_s": released,
        "intake_s": intake,
        "intake_status": response.status_code,
        "delivered_elsewhere_s": taken,
        "duplicates": duplicates(fleet),
    }


def late(fleet: Fleet, lease: float) -> dict[str, Any]:
    proxy = fleet.proxy()
    slow = fleet.start(proxy)
    until(lambda: fleet.ready(slow), "ready")
    proxy.late_commit_after_claim(lease + 3)
    fleet.add_events(EVENTS)
    if not proxy.tripped.wait(WAIT):
        raise SystemExit("no claim committed through the proxy")
    tripped = time.monotonic()
    leased_sql = "SELECT id FROM deliveries WHERE status = 'in_flight'"
    until(lambda: bool(rows(fleet.state, leased_sql)), "the claim committed")
    leased = {row[0] for row in rows(fleet.state, leased_sql)}  # up to max_in_flight
    claimed = len(leased)
    fleet.start()
    until(delivered(fleet, EVENTS), "delivered by the other")
    arrived = [
        r.arrived - tripped for r in fleet.receiver.requests() if r.header("webhook-id") in leased
    ]
    first, taken = min(arrived), max(arrived)
    put_back = "lease too short to send"
    until(lambda: slow.log().count(put_back) >= claimed, "put back", lease + 30)
    time.sleep(1.0)
    return {
        "fault": "late",
        "claimed": claimed,
        "takeover_first_s": first,
        "takeover_last_s": taken,
        "put_back_unsent": slow.log().count(put_back),
        "duplicates": duplicates(fleet),
    }


def kill(fleet: Fleet) -> dict[str, Any]:
    fleet.receiver.script("/a", hang(1.0))
    victim, _ = fleet.start(), fleet.start()
    for n in range(EVENTS):
        fleet.accept(victim, f"evt-{n:03d}")
    fleet.receiver.wait_for(5)
    victim.process.kill()
    killed = time.monotonic()
    victim.wait()
    mine = (f"%:{victim.pid}:%",)
    held_sql = "SELECT count(*) FROM deliveries WHERE status = 'in_flight' AND lease_owner LIKE %s"
    held = rows(fleet.state, held_sql, mine)[0][0]
    until(lambda: rows(fleet.state, held_sql, mine)[0][0] == 0, "taken over")
    taken = time.monotonic() - killed
    until(delivered(fleet, EVENTS), "all delivered")
    return {"fault": "kill", "held": held, "takeover_s": taken, "duplicates": duplicates(fleet)}


def terminate(fleet: Fleet, admin_url: str) -> dict[str, Any]:
    servers = [fleet.start(), fleet.start()]
    stop = threading.Event()

    def burst() -> None:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
            for _ in range(4):
                if stop.wait(1.0):
                    return
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND pid <> pg_backend_pid()",
                    (fleet.app,),
                )

    killer = threading.Thread(target=burst, daemon=True)
    killer.start()
    codes: dict[int, int] = {}
    slowest = 0.0
    try:
        for n in range(EVENTS * 2):
            while True:
                response, took = fleet.post(servers[n % 2], f"evt-{n:03d}")
                codes[response.status_code] = codes.get(response.status_code, 0) + 1
                slowest = max(slowest, took)
                if response.status_code == 202:
                    break
                time.sleep(0.1)
            time.sleep(0.05)
    finally:
        stop.set()
        killer.join(WAIT)
    until(delivered(fleet, EVENTS * 2), "all delivered")
    return {
        "fault": "terminate",
        "answers": codes,
        "slowest_intake_s": slowest,
        "duplicates": duplicates(fleet),
    }


def latency(fleet: Fleet) -> dict[str, Any]:
    proxy = fleet.proxy()
    server = fleet.start(proxy)
    proxy.latency = 0.02
    times = [fleet.post(server, f"evt-{n:03d}")[1] for n in range(20)]
    proxy.latency = INTAKE_DEADLINE
    response, over = fleet.post(server, "slower")
    proxy.latency = 0.0
    fleet.accept(server, "slower")
    until(delivered(fleet, 21), "all delivered")
    return {
        "fault": "latency",
        "intake_p50_s": statistics.median(times),
        "intake_max_s": max(times),
        "slow_db_status": response.status_code,
        "slow_db_answer_s": over,
        "duplicates": duplicates(fleet),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0, help="the webhook's, seconds")
    parser.add_argument("--postgres", default=POSTGRES, help="a database URL, without ?schema=")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args(argv)
    lease = args.timeout + LEASE_MARGIN
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; webhook timeout {args.timeout:g} s "
        f"(lease {lease:g} s); idle-in-transaction {IDLE} s; intake deadline "
        f"{INTAKE_DEADLINE:g} s; repeat={args.repeat}",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    scenarios: list[Callable[[Fleet], dict[str, Any]]] = [
        stall,
        lambda fleet: late(fleet, lease),
        kill,
        lambda fleet: terminate(fleet, args.postgres),
        latency,
    ]
    for _ in range(args.repeat):
        for scenario in scenarios:
            schema = f"bench_faults_{uuid.uuid4().hex[:10]}"
            with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
                fleet = Fleet(
                    Path(tmp),
                    f"{args.postgres}?schema={schema}",
                    timeout=args.timeout,
                    idle=IDLE,
                    intake_deadline=INTAKE_DEADLINE,
                )
                try:
                    run = scenario(fleet)
                finally:
                    fleet.close()
                    with psycopg.connect(args.postgres, autocommit=True) as admin:
                        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            runs.append(run)
            print(json.dumps(run), flush=True)
    print()
    print("| fault | measured | duplicates |")
    print("|---|---|---:|")
    for r in runs:
        shown = ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in r.items()
            if k not in ("fault", "duplicates")
        )
        print(f"| {r['fault']} | {shown} | {r['duplicates']} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0 if all(r["duplicates"] == 0 for r in runs if r["fault"] != "kill") else 1


if __name__ == "__main__":
    sys.exit(main())
