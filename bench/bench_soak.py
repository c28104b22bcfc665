"""Soak: a dispatcher under constant load, with retention short enough to run many
times, measured every minute; draws its own plots (SVG) into docs/.

    .venv/bin/python bench/bench_soak.py --backend sqlite --minutes 30
    .venv/bin/python bench/bench_soak.py --backend postgres --minutes 30 \
        [--postgres postgresql://postgres@127.0.0.1:5432/test]

Load: --rate deliveries/s (default 500), open loop, half of them from events of an
organization with 1 webhook, half from events of one with 10 (so --rate/2 events/s
and --rate/20 events/s), sent as POST /v1/events/batch every 100 ms; an API reader
lists deliveries every 200 ms meanwhile. `serve` runs with --retention (default 5m;
the 10-webhook organization keeps 3m, through --retention-for) every 30 s.

Every minute: the state's bytes (SQLite: database file + WAL; PostgreSQL: tables with
their indexes and TOAST), rows of events, deliveries and attempts, the dispatcher's
RSS, and p50/p99 of intake-to-delivery latency (from the time an event was due to be
sent, carried in its description, to its arrival at the receiver) of that minute.
Also: the longest time between two 202 answers, over the whole run.

Result: a JSON file, a Markdown summary on standard output (slopes after warm-up:
the retention age + 2 minutes) and docs/soak-<backend>.svg.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TICK = 0.1  # seconds between two intake batches

DEFINITION = """\
name: hook-{i}
event: new_rule_violation
method: POST
max_in_flight: 100
url: http://127.0.0.1:{port}/{org}/{i}
headers:
  Content-Type: application/json
body:
  sent: "{{{{description}}}}"
  rule: "{{{{name}}}}"
"""


# -- the receiver ---------------------------------------------------------------------


class Receiver(asyncio.Protocol):
    """HTTP/1.1 keep-alive receiver: answers 200, notes each delivery's latency."""

    latencies: list[float] = []  # noqa: RUF012 - one receiver per process

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            found = re.search(rb"content-length:\s*(\d+)", head)
            length = int(found.group(1)) if found else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.transport.write(self.answer(head, body))

    def answer(self, head: bytes, body: bytes) -> bytes:
        if head.startswith(b"get /_minute"):
            values, Receiver.latencies = Receiver.latencies, []
            payload = json.dumps(summary(values)).encode()
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            Receiver.latencies.append(time.time() - float(json.loads(body)["sent"]))
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0}
    values.sort()
    return {
        "count": len(values),
        "p50_ms": values[math.ceil(0.50 * len(values)) - 1] * 1000,
        "p99_ms": values[math.ceil(0.99 * len(values)) - 1] * 1000,
    }


async def receive(port_file: Path) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", 0)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    await asyncio.Event().wait()


# -- the load -------------------------------------------------------------------------


@dataclass
class Intake:
    answered: list[float] = field(default_factory=list)  # time of each 202
    refused: dict[str, int] = field(default_factory=dict)  # other answers, by status
    events: int = 0


async def post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes, token: str
) -> int:
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    return await read_answer(reader)


async def read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    found = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if found:
        await reader.readexactly(int(found.group(1)))
    return status


