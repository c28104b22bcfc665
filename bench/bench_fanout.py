"""One event fanned out to 1,000 webhooks by `reconciler serve`, on SQLite and PostgreSQL
side by side, against the bare HTTP client.

    .venv/bin/python bench/bench_fanout.py [--webhooks 1000] [--events 10] [--repeat 5]
        [--concurrency 200] [--backend both|sqlite|postgres] [--postgres URL]
        [--no-time-store] [--json FILE]

Reuses bench/sink.py (the receiver: raw asyncio, keep-alive, 200 "ok", counts and,
on request, keeps every body) and the helpers of bench/bench_dispatch.py (the sink's
control, CPU from /proc, the bare client) and bench/bench_dispatch_pg.py (states
applied through the CLI, API tokens, the PostgreSQL server's CPU). Loopback
(127.0.0.1) only; every wait is bounded in time. One run, per backend:

  state     organization acme with W webhooks (--webhooks, default 1,000), each
            POSTing {"id": "{{event_id}}", "w": "{{webhook}}"} to its own path
            of the sink (/hook/1 ... /hook/W), with `max_in_flight` at C (a
            webhook's default cap of 10 at once is for isolation, which
            bench/bench_isolation.py measures; here no webhook's cap, only
            the dispatcher, limits the E events to one webhook), applied with
            `reconciler apply --auto-approve` into a new SQLite file or a new
            PostgreSQL schema (dropped afterwards); an admin token from `reconciler tokens create`;
  serve     `reconciler serve --concurrency C --allow-cidr 127.0.0.1/32` as a
            subprocess; three events of another type (no webhook matches them)
            warm its intake up, untimed;
  one       one POST /v1/events over a keep-alive connection: (a) its time to
            the 202, by which the event and its W deliveries are stored
            durably; (b) the time from sending it to the sink's arrival of the
            W-th delivery (and of the first); (c) deliveries/s = W / (b); and
            when the state shows all W delivered (polled once the sink has them);
  sustained E events in a row (--events, default 10: E x W deliveries), each
            POST sent when the previous one's 202 came back; the same figures.

Baseline, in the same run: the bare client of bench_dispatch.py, in a child
process on the event loop `serve` runs on: `reconciler.dispatch.service.
make_sender(C)` and `Sender.send`, the dispatcher's own sending code (httpx over
aiohttp), posting W, then E x W, JSON bodies with the dispatcher's headers to the
sink, C in flight, nothing stored. Ratio = dispatcher deliveries/s / bare client
requests/s.

Checks, every run: each POST answered 202 with W deliveries; the sink counted
exactly the expected number, and its kept bodies are every (event, webhook) pair
once; after `serve` stopped, the state holds every delivery as 'delivered' with
one attempt, and one attempt row each. CPU seconds per participant (the
dispatcher's event loop thread and its other threads, the PostgreSQL server's
processes, the sink) come from /proc, and the machine's busy time from /proc/stat;
before each run it waits (up to --quiet-wait seconds) for the machine to be quiet,
and a run during which other processes kept more than --max-other-load cores busy
is run again, up to --attempts times in all.

Bare client and backends are interleaved (order reversed every other repetition),
--repeat times; medians. Unless --no-time-store, one more run per backend, not in
the main tables, with `serve` wrapped to time every store call the dispatcher
makes (`Database.run`): intake's transaction, claims, outcome records, and how busy
the database thread was. The defaults take 3 to 4 minutes on 2 quiet cores, more
when runs are repeated for another load.
Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import bench_dispatch as bd  # noqa: E402
import bench_dispatch_pg as bpg  # noqa: E402
import harness  # noqa: E402

WAIT_LIMIT_SECONDS = 120.0  # no phase may take longer
HTTP_TIMEOUT = 60.0
WARM_EVENTS = 3
BACKENDS = ("sqlite", "postgres")
LABEL = {"sqlite": "SQLite", "postgres": "PostgreSQL"}

DEFINITION = """\
name: hook-{i}
organization: acme
event: new_rule_violation
method: POST
url: http://127.0.0.1:{port}/hook/{i}
headers:
  Content-Type: application/json
body:
  id: "{{{{event_id}}}}"
  w: "{{{{webhook}}}}"
