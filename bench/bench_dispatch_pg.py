"""Durable deliveries per second of `reconciler serve` on PostgreSQL, with one and two
dispatcher processes sharing the queue, beside one process on SQLite.

    .venv/bin/python bench/bench_dispatch_pg.py [--deliveries 10000] [--webhooks 1,10]
        [--concurrency 200] [--repeat 3] [--postgres URL]

Reuses bench/sink.py (the receiver: raw asyncio, keep-alive, 200 "ok", counts) and
bench/loadgen.py (the event poster). Loopback only; every run bounded in count
and in time. Setups, each run on a new state:

  sqlite x1    one `reconciler serve` on a new SQLite file;
  postgres x1  one `reconciler serve` on a new schema (`?schema=bench_<random>`) of
               --postgres (default $RECONCILER_BENCH_POSTGRES, else the local
               server's `test` database), dropped afterwards;
  postgres x2  two `reconciler serve` processes on one new schema.

A run: organization acme with K webhooks pointing at the sink, applied through
`reconciler apply --auto-approve`, each with `max_in_flight` at twice C (within
1..1000): the default cap of 10 requests at once per webhook keeps one endpoint
from taking every slot, and this measures throughput, not that isolation
(bench/bench_isolation.py does); the server(s) started with --concurrency C;
two bench/loadgen.py processes, 16 keep-alive connections each, post N/K events
(half each) to /v1/events as fast as they are taken: both to the one server, or
one to each of the two. Measured from the first POST to the arrival at the sink
of the last of the N deliveries. Afterwards the state must hold N deliveries, all
'delivered', and the sink must have counted exactly N requests. CPU seconds of
the dispatchers, the PostgreSQL server's processes, the sink and the load
generators are read from /proc, and the machine's busy time from /proc/stat.

When the API wants a bearer token (`reconciler tokens` exists), an admin token
for acme is made in each new state and the load generators send it.

Setups are interleaved, --repeat times; medians are reported. The machine may be
shared: a run during which other processes kept more than --max-other-load cores
busy (default 0.25) is run again, up to --attempts times in all (default 4), and
said so; the table shows the other load of the runs kept.
Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
POSTGRES = os.environ.get("RECONCILER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
LOADGENS = 2
CONNECTIONS_EACH = 16
SETUPS = (("sqlite", 1), ("postgres", 1), ("postgres", 2))

if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
# The receiver, its control and the process helpers are the SQLite benchmark's.
from bench_dispatch import DEFINITION, webhook_cap  # noqa: E402
from harness import (  # noqa: E402
    RUN_LIMIT_SECONDS,
    Sink,
    cli,
    code_version,
    cpu_of,
    loadgen,
    loadgen_result,
    machine_busy,
    read_line,
    stop,
)

# -- processes -------------------------------------------------------------------------


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every process of the local PostgreSQL server, by pid."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if comm == "postgres":
            out[int(entry)] = cpu_of(int(entry))
    return out


def api_token(state: str) -> str | None:
    probe = subprocess.run(
        [sys.executable, "-m", "reconciler", "tokens", "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        return None
    out = cli("tokens", "create", "--role", "admin", "--org", "acme", "--state", state)
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(json.loads(out)["token"])
    found = re.search(r"\brcn_[A-Za-z0-9_\-]{20,}", out)
    if found:
        return found.group(0)
    words = re.findall(r"[A-Za-z0-9_\-.~+/=]{20,}", out)
    if not words:
        raise SystemExit(f"no token in the output of `reconciler tokens create`: {out!r}")
    return max(words, key=len)


# -- states ------------------------------------------------------------------------------


class State:
    """A new state with K webhooks at the sink, applied through the CLI; `drop()` removes it."""

    def __init__(self, backend: str, workdir: Path, defs: Path, postgres: str) -> None:
        self.backend = backend
        self.postgres = postgres
        tag = uuid.uuid4().hex[:12]
        if backend == "sqlite":
            self.db = workdir / f"state-{tag}.db"
            self.url = f"sqlite:///{self.db}"
        else:
            self.schema = f"bench_{tag}"
            self.url = f"{postgres}?schema={self.schema}"
        cli("apply", str(defs), "--state", self.url, "--auto-approve", "--actor", "bench")

    def counts(self) -> tuple[dict[str, int], int]:
        """Deliveries by status, and the number of attempts."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
                counts = dict(c.execute("SELECT status, count(*) FROM deliveries GROUP BY 1"))
                attempts = c.execute("SELECT count(*) FROM attempts").fetchone()[0]
            return counts, attempts
        import psycopg

        with psycopg.connect(self.postgres, autocommit=True) as conn:
            conn.execute(f'SET search_path = "{self.schema}"')
            counts = dict(conn.execute("SELECT status, count(*) FROM deliveries GROUP BY 1"))  # type: ignore[arg-type]
            attempts = conn.execute("SELECT count(*) FROM attempts").fetchone()[0]  # type: ignore[index]
        return counts, attempts

    def drop(self) -> None:
        if self.backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.db}{suffix}").unlink(missing_ok=True)
            return
        import psycopg

        with psycopg.connect(self.postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def start_serve(state: State, workdir: Path, concurrency: int, tag: str) -> tuple[Any, str]:
    log = (workdir / f"serve-{tag}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "--state", state.url, "--port", "0",
         "--concurrency", str(concurrency), "--allow-cidr", "127.0.0.1/32"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
    )  # fmt: skip
    log.close()  # the child has its own descriptor
    port = int(read_line(proc, r"serving on http://[\d.]+:(\d+)", 60).group(1))
    return proc, f"http://127.0.0.1:{port}"


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Run:
    setup: str
    webhooks: int
    deliveries: int
    rate: float  # deliveries/s, first POST to the last arrival at the sink
    intake_rate: float  # events/s taken by POST /v1/events (both load generators)
    seconds: float
    cpu: dict[str, float]  # CPU seconds by participant
    busy: float  # cores the machine was busy on average
    others: float  # of which not these processes (another load on a shared machine)
    attempts: int


def run_once(
    backend: str,
    processes: int,
    sink: Sink,
    workdir: Path,
    defs: Path,
    webhooks: int,
    concurrency: int,
    deliveries: int,
    postgres: str,
) -> Run:
    events = deliveries // webhooks
    expected = events * webhooks
    setup = f"{backend} x{processes}"
    state = State(backend, workdir, defs, postgres)
    servers: list[tuple[Any, str]] = []
    try:
        token = api_token(state.url)
        try:
            for i in range(processes):
                tag = f"{backend}{processes}-{i}"
                servers.append(start_serve(state, workdir, concurrency, tag))
            sink.reset()
            pids = [proc.pid for proc, _ in servers]
            serve0 = sum(cpu_of(pid) for pid in pids)
            sink0, pg0, busy0 = cpu_of(sink.proc.pid), postgres_cpu(), machine_busy()[0]
            wall0 = time.time()
            share = [events // LOADGENS + (i < events % LOADGENS) for i in range(LOADGENS)]
            gens = [
                loadgen(
                    f"{servers[i % processes][1]}/v1/events",
                    share[i],
                    connections=CONNECTIONS_EACH,
                    token=token,
                )
                for i in range(LOADGENS)
            ]
            intakes = [loadgen_result(gen) for gen in gens]
            seen = sink.wait_for(expected, RUN_LIMIT_SECONDS)
            serve1 = sum(cpu_of(pid) for pid in pids)
            sink1, pg1, busy1 = cpu_of(sink.proc.pid), postgres_cpu(), machine_busy()[0]
            wall = time.time() - wall0
        finally:
            for proc, _ in servers:
                stop(proc)  # SIGTERM: in-flight outcomes are recorded before it exits
        for intake, n in zip(intakes, share, strict=True):
            if intake["statuses"] != {"202": n}:
                raise SystemExit(
                    f"{setup}: intake answered {intake['statuses']} {intake['errors']}"
                )
        if seen["count"] != expected:
            raise SystemExit(f"{setup}: the sink counted {seen['count']} of {expected} in time")
        counts, attempts = state.counts()
        if counts != {"delivered": expected}:
            raise SystemExit(f"{setup}: expected {expected} delivered, found {counts}")
        if sink.count()["count"] != expected:
            raise SystemExit(f"{setup}: the sink counted more than {expected} requests")
    finally:
        state.drop()
    first = min(intake["first_send"] for intake in intakes)
    last_answer = max(intake["last_answer"] for intake in intakes)
    seconds = seen["last"] - first
    cpu = {
        "dispatchers": serve1 - serve0,
        "postgres": sum(pg1.values()) - sum(pg0.get(pid, 0.0) for pid in pg1),
        "sink": sink1 - sink0,
        "load generators": sum(intake["cpu"] for intake in intakes),
    }
    return Run(
        setup,
        webhooks,
        expected,
        expected / seconds,
        events / (last_answer - first),
        seconds,
        cpu,
        (busy1 - busy0) / wall,
        max(0.0, (busy1 - busy0 - sum(cpu.values())) / wall),
        attempts,
    )


# -- report ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=10_000, help="per run")
    parser.add_argument("--webhooks", default="1,10", help="webhooks per event (K), a list")
    parser.add_argument("--concurrency", type=int, default=200, help="serve --concurrency")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", default=POSTGRES, help="a database URL, without ?schema=")
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="run again when other processes kept more than this many cores busy",
    )
    parser.add_argument("--attempts", type=int, default=4, help="tries per run")
    args = parser.parse_args(argv)

    import psycopg

    with psycopg.connect(args.postgres, autocommit=True) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("synchronous_commit", "shared_buffers", "max_connections")
        }
    fanouts = [int(k) for k in args.webhooks.split(",")]
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores "
        f"({len(os.sched_getaffinity(0))} usable), {platform.machine()}; sqlite "
        f"{sqlite3.sqlite_version}; PostgreSQL {server_version} on this machine "
        f"({', '.join(f'{k}={v}' for k, v in settings.items())}), psycopg "
        f"{psycopg.__version__}; {args.deliveries:,} deliveries per run, --concurrency "
        f"{args.concurrency}, repeat={args.repeat}",
        flush=True,
    )
    print(f"code: {code_version()}", flush=True)
    runs: dict[tuple[str, int], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-pg-") as tmp:
        work = Path(tmp)
        sink = Sink(work)
        try:
            defs = {}
            cap = webhook_cap([args.concurrency], [max(p for _, p in SETUPS)])
            for k in fanouts:
                folder = work / f"defs-{k}" / "acme"
                folder.mkdir(parents=True)
                for i in range(1, k + 1):
                    text = DEFINITION.format(i=i, port=sink.port, max_in_flight=cap)
                    (folder / f"hook-{i}.yaml").write_text(text)
                defs[k] = folder.parent
            # Warm-up, untimed: page cache, the first connections, the server's caches.
            for backend, processes in SETUPS:
                run_once(backend, processes, sink, work, defs[fanouts[0]], fanouts[0],
                         args.concurrency, 1000, args.postgres)  # fmt: skip
            for rep in range(args.repeat):
                order = SETUPS if rep % 2 == 0 else SETUPS[::-1]
                for k in fanouts:
                    for backend, processes in order:
                        for attempt in range(1, args.attempts + 1):
                            r = run_once(
                                backend,
                                processes,
                                sink,
                                work,
                                defs[k],
                                k,
                                args.concurrency,
                                args.deliveries,
                                args.postgres,
                            )
                            if r.others <= args.max_other_load or attempt == args.attempts:
                                break
                            print(
                                f"[{rep + 1}] {r.setup:11} K={k:<3} {r.rate:>7,.0f} deliveries/s "
                                f"with another load of {r.others:.2f} cores: run again",
                                flush=True,
                            )
                        runs.setdefault((r.setup, k), []).append(r)
                        cpu = ", ".join(f"{name} {s:.1f}" for name, s in r.cpu.items())
                        print(
                            f"[{rep + 1}] {r.setup:11} K={k:<3} {r.rate:>7,.0f} deliveries/s in "
                            f"{r.seconds:.1f} s (intake {r.intake_rate:,.0f} events/s; CPU s: "
                            f"{cpu}; machine busy {r.busy:.2f} cores, other load "
                            f"{r.others:.2f})",
                            flush=True,
                        )
        finally:
            sink.close()

    print(f"\nDurable deliveries, intake to 2xx, {args.deliveries:,} per run, --concurrency "
          f"{args.concurrency}, median of {args.repeat}:\n")  # fmt: skip
    print(
        "| K | setup | deliveries/s | spread | vs postgres x1 | intake events/s "
        "| CPU s: dispatchers / postgres / sink / load gen | CPU per delivery | machine busy "
        "| other load |"
    )
    print("|---:|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for k in fanouts:
        base = statistics.median(r.rate for r in runs[("postgres x1", k)])
        for backend, processes in SETUPS:
            rs = runs[(f"{backend} x{processes}", k)]
            rates = sorted(r.rate for r in rs)
            mid = sorted(rs, key=lambda r: r.rate)[len(rs) // 2]
            cpu = " / ".join(f"{s:.1f}" for s in mid.cpu.values())
            per = sum(mid.cpu.values()) / mid.deliveries * 1e6
            print(
                f"| {k} | {mid.setup} | {statistics.median(rates):,.0f}/s "
                f"| {rates[0]:,.0f}–{rates[-1]:,.0f} | {statistics.median(rates) / base:.2f}x "
                f"| {statistics.median(r.intake_rate for r in rs):,.0f}/s | {cpu} "
                f"(wall {mid.seconds:.1f} s) | {per:,.0f} µs | {mid.busy:.2f} cores "
                f"| {statistics.median(r.others for r in rs):.2f} cores |"
            )
    if args.json:
        args.json.write_text(
            json.dumps({f"{s}@K{k}": [r.__dict__ for r in v] for (s, k), v in runs.items()})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