async def load(
    url: str, token: str, rate: float, seconds: float, intake: Intake, stop: asyncio.Event
) -> None:
    host, port = url.removeprefix("http://").split(":")
    one_per_tick = rate / 2 * TICK  # events of the 1-webhook organization per tick
    ten_per_tick = rate / 20 * TICK  # events of the 10-webhook organization per tick
    owed = {"one": 0.0, "ten": 0.0}
    connections = [await asyncio.open_connection(host, int(port)) for _ in range(4)]
    free = asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]()
    for c in connections:
        free.put_nowait(c)
    start = time.time()
    sent = 0

    async def send(org: str, n: int, due: float) -> None:
        reader, writer = await free.get()
        events = [
            {
                "type": "new_rule_violation",
                "organization": org,
                "id": uuid.uuid4().hex,
                "name": "soak",
                "description": f"{due:.6f}",
            }
            for _ in range(n)
        ]
        try:
            status = await post(
                reader, writer, "/v1/events/batch", json.dumps({"events": events}).encode(), token
            )
        finally:
            free.put_nowait((reader, writer))
        if status == 202:
            intake.answered.append(time.time())
            intake.events += n
        else:
            intake.refused[str(status)] = intake.refused.get(str(status), 0) + 1

    tasks: set[asyncio.Task[None]] = set()
    while not stop.is_set() and time.time() - start < seconds:
        due = start + sent * TICK
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sent += 1
        for org, per_tick in (("one", one_per_tick), ("ten", ten_per_tick)):
            owed[org] += per_tick
            n = int(owed[org])
            if n:
                owed[org] -= n
                task = asyncio.create_task(send(org, n, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)
    for _, writer in connections:
        writer.close()


async def read_api(url: str, token: str, stop: asyncio.Event) -> None:
    """An API reader active all along: the latest deliveries, every 200 ms."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    while not stop.is_set():
        writer.write(
            f"GET /v1/deliveries?limit=50 HTTP/1.1\r\nHost: soak\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        with contextlib.suppress(Exception):
            await read_answer(reader)
        await asyncio.sleep(0.2)
    writer.close()


# -- measuring ------------------------------------------------------------------------


class State:
    def __init__(self, backend: str, workdir: Path, postgres: str) -> None:
        self.backend = backend
        self.postgres = postgres
        if backend == "sqlite":
            self.db = workdir / "state.db"
            self.url = f"sqlite:///{self.db}"
        else:
            self.schema = f"soak_{uuid.uuid4().hex[:10]}"
            self.url = f"{postgres}?schema={self.schema}"

    def measure(self) -> dict[str, Any]:
        if self.backend == "sqlite":
            wal = Path(f"{self.db}-wal")
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
                rows = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
                runs = c.execute(
                    "SELECT count(*), coalesce(sum(deliveries), 0) FROM retention_runs"
                )
                run_count, removed = runs.fetchone()
            return {
                "bytes": self.db.stat().st_size + (wal.stat().st_size if wal.exists() else 0),
                "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                "rows": rows,
                "retention_runs": run_count,
                "removed": removed,
            }
        import psycopg

        with psycopg.connect(self.postgres, autocommit=True) as conn:
            conn.execute(f'SET search_path = "{self.schema}"')
            rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]
            size = conn.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r'",
                (self.schema,),
            ).fetchone()[0]  # type: ignore[index]
            run_count, removed = conn.execute(
                "SELECT count(*), coalesce(sum(deliveries), 0) FROM retention_runs"
            ).fetchone()  # type: ignore[misc]
        return {
            "bytes": int(size),
            "wal_bytes": 0,
            "rows": rows,
            "retention_runs": run_count,
            "removed": int(removed),
        }

    def drop(self) -> None:
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(self.postgres, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


TABLES = ("events", "deliveries", "attempts", "webhook_days")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"reconciler {' '.join(args[:2])} failed: {done.stderr}")
    return done.stdout


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value), as a share of the mean value per hour."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if not var or not my:
        return 0.0
    slope = sum((x - mx) * (y - my) for x, y in points) / var  # per minute
    return slope * 60 / my


# -- the plot -------------------------------------------------------------------------


def svg(
    title: str, minutes: list[float], panels: list[tuple[str, list[float]]], warm: float
) -> str:
    """Stacked line charts sharing the time axis, as an SVG document."""
    width, panel_h, left, top = 720, 170, 70, 40
    height = top + len(panels) * (panel_h + 40) + 20
    end = max(minutes) if minutes else 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
    ]
    plot_w = width - left - 30
    for n, (label, values) in enumerate(panels):
        y0 = top + n * (panel_h + 40)
        peak = max(values) if values and max(values) > 0 else 1.0
        scale = 10 ** math.floor(math.log10(peak))
        peak = math.ceil(peak / scale) * scale

        def x(m: float) -> float:
            return left + plot_w * m / end

        def y(v: float, y0: float = y0, peak: float = peak) -> float:
            return y0 + panel_h - panel_h * v / peak

        out.append(
            f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" '
            'fill="none" stroke="#999"/>'
        )
        for i in range(5):
            v = peak * i / 4
            out.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                'stroke="#eee"/>'
            )
            out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        out.append(f'<text x="{left}" y="{y0 - 6}" font-weight="bold">{label}</text>')
        out.append(
            f'<line x1="{x(warm):.1f}" x2="{x(warm):.1f}" y1="{y0}" y2="{y0 + panel_h}" '
            'stroke="#c66" stroke-dasharray="4 3"/>'
        )
        points = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in zip(minutes, values, strict=True))
        out.append(f'<polyline points="{points}" fill="none" stroke="#2a6ebb" stroke-width="2"/>')
        for tick in range(0, int(end) + 1, 5):
            out.append(
                f'<text x="{x(tick):.1f}" y="{y0 + panel_h + 15}" text-anchor="middle">'
                f"{tick}</text>"
            )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">minutes '
        "(dashed: end of warm-up)</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- the run --------------------------------------------------------------------------


def setup(state: State, workdir: Path, port: int) -> tuple[str, str]:
    defs = workdir / "defs"
    for org, count in (("one", 1), ("ten", 10)):
        (defs / org).mkdir(parents=True)
        for i in range(1, count + 1):
            text = DEFINITION.format(i=i, port=port, org=org)
            (defs / org / f"hook-{i}.yaml").write_text(text)
    cli("apply", str(defs), "--state", state.url, "--auto-approve", "--actor", "soak")
    publisher = cli(
        "tokens", "create", "--role", "admin", "--org", "one", "--org", "ten",
        "--name", "soak", "--state", state.url,
    ).strip().splitlines()[-1]  # fmt: skip
    return publisher, publisher


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    code = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()  # the code that runs: taken now, before the half hour
    workdir = Path(tempfile.mkdtemp(prefix=f"soak-{args.backend}-"))
    port_file = workdir / "receiver.port"
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(port_file)], cwd=ROOT
    )  # fmt: skip
    while not port_file.exists() or not port_file.read_text():
        await asyncio.sleep(0.05)
    receiver_port = int(port_file.read_text())
    state = State(args.backend, workdir, args.postgres)
    token, reader_token = setup(state, workdir, receiver_port)
    log = (workdir / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "--state", state.url, "--port", "0",
         "--allow-cidr", "127.0.0.1/32", "--retention", args.retention,
         "--retention-for", f"ten={args.retention_ten}", "--retention-interval",
         args.retention_interval],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
    )  # fmt: skip
    assert serve.stdout is not None
    line = serve.stdout.readline()
    found = re.search(r"serving on (http://[\d.]+:\d+)", line)
    if not found:
        raise SystemExit(f"serve did not start: {line!r}; see {workdir}/serve.log")
    url = found.group(1)
    intake, stop = Intake(), asyncio.Event()
    seconds = args.minutes * 60
    loading = asyncio.create_task(load(url, token, args.rate, seconds, intake, stop))
    reading = asyncio.create_task(read_api(url, reader_token, stop))
    samples: list[dict[str, Any]] = []
    start = time.time()
    r_host = f"127.0.0.1:{receiver_port}"
    try:
        for minute in range(1, args.minutes + 1):
            await asyncio.sleep(max(0.0, start + minute * 60 - time.time()))
            r, w = await asyncio.open_connection(*r_host.split(":"))
            w.write(b"GET /_minute HTTP/1.1\r\nHost: r\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            latency = json.loads(await r.readexactly(length))
            w.close()
            measured = await asyncio.to_thread(state.measure)
            sample = {
                "minute": minute,
                "rss": rss_bytes(serve.pid),
                "load": loadavg(),
                "events_accepted": intake.events,
                **latency,
                **measured,
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
    finally:
        stop.set()
        await asyncio.gather(loading, reading, return_exceptions=True)
        serve.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            serve.wait(60)
        receiver.kill()
        receiver.wait()
        log.close()
    gaps = [b - a for a, b in zip(intake.answered, intake.answered[1:], strict=False)]
    result = {
        "backend": args.backend,
        "rate": args.rate,
        "minutes": args.minutes,
        "retention": args.retention,
        "retention_ten": args.retention_ten,
        "retention_interval": args.retention_interval,
        "code": code,
        "cores": os.cpu_count(),
        "samples": samples,
        "longest_gap_between_202s": max(gaps) if gaps else None,
        "refused": intake.refused,
        "workdir": str(workdir),
    }
    state.drop()
    return result


def report(result: dict[str, Any], warm: float) -> str:
    samples = [s for s in result["samples"] if s["minute"] > warm] or result["samples"]
    first, last = samples[:5], samples[-5:]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    p99_first = mean([s["p99_ms"] for s in first])
    p99_last = mean([s["p99_ms"] for s in last])
    size = slope_per_hour([(s["minute"], s["bytes"]) for s in samples])
    rows = slope_per_hour([(s["minute"], s["rows"]["deliveries"]) for s in samples])
    rss = slope_per_hour([(s["minute"], s["rss"]) for s in samples])
    final = result["samples"][-1]
    gap = result["longest_gap_between_202s"]
    lines = [
        f"- state bytes after warm-up: slope {size:+.1%}/h; "
        f"{min(s['bytes'] for s in samples) / 2**20:.0f}–"
        f"{max(s['bytes'] for s in samples) / 2**20:.0f} MiB "
        f"(WAL at most {max(s['wal_bytes'] for s in samples) / 2**20:.1f} MiB)",
        f"- deliveries kept after warm-up: slope {rows:+.1%}/h; "
        f"{min(s['rows']['deliveries'] for s in samples):,}–"
        f"{max(s['rows']['deliveries'] for s in samples):,} rows",
        f"- RSS after warm-up: slope {rss:+.1%}/h; "
        f"{min(s['rss'] for s in samples) / 2**20:.0f}–{max(s['rss'] for s in samples) / 2**20:.0f}"
        " MiB",
        f"- p99 intake-to-delivery: first 5 min after warm-up {p99_first:.1f} ms, last 5 "
        f"{p99_last:.1f} ms ({p99_last / p99_first if p99_first else 0:.2f}×); "
        f"p50 {mean([s['p50_ms'] for s in samples]):.1f} ms",
        f"- longest time between two 202 answers: {gap:.2f} s; other answers: "
        f"{result['refused'] or 'none'}",
        f"- retention: {final['retention_runs']} runs removed {final['removed']:,} deliveries; "
        f"{final['events_accepted']:,} events accepted; load average "
        f"{min(s['load'] for s in result['samples']):.1f}–"
        f"{max(s['load'] for s in result['samples']):.1f} on {result['cores']} cores",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate", type=float, default=500.0, help="deliveries per second")
    parser.add_argument("--retention", default="5m")
    parser.add_argument("--retention-ten", default="3m")
    parser.add_argument("--retention-interval", default="30s")
    parser.add_argument("--out", type=Path, help="the JSON result (default: in the workdir)")
    parser.add_argument("--receiver", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        asyncio.run(receive(args.receiver))
        return 0
    result = asyncio.run(soak(args))
    warm = int(re.sub(r"\D", "", args.retention) or 5) + 2
    out = args.out or Path(result["workdir"]) / "result.json"
    out.write_text(json.dumps(result, indent=1))
    minutes = [float(s["minute"]) for s in result["samples"]]
    picture = svg(
        f"Soak, {args.backend}: {args.rate:g} deliveries/s, retention {args.retention}",
        minutes,
        [
            ("state (MiB)", [s["bytes"] / 2**20 for s in result["samples"]]),
            ("dispatcher RSS (MiB)", [s["rss"] / 2**20 for s in result["samples"]]),
            ("p99 intake to delivery (ms)", [s["p99_ms"] for s in result["samples"]]),
        ],
        warm,
    )
    (DOCS / f"soak-{args.backend}.svg").write_text(picture)
    print(f"result: {out}")
    print(report(result, warm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