max_in_flight: {max_in_flight}
"""


# -- the machine and the code --------------------------------------------------------------


# -- processes ---------------------------------------------------------------------------------


def write_definitions(folder: Path, port: int, webhooks: int, max_in_flight: int) -> Path:
    org = folder / "acme"
    org.mkdir(parents=True)
    for i in range(1, webhooks + 1):
        text = DEFINITION.format(i=i, port=port, max_in_flight=max_in_flight)
        (org / f"hook-{i}.yaml").write_text(text)
    return folder


def start_serve(
    state: bpg.State, workdir: Path, concurrency: int, tag: str, store_times: Path | None
) -> tuple[subprocess.Popen[str], str]:
    """`reconciler serve` on the state; with `store_times`, wrapped to time store calls."""
    args = ["serve", "--state", state.url, "--host", "127.0.0.1", "--port", "0",
            "--concurrency", str(concurrency), "--allow-cidr", "127.0.0.1/32"]  # fmt: skip
    if store_times is None:
        command = [sys.executable, "-m", "reconciler", *args]
    else:
        command = [sys.executable, __file__, "--child-serve", str(store_times), "--", *args]
    with (workdir / f"serve-{tag}.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    port = int(harness.read_line(proc, r"serving on http://[\d.]+:(\d+)", 60).group(1))
    return proc, f"http://127.0.0.1:{port}"


def child_serve(out: str, argv: list[str]) -> None:
    """Run `reconciler serve` with every store call the dispatcher makes timed:
    (name, wall-clock start, seconds) written to `out` as JSON when it exits."""
    calls: list[tuple[str, float, float]] = []
    try:
        from reconciler.dispatch.worker import Database

        original = Database.run

        async def run(self: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
            name = getattr(call, "__name__", type(call).__name__)

            def timed() -> Any:
                start, began = time.time(), time.perf_counter()
                try:
                    return call(*args, **kwargs)
                finally:
                    calls.append((name, start, time.perf_counter() - began))

            return await original(self, timed)

        Database.run = run  # type: ignore[method-assign]
    except (ImportError, AttributeError) as exc:
        print(f"store calls are not timed: {exc}", file=sys.stderr)
    atexit.register(lambda: Path(out).write_text(json.dumps(calls)))
    sys.argv = ["reconciler", *argv]
    from reconciler.cli import main

    main()


# -- the bare client ---------------------------------------------------------------------------

# bench_dispatch.py's bare client of this kind: `make_sender(C)` and `Sender.send`, the
# dispatcher's own sending code, on the event loop `serve` runs on; nothing stored.
BARE_KIND = "sender"
ALONE_KIND = "raw-aiohttp"  # aiohttp's ClientSession alone: the cheapest Python sender


def bare_client(
    sink: harness.Sink, concurrency: int, n: int, kind: str = BARE_KIND
) -> dict[str, Any]:
    return bd.bare_client(sink, kind, concurrency, n)


class Intake:
    """POST /v1/events over one keep-alive connection."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT)
        self.conn.connect()
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def post(self, event: dict[str, Any]) -> tuple[float, float, int, dict[str, Any]]:
        """(wall-clock time sent, seconds to the answer, status, answer)."""
        data = json.dumps(event).encode()
        sent, began = time.time(), time.perf_counter()
        self.conn.request("POST", "/v1/events", body=data, headers=self.headers)
        answer = self.conn.getresponse()
        payload = answer.read()
        seconds = time.perf_counter() - began
        try:
            body = json.loads(payload)
        except ValueError:
            body = {"raw": payload.decode(errors="replace")}
        return sent, seconds, answer.status, body

    def close(self) -> None:
        self.conn.close()


def event(kind: str, i: int) -> dict[str, Any]:
    return {"type": kind, "organization": "acme", "name": f"fanout-rule-{i}",
            "description": "one event, every webhook"}  # fmt: skip


# -- the state, read from the bench -------------------------------------------------------------


