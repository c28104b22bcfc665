"""Isolation: how long healthy webhooks' deliveries take while other webhooks' endpoints
hang, crawl and storm 429s, against the same deliveries with nothing troubled queued.

    .venv/bin/python bench/bench_isolation.py [--backend sqlite|postgres|both]
        [--backlog 1000] [--probe-rate 20] [--probe-seconds 15] [--concurrency 200]
        [--repeat 1] [--postgres URL] [--json FILE]

Loopback (127.0.0.1) only; every loop and wait is bounded in count and in time.

  receivers  bench/sink.py in its own process: the healthy paths answer 200 at
             once and keep (arrival, body) of each request; its troubled paths
             (/_t/...) hang (accept, never answer), answer after 2 s, answer
             429 with `Retry-After: 1`, or answer 200 while counting each
             arrival, and report how many requests each holds open;
  state      three organizations, applied with `reconciler apply
             --auto-approve` (a new SQLite file, or a new PostgreSQL schema
             `bench_iso_<random>` of --postgres, dropped afterwards):
               globex/hang     its endpoint hangs; timeout 10s
               globex/slow     answers after 2 s
               globex/storm    answers 429, Retry-After: 1
               globex/limited  answers 200; rate_limit: 1/s
               globex/probe, acme/probe, initech/probe   healthy
             the four troubled ones fire on reserved_instance_deficit, the
             probes on new_rule_violation; every webhook has the default
             max_in_flight (10). A publisher token for the three from
             `reconciler tokens create`;
  serve      `reconciler serve --concurrency C --allow-cidr 127.0.0.1/32` as a
             subprocess on SQLite; on PostgreSQL two of them on the one schema
             (two dispatchers sharing the queue, the breakers and the rate
             limit);
  baseline   the probes alone: bench/loadgen.py posts --probe-rate events a
             second (open loop) for --probe-seconds, to acme, globex and
             initech in turn (split between the two dispatchers on
             PostgreSQL); each event's description is the time it was due, and
             the probe's body carries it, so the sink gives intake-to-delivery
             latency per probe;
  troubled   on a new state, the same layout: first --backlog events for
             globex's troubled webhooks (POST /v1/events/batch, 500 at a time:
             --backlog deliveries queued for each of the four), then, once the
             hanging endpoint holds requests open, the slow one is answering
             and the storm has begun, the same probes.

Reported per run: the probes' p50/p99/max latency (all, and split into the
troubled organization's own healthy webhook and the other organizations'), how
many were delivered (by the sink and by the state), the dispatcher's CPU, the
machine's load average, and what the troubled endpoints were sent meanwhile: the
most requests the hanging endpoint held open at once (its max_in_flight is 10),
and the rate-limited webhook's arrivals, each checked to come no earlier than its
turn (the n-th, from 0, no earlier than n seconds after its events were posted),
the most in any one-second window (2 when a request a few milliseconds late is
followed by one on time), the closest two and the rate from the first to the last.

Goal: every probe delivered, and the troubled run's probe p99 at most 2x the
baseline's p99 and never above 250 ms; the rate limit held at the receiver (no
arrival ahead of its turn). Exit 1 when it is missed.

Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
# The receiver's control, the process helpers and CPU from /proc are the throughput
# benchmark's.
from harness import Sink, cli, code_version, cpu_seconds, percentile, read_line, stop  # noqa: E402

POSTGRES = os.environ.get("RECONCILER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
GOAL_RATIO = 2.0
GOAL_P99_MS = 250.0
RUN_LIMIT_SECONDS = 300.0  # no single wait may take longer
READY_SECONDS = 60.0  # the trouble must have begun within this
BATCH = 500  # events per POST /v1/events/batch
CAP = 10  # the default max_in_flight
RATE = 1.0  # globex/limited's rate_limit, requests a second
HANG_TIMEOUT = "10s"
SLOW_MS = 2000
PROBE_ORGS = ("acme", "globex", "initech")
TROUBLED_ORG = "globex"
TROUBLED_EVENT = "reserved_instance_deficit"
TROUBLED_NAMES = ("hang", "slow", "storm", "limited")

PROBE = """\
name: probe
organization: {org}
event: new_rule_violation
method: POST
url: http://127.0.0.1:{port}/hook/{org}
headers:
  Content-Type: application/json
body:
  id: "{{{{event_id}}}}"
  t: "{{{{description}}}}"
  org: "{{{{organization}}}}"
"""

TROUBLED = """\
name: {name}
organization: globex
event: reserved_instance_deficit
method: POST
url: http://127.0.0.1:{port}/_t/{path}
headers:
  Content-Type: application/json