class Probe:
    """Read-only queries on a run's state, from outside the dispatcher."""

    def __init__(self, state: bpg.State) -> None:
        self.backend = state.backend
        if state.backend == "sqlite":
            self.conn: Any = sqlite3.connect(f"file:{state.db}?mode=ro", uri=True)
        else:
            import psycopg

            self.conn = psycopg.connect(state.postgres, autocommit=True, connect_timeout=10)
            self.conn.execute(f'SET search_path = "{state.schema}"')

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.conn.execute(query).fetchall()]

    def delivered(self) -> int:
        return self.rows("SELECT count(*) FROM deliveries WHERE status = 'delivered'")[0][0]

    def wait_delivered(self, expected: int, timeout: float) -> float:
        """Poll until `expected` deliveries are recorded as delivered; the wall-clock time
        it was seen (the poll runs every 10 ms), or raise."""
        deadline = time.monotonic() + timeout
        while True:
            if self.delivered() >= expected:
                return time.time()
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.backend}: {self.delivered()} of {expected} recorded")
            time.sleep(0.01)

    def check(self, deliveries: int, events: int) -> None:
        """Every delivery delivered with one attempt, one attempt row each."""
        by_status = {
            (status, attempts): n
            for status, attempts, n in self.rows(
                "SELECT status, attempts, count(*) FROM deliveries GROUP BY 1, 2"
            )
        }
        if by_status != {("delivered", 1): deliveries}:
            raise SystemExit(
                f"{self.backend}: expected {deliveries} deliveries delivered with one attempt, "
                f"found (status, attempts): count {by_status}"
            )
        outcomes = dict(self.rows("SELECT outcome, count(*) FROM attempts GROUP BY 1"))
        if outcomes != {"delivered": deliveries}:
            raise SystemExit(f"{self.backend}: attempts by outcome {outcomes}, not {deliveries}")
        pairs = self.rows(
            "SELECT count(DISTINCT organization || '/' || event_id || '/' || webhook) "
            "FROM deliveries"
        )
        stored_events = self.rows("SELECT count(*) FROM events")[0][0]
        if pairs[0][0] != deliveries or stored_events != events:
            raise SystemExit(
                f"{self.backend}: {pairs[0][0]} distinct (event, webhook) pairs of {deliveries}, "
                f"{stored_events} events of {events}"
            )

    def close(self) -> None:
        self.conn.close()


# -- one run ------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    loop: float  # the dispatcher's first thread: the event loop
    threads: float  # its other threads: the database thread, the pool's
    postgres: dict[int, float]
    sink: float
    bench: float  # this process
    busy: float  # the machine, CPU seconds

    @classmethod
    def take(cls, serve_pid: int, sink_pid: int) -> Snapshot:
        serve = harness.cpu_seconds(serve_pid)
        sink = harness.cpu_seconds(sink_pid)
        mine = os.times()
        return cls(
            time.time(),
            serve["main"],
            serve["other"],
            bpg.postgres_cpu(),
            sink["main"] + sink["other"],
            mine.user + mine.system,
            harness.machine_busy()[0],
        )


@dataclass
class Phase:
    events: int
    deliveries: int
    intake: list[float]  # seconds from each POST to its 202
    first: float  # seconds from the first POST to the first arrival at the sink
    last: float  # ... to the arrival of the last delivery
    recorded: float  # ... to when the state showed every delivery delivered
    cpu: dict[str, float] = field(default_factory=dict)
    others: float = 0.0  # cores busy with other processes, on average
    window: tuple[float, float] = (0.0, 0.0)  # wall clock: first POST, all recorded

    @property
    def rate(self) -> float:
        return self.deliveries / self.last

    @property
    def cpu_us(self) -> float:
        """Dispatcher (all threads) and PostgreSQL server CPU per delivery, µs."""
        own = self.cpu["dispatcher loop"] + self.cpu["dispatcher other threads"]
        return (own + self.cpu["postgres"]) / self.deliveries * 1e6


@dataclass
class Run:
    backend: str
    one: Phase
    sustained: Phase
    store_calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> stats

    @property
    def others(self) -> float:
        return max(self.one.others, self.sustained.others)


def phase(
    intake: Intake,
    sink: harness.Sink,
    probe: Probe,
    proc: subprocess.Popen[str],
    webhooks: int,
    events: int,
    already: int,
    log: Path,
) -> Phase:
    expected = events * webhooks
    sink.reset(record=True)
    before = Snapshot.take(proc.pid, sink.proc.pid)
    first_sent = 0.0
    intakes: list[float] = []
    ids: list[str] = []
    for i in range(events):
        sent, seconds, status, answer = intake.post(event("new_rule_violation", i))
        if status != 202 or answer.get("deliveries") != webhooks:
            raise SystemExit(f"POST /v1/events answered {status} {answer}, not 202 with {webhooks}")
        first_sent = first_sent or sent
        intakes.append(seconds)
        ids.append(answer["event_id"])
    seen = sink.wait_for(expected, WAIT_LIMIT_SECONDS)
    if seen["count"] != expected:
        tail = "\n".join(log.read_text().splitlines()[-5:])
        raise SystemExit(
            f"the sink counted {seen['count']} of {expected} deliveries in time; "
            f"the dispatcher's log ends:\n{tail}"
        )
    recorded = probe.wait_delivered(already + expected, WAIT_LIMIT_SECONDS)
    after = Snapshot.take(proc.pid, sink.proc.pid)
    kept = sink.dump()
    counted = sink.count()["count"]
    pairs = [(body["id"], body["w"]) for body in (json.loads(b) for _, b in kept)]
    wanted = {(eid, f"hook-{i}") for eid in ids for i in range(1, webhooks + 1)}
    if counted != expected or len(pairs) != expected or set(pairs) != wanted:
        raise SystemExit(
            f"the sink counted {counted} requests, kept {len(pairs)} bodies of "
            f"{len(set(pairs))} distinct (event, webhook) pairs; expected each of {expected} once"
        )
    pg = sum(after.postgres.values()) - sum(before.postgres.get(p, 0.0) for p in after.postgres)
    cpu = {
        "dispatcher loop": after.loop - before.loop,
        "dispatcher other threads": after.threads - before.threads,
        "postgres": pg,
        "sink": after.sink - before.sink,
    }
    wall = after.at - before.at
    others = (after.busy - before.busy - sum(cpu.values()) - (after.bench - before.bench)) / wall
    return Phase(
        events,
        expected,
        intakes,
        seen["first"] - first_sent,
        seen["last"] - first_sent,
        recorded - first_sent,
        cpu,
        max(0.0, others),
        (first_sent, recorded),
    )


def wait_quiet(limit: float, threshold: float) -> float:
    """Wait, at most `limit` seconds, until the machine has been less than `threshold`
    cores busy for two seconds in a row (the machine may be shared); the seconds waited."""
    began = time.monotonic()
    quiet = 0
    while time.monotonic() - began < limit and quiet < 2:
        busy0 = harness.machine_busy()[0]
        time.sleep(1.0)
        quiet = quiet + 1 if harness.machine_busy()[0] - busy0 < threshold else 0
    return time.monotonic() - began


def store_stats(calls: list[list[Any]], window: tuple[float, float]) -> dict[str, Any]:
    """Store calls that started within `window`: per name, count and milliseconds; and
    the share of the window the database thread spent in them."""
    start, end = window
    out: dict[str, Any] = {}
    busy = 0.0
    for name, began, seconds in calls:
        if start - 0.001 <= began <= end:
            entry = out.setdefault(
                name, {"count": 0, "ms": 0.0, "max_ms": 0.0, "first_ms": float("inf")}
            )
            entry["first_ms"] = min(entry["first_ms"], (began - start) * 1000)
            entry["count"] += 1
            entry["ms"] += seconds * 1000
            entry["max_ms"] = max(entry["max_ms"], seconds * 1000)
            busy += seconds
    return {"calls": out, "busy": busy / (end - start) if end > start else 0.0}