body:
  id: "{{{{event_id}}}}"
{extra}"""


def write_definitions(folder: Path, port: int) -> Path:
    for org in PROBE_ORGS:
        (folder / org).mkdir(parents=True)
        (folder / org / "probe.yaml").write_text(PROBE.format(org=org, port=port))
    troubled = {
        "hang": ("hang/globex", f"timeout: {HANG_TIMEOUT}\n"),
        "slow": (f"delay/{SLOW_MS}/globex", ""),
        "storm": ("status/429/globex", ""),
        "limited": ("ok/limited", f"rate_limit: {RATE:g}/s\n"),
    }
    for name, (path, extra) in troubled.items():
        text = TROUBLED.format(name=name, port=port, path=path, extra=extra)
        (folder / TROUBLED_ORG / f"{name}.yaml").write_text(text)
    return folder


# -- the state ------------------------------------------------------------------------------


class State:
    """A new state with the definitions applied and a publisher token; `drop()` removes it."""

    def __init__(self, backend: str, workdir: Path, defs: Path, postgres: str) -> None:
        self.backend = backend
        self.postgres = postgres
        tag = uuid.uuid4().hex[:12]
        if backend == "sqlite":
            self.db = workdir / f"state-{tag}.db"
            self.url = f"sqlite:///{self.db}"
        else:
            self.schema = f"bench_iso_{tag}"
            self.url = f"{postgres}?schema={self.schema}"
        cli("apply", str(defs), "--state", self.url, "--auto-approve", "--actor", "bench")
        orgs = [arg for org in PROBE_ORGS for arg in ("--org", org)]
        out = cli("tokens", "create", "--role", "publisher", *orgs, "--name", "bench",
                  "--state", self.url)  # fmt: skip
        self.token = out.strip().splitlines()[-1]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
                return c.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(self.postgres, autocommit=True) as conn:
            conn.execute(f'SET search_path = "{self.schema}"')
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

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
        [sys.executable, "-m", "reconciler", "serve", "--state", state.url, "--host",
         "127.0.0.1", "--port", "0", "--concurrency", str(concurrency),
         "--allow-cidr", "127.0.0.1/32", "--grace", "1"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
    )  # fmt: skip
    log.close()  # the child has its own descriptor
    port = int(read_line(proc, r"serving on http://[\d.]+:(\d+)", 60).group(1))
    return proc, f"http://127.0.0.1:{port}"


# -- the receiver's troubled paths -------------------------------------------------------


def trouble(sink: Sink) -> dict[str, dict[str, Any]]:
    return sink._call("GET", "/_trouble")  # type: ignore[no-any-return]


def path_of(name: str) -> str:
    return {
        "hang": "/_t/hang/globex",
        "slow": f"/_t/delay/{SLOW_MS}/globex",
        "storm": "/_t/status/429/globex",
        "limited": "/_t/ok/limited",
    }[name]


def troubled_now(seen: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return seen.get(path_of(name), {"requests": 0, "open": 0, "max_open": 0, "arrivals": []})


def queue_trouble(url: str, token: str, backlog: int) -> None:
    """`backlog` events for globex's troubled webhooks, BATCH per POST."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        for start in range(0, backlog, BATCH):
            events = [
                {"type": TROUBLED_EVENT, "organization": TROUBLED_ORG, "name": "trouble",
                 "id": f"trouble-{i}"}
                for i in range(start, min(backlog, start + BATCH))
            ]  # fmt: skip
            conn.request(
                "POST",
                "/v1/events/batch",
                json.dumps({"events": events}),
                {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 202:
                raise SystemExit(f"POST /v1/events/batch answered {answer.status}: {body[:300]!r}")
    finally:
        conn.close()


def wait_for_trouble(sink: Sink) -> dict[str, dict[str, Any]]:
    """Until the hanging endpoint holds requests open, the slow one is answering and
    the storm has begun."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        seen = trouble(sink)
        if (
            troubled_now(seen, "hang")["open"] >= CAP
            and troubled_now(seen, "slow")["open"] > 0
            and troubled_now(seen, "storm")["requests"] > 0
        ):
            return seen
        time.sleep(0.05)
    raise SystemExit(f"the trouble did not begin within {READY_SECONDS:g}s: {trouble(sink)}")


class Sampler(threading.Thread):
    """Polls the troubled paths' open requests while the probes run: the most at once."""

    def __init__(self, sink_port: int) -> None:
        super().__init__(daemon=True)
        self.port = sink_port
        self.done = threading.Event()
        self.most: dict[str, int] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.done.wait(0.1):
                conn.request("GET", "/_trouble")
                seen = json.loads(conn.getresponse().read())
                for path, figures in seen.items():
                    self.most[path] = max(self.most.get(path, 0), figures["open"])
        finally:
            conn.close()


# -- one run ---------------------------------------------------------------------------------


def probes(urls: list[str], token: str, rate: float, seconds: float) -> list[dict[str, Any]]:
    """bench/loadgen.py, one per dispatcher, open loop at rate/len(urls) each."""
    count = int(rate * seconds) // len(urls)
    procs = []
    for url in urls:
        command = [sys.executable, str(BENCH / "loadgen.py"), f"{url}/v1/events",
                   "--requests", str(count), "--connections", "4", "--rate",
                   str(rate / len(urls)), "--organizations", ",".join(PROBE_ORGS),
                   "--header", f"Authorization: Bearer {token}",
                   "--max-seconds", str(RUN_LIMIT_SECONDS)]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=RUN_LIMIT_SECONDS + 30)
        result = json.loads(out.strip().splitlines()[-1])
        if result["statuses"] != {"202": count}:
            raise SystemExit(f"probes: intake answered {result['statuses']} {result['errors']}")
        results.append(result)
    return results


def run_once(
    backend: str,
    troubled: bool,
    sink: Sink,
    workdir: Path,
    defs: Path,
    args: argparse.Namespace,
    tag: str,
) -> dict[str, Any]:
    dispatchers = 2 if backend == "postgres" else 1
    state = State(backend, workdir, defs, args.postgres)
    servers: list[tuple[Any, str]] = []
    sampler = Sampler(sink.port)
    load0 = os.getloadavg()
    try:
        for i in range(dispatchers):
            servers.append(start_serve(state, workdir, args.concurrency, f"{tag}-{i}"))
        urls = [url for _, url in servers]
        sink.reset(record=True)
        posted = time.time()
        before: dict[str, dict[str, Any]] = {}
        if troubled:
            queue_trouble(urls[0], state.token, args.backlog)
            before = wait_for_trouble(sink)
        pids = [proc.pid for proc, _ in servers]
        cpu0 = sum(sum(cpu_seconds(pid).values()) for pid in pids)
        wall0 = time.time()
        sampler.start()
        intakes = probes(urls, state.token, args.probe_rate, args.probe_seconds)
        expected = sum(r["answered"] for r in intakes)
        seen = sink.wait_for(expected, 60)
        sampler.done.set()
        sampler.join(10)
        wall = time.time() - wall0
        cpu = sum(sum(cpu_seconds(pid).values()) for pid in pids) - cpu0
        after = trouble(sink)
        kept = sink.dump()
    finally:
        sampler.done.set()
        for proc, _ in servers:
            stop(proc)
    try:
        statuses = dict(
            state.rows("SELECT status, count(*) FROM deliveries WHERE webhook = 'probe' GROUP BY 1")
        )
    finally:
        state.drop()
    load1 = os.getloadavg()
    latency: dict[str, list[float]] = {"all": [], "same": [], "other": []}
    ids = set()
    for arrival, body in kept:
        data = json.loads(body)
        ids.add((data["org"], data["id"]))
        ms = (arrival - float(data["t"])) * 1000
        latency["all"].append(ms)
        latency["same" if data["org"] == TROUBLED_ORG else "other"].append(ms)
    limited = troubled_now(after, "limited")["arrivals"]
    since = sorted(t - posted for t in limited)
    early = [(n, round(at, 3)) for n, at in enumerate(since) if at < n / RATE - 0.001]
    window = max((sum(1 for u in since[i:] if u - t < 1.0) for i, t in enumerate(since)), default=0)
    gaps = [b - a for a, b in itertools.pairwise(since)]
    return {
        "backend": backend,
        "dispatchers": dispatchers,
        "troubled": troubled,
        "probes": expected,
        "arrived": seen["count"],
        "distinct": len(ids),
        "delivered": statuses.get("delivered", 0),
        "statuses": statuses,
        "p50": percentile(latency["all"], 50),
        "p99": percentile(latency["all"], 99),
        "max": max(latency["all"], default=float("nan")),
        "same_p99": percentile(latency["same"], 99),
        "other_p99": percentile(latency["other"], 99),
        "intake_p99": max(r["latency_ms"]["p99"] for r in intakes),
        "dispatcher_cpu": cpu / wall,
        "load": [round(x, 2) for x in (*load0, *load1)],
        "hang_open_before": troubled_now(before, "hang")["open"],
        "hang_most_open": max(
            sampler.most.get(path_of("hang"), 0), troubled_now(after, "hang")["max_open"]
        ),
        "sent": {name: troubled_now(after, name)["requests"] for name in TROUBLED_NAMES},
        "limited_early": early,
        "limited_window": window,
        "limited_min_gap": min(gaps, default=float("nan")),
        "limited_rate": len(gaps) / (since[-1] - since[0]) if gaps else float("nan"),
    }


# -- report ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--backlog", type=int, default=1000, help="per troubled webhook")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="probe events/s")
    parser.add_argument("--probe-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=200, help="serve --concurrency")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--postgres", default=POSTGRES, help="a database URL, without ?schema=")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args(argv)
    # SIGTERM ends the run as Ctrl-C does: the dispatchers, the receiver and the
    # PostgreSQL schema are cleaned up on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)

    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; backlog "
        f"{args.backlog:,} per troubled webhook; probes {args.probe_rate:g}/s for "
        f"{args.probe_seconds:g} s; --concurrency {args.concurrency}; repeat={args.repeat}",
        flush=True,
    )
    print(f"code: {code_version()}", flush=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        work = Path(tmp)
        sink = Sink(work)
        try:
            defs = write_definitions(work / "defs", sink.port)
            for backend in backends:
                for rep in range(args.repeat):
                    for troubled in (False, True):  # the baseline first, in the same layout
                        tag = f"{backend}-{rep}-{'troubled' if troubled else 'baseline'}"
                        run = run_once(backend, troubled, sink, work, defs, args, tag)
                        runs.append(run)
                        print(f"[{rep + 1}] {tag}: {json.dumps(run)}", flush=True)
        finally:
            sink.close()

    print("\nProbe latency, intake to delivery (ms); baseline = the probes alone:\n")
    print(
        "| backend | dispatchers | run | probes delivered | p50 | p99 | max "
        "| p99 globex/probe | p99 acme, initech | POST p99 | dispatcher CPU "
        "| hang open, most | sent: hang / slow / storm / limited | load average |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in runs:
        sent = " / ".join(str(v) for v in r["sent"].values())
        print(
            f"| {r['backend']} | {r['dispatchers']} "
            f"| {'troubled' if r['troubled'] else 'baseline'} "
            f"| {r['delivered']}/{r['probes']} | {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {r['max']:.1f} | {r['same_p99']:.1f} | {r['other_p99']:.1f} "
            f"| {r['intake_p99']:.1f} | {r['dispatcher_cpu']:.0%} of a core "
            f"| {r['hang_most_open']} | {sent} | {' '.join(map(str, r['load']))} |"
        )

    print()
    met = True
    for backend in backends:
        base = [r for r in runs if r["backend"] == backend and not r["troubled"]]
        hit = [r for r in runs if r["backend"] == backend and r["troubled"]]
        base_p99 = statistics.median(r["p99"] for r in base)
        p99 = statistics.median(r["p99"] for r in hit)
        bound = min(GOAL_RATIO * base_p99, GOAL_P99_MS)
        all_delivered = all(
            r["delivered"] == r["probes"] == r["arrived"] == r["distinct"] for r in base + hit
        )
        capped = all(r["hang_most_open"] <= CAP for r in hit)
        rate_ok = all(not r["limited_early"] for r in hit)
        ok = p99 <= bound and all_delivered and rate_ok
        met &= ok
        print(
            f"{backend}: troubled p99 {p99:.1f} ms against baseline p99 {base_p99:.1f} ms "
            f"({p99 / base_p99:.2f}x; goal <= {bound:.1f} ms): "
            f"{'met' if p99 <= bound else 'MISSED'}; every probe delivered: "
            f"{'yes' if all_delivered else 'NO'}; the hanging endpoint held at most "
            f"{max(r['hang_most_open'] for r in hit)} open ({'within' if capped else 'OVER'} "
            f"max_in_flight); rate limit at the receiver: "
            f"{'held' if rate_ok else 'BROKEN'} (most in one second: "
            f"{max(r['limited_window'] for r in hit)}, closest two "
            f"{min(r['limited_min_gap'] for r in hit):.3f} s apart, "
            f"{max(r['limited_rate'] for r in hit):.3f}/s from the first to the last)"
        )
    print(f"verdict: {'goal met' if met else 'goal MISSED'}")
    print(f"code at the end of the run: {code_version()}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