def run_once(
    backend: str,
    sink: harness.Sink,
    work: Path,
    defs: Path,
    args: argparse.Namespace,
    tag: str,
    time_store: bool = False,
) -> Run:
    webhooks, events = args.webhooks, args.events
    state = bpg.State(backend, work, defs, args.postgres)
    store_times = work / f"store-{tag}.json" if time_store else None
    log = work / f"serve-{tag}.log"
    try:
        token = bpg.api_token(state.url)
        proc, url = start_serve(state, work, args.concurrency, tag, store_times)
        probe = Probe(state)
        intake = None
        try:
            intake = Intake(url, token)
            wait_quiet(args.quiet_wait, args.max_other_load)
            for i in range(WARM_EVENTS):  # no webhook fires on this type: untimed warm-up
                _, _, status, answer = intake.post(event("reserved_instance_surplus", i))
                if status != 202 or answer.get("deliveries") != 0:
                    raise SystemExit(f"warm-up POST answered {status} {answer}")
            one = phase(intake, sink, probe, proc, webhooks, 1, 0, log)
            sustained = phase(intake, sink, probe, proc, webhooks, events, webhooks, log)
        finally:
            if intake is not None:
                intake.close()
            harness.stop(proc)  # SIGTERM: in-flight outcomes are recorded before it exits
        try:
            probe.check((1 + events) * webhooks, WARM_EVENTS + 1 + events)
        finally:
            probe.close()
        run = Run(backend, one, sustained)
        if store_times is not None and store_times.exists():
            calls = json.loads(store_times.read_text())
            run.store_calls = {
                "one": store_stats(calls, one.window),
                "sustained": store_stats(calls, sustained.window),
            }
        return run
    finally:
        state.drop()


# -- report ---------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}–{max(values):,.0f}"


def cpu_cell(p: Phase) -> str:
    c = p.cpu
    return (
        f"{c['dispatcher loop']:.2f} / {c['dispatcher other threads']:.2f} / "
        f"{c['postgres']:.2f} / {c['sink']:.2f}"
    )


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    class Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    parser.add_argument("--webhooks", type=int, default=1000, help="webhooks the event fires")
    parser.add_argument("--events", type=int, default=10, help="events in a row, sustained")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--concurrency", type=int, default=200, help="serve --concurrency")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgres", "both"), default="both", help="states"
    )
    parser.add_argument("--postgres", default=bpg.POSTGRES, help="a database URL, no ?schema=")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="run again when other processes kept more than this many cores busy",
    )
    parser.add_argument("--attempts", type=int, default=2, help="tries per run")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for the machine to be quiet",
    )
    parser.add_argument(
        "--no-time-store", action="store_true", help="skip the run with store calls timed"
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--child-serve", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if rest and not args.child_serve:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args, rest


@dataclass
class Results:
    """Every figure of one run of the benchmark."""

    args: argparse.Namespace
    backends: tuple[str, ...]
    machine: str
    code: str
    # (client kind, requests) -> one result per repetition
    bare: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    runs: dict[str, list[Run]] = field(default_factory=dict)  # backend -> repetitions
    diagnostic: dict[str, Run] = field(default_factory=dict)  # backend -> store calls timed
    minutes: float = 0.0
    code_after: str = ""

    def bare_median(self, kind: str, n: int, key: str = "rate") -> float:
        return median([r[key] for r in self.bare[(kind, n)]])


def bare_side(res: Results, sink: harness.Sink, rep: int) -> None:
    w, e = res.args.webhooks, res.args.events
    for kind in (BARE_KIND, ALONE_KIND):
        for n in (w, e * w):
            r = bare_client(sink, res.args.concurrency, n, kind)
            res.bare.setdefault((kind, n), []).append(r)
            print(
                f"[{rep + 1}] bare client {kind:11} {n:>6,} requests: "
                f"{r['rate']:>6,.0f}/s in {ms(r['seconds'])} "
                f"({r['cpu_us']:.0f} µs CPU per request)",
                flush=True,
            )


def backend_side(
    res: Results, side: str, sink: harness.Sink, work: Path, defs: Path, rep: int
) -> None:
    args = res.args
    for attempt in range(1, args.attempts + 1):
        run = run_once(side, sink, work, defs, args, f"{side}-{rep}-{attempt}")
        if run.others <= args.max_other_load or attempt == args.attempts:
            break
        print(
            f"[{rep + 1}] {LABEL[side]}: another load of {run.others:.2f} cores meanwhile: "
            "run again",
            flush=True,
        )
    res.runs.setdefault(side, []).append(run)
    for name, p in (("one event", run.one), (f"{args.events} events", run.sustained)):
        print(
            f"[{rep + 1}] {LABEL[side]:10} {name:9}: intake "
            f"{ms(median(p.intake))} (max {ms(max(p.intake))}), first "
            f"{ms(p.first)}, last {ms(p.last)}, {p.rate:,.0f} deliveries/s, "
            f"recorded {ms(p.recorded)}; CPU s loop/threads/postgres/sink "
            f"{cpu_cell(p)}; other load {p.others:.2f}",
            flush=True,
        )


def measure(res: Results) -> None:
    """Warm-up, --repeat interleaved repetitions of every side, then the timed runs."""
    args = res.args
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        work = Path(tmp)
        sink = harness.Sink(work)
        try:
            cap = bd.webhook_cap([args.concurrency], [1])
            defs = write_definitions(work / "defs", sink.port, args.webhooks, cap)
            # Warm-up, untimed: imports, page cache, the server's caches.
            bare_client(sink, args.concurrency, args.webhooks)
            for b in res.backends:
                run_once(b, sink, work, defs, argparse.Namespace(**{**vars(args), "events": 1}),
                         f"warm-{b}")  # fmt: skip
            sides = ["bare", *res.backends]
            for rep in range(args.repeat):
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    if side == "bare":
                        bare_side(res, sink, rep)
                    else:
                        backend_side(res, side, sink, work, defs, rep)
            if not args.no_time_store:
                for b in res.backends:
                    res.diagnostic[b] = run_once(b, sink, work, defs, args, f"timed-{b}", True)
                    print(
                        f"store calls timed, {LABEL[b]}: {res.diagnostic[b].store_calls}",
                        flush=True,
                    )
        finally:
            sink.close()
    res.minutes = (time.monotonic() - started) / 60
    res.code_after = harness.code_version()


def print_preamble(res: Results) -> None:
    args, code = res.args, res.code
    print(f"\nMachine: {res.machine}.")
    print(
        f"Code: {code}"
        + ("" if res.code_after == code else f" (at the end: {res.code_after})")
        + "."
    )
    print(
        f"Command: .venv/bin/python bench/bench_fanout.py --webhooks {args.webhooks} "
        f"--events {args.events} --repeat {args.repeat} --concurrency {args.concurrency} "
        f"--backend {args.backend} ({res.minutes:.1f} minutes).\n"
    )
    print(
        f"Bare clients, C = {args.concurrency}, each in a child process, nothing stored: "
        f"the Sender, bench_dispatch.py's {BARE_KIND!r} kind (make_sender(C), Sender.send, "
        f"the dispatcher's own sending stack; ratio), and aiohttp's ClientSession alone "
        f"({ALONE_KIND!r}, the cheapest Python sender; ratio to aiohttp).\n"
    )


def print_one_event_table(res: Results) -> None:
    w, reps = res.args.webhooks, res.args.repeat
    sender, alone = res.bare_median(BARE_KIND, w), res.bare_median(ALONE_KIND, w)
    sender_s = res.bare_median(BARE_KIND, w, "seconds")
    print(f"One event to {w:,} webhooks, median of {reps} (CPU seconds of the median run):\n")
    print(
        "| state | POST → 202 (stores 1 event + "
        f"{w:,} deliveries) | first delivery | {w:,}th delivery | deliveries/s | spread "
        f"| Sender, {w:,} requests | ratio | aiohttp alone | ratio to aiohttp "
        "| all recorded delivered "
        "| CPU s: dispatcher loop / other threads / postgres / sink | other load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for b in res.backends:
        ps = [r.one for r in res.runs[b]]
        mid = sorted(ps, key=lambda p: p.rate)[len(ps) // 2]
        rate = median([p.rate for p in ps])
        print(
            f"| {LABEL[b]} | {ms(median([p.intake[0] for p in ps]))} "
            f"| {ms(median([p.first for p in ps]))} | {ms(median([p.last for p in ps]))} "
            f"| {rate:,.0f}/s | {spread([p.rate for p in ps])} "
            f"| {ms(sender_s)} = {sender:,.0f}/s | {rate / sender:.2f}× "
            f"| {alone:,.0f}/s | {rate / alone:.2f}× "
            f"| {ms(median([p.recorded for p in ps]))} | {cpu_cell(mid)} "
            f"| {median([p.others for p in ps]):.2f} cores |"
        )


def print_sustained_table(res: Results) -> None:
    w, e, reps = res.args.webhooks, res.args.events, res.args.repeat
    sender, alone = res.bare_median(BARE_KIND, e * w), res.bare_median(ALONE_KIND, e * w)
    print(f"\n{e} events in a row to {w:,} webhooks ({e * w:,} deliveries), median of {reps}:\n")
    print(
        "| state | POST → 202, median / max | last delivery | deliveries/s | spread "
        f"| Sender, {e * w:,} requests | ratio | aiohttp alone | ratio to aiohttp "
        "| all recorded delivered | CPU per delivery (dispatcher + postgres) "
        "| CPU s: dispatcher loop / other threads / postgres / sink | other load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for b in res.backends:
        ps = [r.sustained for r in res.runs[b]]
        mid = sorted(ps, key=lambda p: p.rate)[len(ps) // 2]
        rate = median([p.rate for p in ps])
        print(
            f"| {LABEL[b]} | {ms(median([median(p.intake) for p in ps]))} / "
            f"{ms(median([max(p.intake) for p in ps]))} | {ms(median([p.last for p in ps]))} "
            f"| {rate:,.0f}/s | {spread([p.rate for p in ps])} "
            f"| {sender:,.0f}/s | {rate / sender:.2f}× | {alone:,.0f}/s | {rate / alone:.2f}× "
            f"| {ms(median([p.recorded for p in ps]))} "
            f"| {median([p.cpu_us for p in ps]):,.0f} µs | {cpu_cell(mid)} "
            f"| {median([p.others for p in ps]):.2f} cores |"
        )
    for kind in (BARE_KIND, ALONE_KIND):
        print(
            f"\n{kind} CPU per request: {res.bare_median(kind, w, 'cpu_us'):.0f} µs "
            f"({w:,} requests), {res.bare_median(kind, e * w, 'cpu_us'):.0f} µs ({e * w:,})."
        )


def print_store_calls(res: Results) -> None:
    if not res.diagnostic:
        return
    print(
        "\nStore calls of the dispatcher, one run per backend with `serve` wrapped "
        "(not in the tables above): count, total time, and how busy the database "
        'thread was from the first POST to all recorded; "first at": the first such '
        "call, after the first POST:\n"
    )
    print(
        "| state | phase | wall | add_events | claim | finish | other | database busy "
        "| other load |"
    )
    print("|---|---|---:|---|---|---|---|---:|---:|")
    for b, run in res.diagnostic.items():
        for key, p in (("one", run.one), ("sustained", run.sustained)):
            st = run.store_calls.get(key)
            if not st:
                continue
            calls = dict(st["calls"])
            cells = []
            for name in ("add_events", "claim", "finish"):
                c = calls.pop(name, None)
                cells.append(
                    f"{c['count']} in {c['ms']:,.0f} ms (max {c['max_ms']:,.0f}, first "
                    f"at +{c['first_ms']:,.0f})"
                    if c
                    else "none"
                )
            rest_ms = sum(c["ms"] for c in calls.values())
            rest_n = sum(c["count"] for c in calls.values())
            name = "one event" if key == "one" else f"{res.args.events} events"
            print(
                f"| {LABEL[b]} | {name} | {ms(p.recorded)} | {' | '.join(cells)} "
                f"| {rest_n} in {rest_ms:,.0f} ms | {st['busy']:.0%} | {p.others:.2f} cores |"
            )


def write_json(res: Results, path: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "machine": res.machine,
                "code": res.code,
                "bare": {f"{kind}@{n}": v for (kind, n), v in res.bare.items()},
                "runs": {b: [asdict(r) for r in v] for b, v in res.runs.items()},
                "store_calls": {b: asdict(r) for b, r in res.diagnostic.items()},
            },
            indent=2,
        )
    )


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    if args.child_serve:
        child_serve(args.child_serve, [a for a in rest if a != "--"])
        return 0
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    res = Results(
        args,
        backends,
        harness.machine_line(args.postgres if "postgres" in backends else None),
        harness.code_version(),
    )
    print(f"machine: {res.machine}", flush=True)
    print(f"code: {res.code}", flush=True)
    print(
        f"{args.webhooks:,} webhooks; one event, then {args.events} in a row "
        f"({args.events * args.webhooks:,} deliveries); --concurrency {args.concurrency}; "
        f"repeat={args.repeat}",
        flush=True,
    )
    measure(res)
    print_preamble(res)
    print_one_event_table(res)
    print_sustained_table(res)
    print_store_calls(res)
    if args.json:
        write_json(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
