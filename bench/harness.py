"""What the dispatch benchmarks share: the processes they start and stop, their CPU
and storage writes read from /proc, how busy the rest of the machine was, the commit
measured, the receiver (bench/sink.py) and the event posters (wrk, bench/loadgen.py).

bench_dispatch.py, bench_dispatch_pg.py, bench_fanout.py, bench_isolation.py and
bench_tuning.py import it; it is not a benchmark of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RUN_LIMIT_SECONDS = 300.0  # no single measurement may take longer
TICKS = os.sysconf("SC_CLK_TCK")
INTAKE_CONNECTIONS = 128  # the producer's keep-alive connections to the intake


def cli(*args: str, timeout: float = 120) -> str:
    """`reconciler ARGS` as a subprocess in the checkout measured; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"reconciler {args[0]} failed: {done.stdout}{done.stderr}")
    return done.stdout


def cpu_of(pid: int) -> float:
    """user+system CPU seconds of a process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> dict[str, float]:
    """user+system CPU seconds of a process: 'main' (its first thread), 'other' threads."""
    out = {"main": 0.0, "other": 0.0}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            fields = stat.rpartition(")")[2].split()
            seconds = (int(fields[11]) + int(fields[12])) / TICKS
            out["main" if int(task) == pid else "other"] += seconds
    return out


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (a `serve --processes N` supervisor's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry))
    return found


def tree_cpu(pid: int) -> dict[str, float]:
    """cpu_seconds of `pid` plus its children: one dispatcher or a supervisor's N."""
    out = cpu_seconds(pid)
    for child in children(pid):
        for key, value in cpu_seconds(child).items():
            out[key] += value
    return out


def tree_disk_written(pid: int) -> int:
    return disk_written(pid) + sum(disk_written(child) for child in children(pid))


def disk_written(pid: int) -> int:
    """Bytes `pid` has caused to be written to storage (/proc/PID/io write_bytes)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split(":")[1])
    except OSError:
        pass
    return 0


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine has spent busy, and stolen by the hypervisor."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return (sum(fields[:8]) - idle - steal) / TICKS, steal / TICKS


def read_line(proc: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    """The first stdout line of `proc` matching `pattern`, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.search(pattern, line)
            if found:
                return found
        elif proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise SystemExit(f"{proc.args[:4]}... did not print {pattern!r} within {timeout}s")


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, wait: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class Sink:
    """bench/sink.py in its own process, and a keep-alive connection to its control paths."""

    def __init__(self, workdir: Path) -> None:
        self._log = (workdir / "sink.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "sink.py"), "--max-seconds", "3600"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.port = int(read_line(self.proc, r":(\d+)$", 20).group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def _call(self, method: str, path: str) -> Any:
        for attempt in range(2):
            try:
                self._conn.request(method, path)
                return json.loads(self._conn.getresponse().read())
            except (ConnectionError, http.client.HTTPException):
                self._conn.close()
                if attempt:
                    raise
        return None

    def reset(self, record: bool = False) -> None:
        self._call("POST", "/_reset?record=1" if record else "/_reset")

    def count(self) -> dict[str, Any]:
        return self._call("GET", "/_count")

    def dump(self) -> list[list[Any]]:
        return self._call("GET", "/_dump")

    def wait_for(self, expected: int, timeout: float, stall: float = 20.0) -> dict[str, Any]:
        """Poll until the sink has counted `expected` requests, or `timeout` passed, or
        nothing arrived for `stall` seconds."""
        now = time.monotonic()
        deadline, last_count, last_change = now + timeout, -1, now
        while True:
            seen = self.count()
            now = time.monotonic()
            if seen["count"] != last_count:
                last_count, last_change = seen["count"], now
            if seen["count"] >= expected or now > deadline or now - last_change > stall:
                return seen
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call("POST", "/_quit")
        self._conn.close()
        stop(self.proc, wait=5)
        self._log.close()


def loadgen(
    url: str,
    requests: int,
    *,
    connections: int,
    rate: float = 0.0,
    kind: str = "event",
    token: str | None = None,
    batch: int = 1,
) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        url,
        "--requests",
        str(requests),
        "--connections",
        str(connections),
        "--body-kind",
        kind,
        "--max-seconds",
        str(RUN_LIMIT_SECONDS),
    ]
    if rate:
        args += ["--rate", str(rate)]
    if batch > 1:
        args += ["--batch", str(batch)]
    if token:
        args += ["--header", f"Authorization: Bearer {token}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def loadgen_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=RUN_LIMIT_SECONDS + 30)
    return json.loads(out.strip().splitlines()[-1])


# wrk posting exactly `n` events (no id: each is a new event), then idling on
# /healthz until every answer is in. It says what it sent and what came back at
# once, since wrk itself only ends when its --duration is over (or on SIGINT).
WRK_EVENTS_SCRIPT = """\
function init(args)
  -- wrk calls request() once right after init, to check what it returns, and
  -- never sends that one: start one below zero.
  -- args: POSTs to send, the Authorization header, events per POST (1: /v1/events)
  n = tonumber(args[1]); sent = -1; accepted = 0; refused = 0
  local batch = tonumber(args[3])
  local event = '{"type": "new_rule_violation", "organization": "acme", '
    .. '"name": "bench-rule", "description": "1700000000.123456"}'
  local path, body = "/v1/events", event
  if batch > 1 then
    path = "/v1/events/batch"
    body = '{"events": [' .. string.rep(event, batch, ", ") .. ']}'
  end
  post = wrk.format("POST", path, {["Content-Type"] = "application/json",
    ["Authorization"] = args[2]}, body)
  idle = wrk.format("GET", "/healthz")
end
function request()
  if sent < n then sent = sent + 1; return post end
  return idle
end
function response(status, headers, body)
  if status == 202 then accepted = accepted + 1
  elseif status ~= 200 then refused = refused + 1 end
  if accepted + refused == n then
    io.write(string.format("EVENTS %d %d %d\\n", sent, accepted, refused))
    io.flush()
    wrk.thread:stop()
  end
end
"""


def _wait_for_output(proc: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> Any:
    """The first match of `pattern` in what `proc` writes, read as it comes (wrk's
    stdout is block-buffered: lines arrive in bunches, not one by one)."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            found = re.search(pattern, seen)
            if found:
                return found
        elif proc.poll() is not None:
            break
    raise SystemExit(f"wrk did not say {pattern!r} within {timeout:g}s; it said:\n{seen!r}")


def intake_load(
    url: str,
    events: int,
    token: str | None,
    workdir: Path,
    batch: int = 1,
    connections: int = INTAKE_CONNECTIONS,
) -> dict[str, Any]:
    """Post `events` events to `url` (the dispatcher) as fast as they are taken, over
    `connections` connections, `batch` events per POST (1: to /v1/events, more:
    to /v1/events/batch): with wrk where installed (it spends a fraction of the CPU
    bench/loadgen.py does, and the CPU is shared with what is measured), else with
    bench/loadgen.py. The same summary either way, counted in events."""
    if events % batch:
        raise SystemExit(f"{events} events do not make batches of {batch}")
    posts = events // batch
    if not shutil.which("wrk"):
        path = "/v1/events" if batch == 1 else "/v1/events/batch"
        result = loadgen_result(
            loadgen(f"{url}{path}", posts, connections=connections, token=token, batch=batch)
        )
        result["statuses"] = {code: count * batch for code, count in result["statuses"].items()}
        result["rate"] *= batch
        return result
    script = workdir / "events.lua"
    script.write_text(WRK_EVENTS_SCRIPT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{RUN_LIMIT_SECONDS:g}s",
         "--timeout", "60s", "-s", str(script), url, "--", str(posts),
         f"Bearer {token}" if token else "", str(batch)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        found = _wait_for_output(proc, rb"EVENTS (\d+) (\d+) (\d+)", RUN_LIMIT_SECONDS)
        finished = time.time()
    finally:
        stop(proc, signal.SIGINT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sent, accepted, refused = (int(x) * batch for x in found.groups())
    statuses = {"202": accepted} if not refused else {"202": accepted, "other": refused}
    return {
        "first_send": started,
        "last_answer": finished,
        "sent": sent,
        "statuses": statuses,
        "errors": [] if sent == events else [f"wrk sent {sent} of {events} events"],
        "rate": accepted / (finished - started),
        "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
    }


def machine_line(postgres: str | None) -> str:
    import aiohttp
    import httpx

    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    parts = [
        f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable, {model})",
        f"Linux {platform.release()}",
        f"CPython {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if postgres:
        import psycopg

        with psycopg.connect(postgres, autocommit=True, connect_timeout=10) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            sync = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
        parts.append(
            f"PostgreSQL {version} on this machine (synchronous_commit={sync}), "
            f"psycopg {psycopg.__version__}"
        )
    stack = [f"httpx {httpx.__version__}", f"aiohttp {aiohttp.__version__}"]
    for name in ("uvicorn", "uvloop", "httptools"):
        try:
            stack.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            stack.append(f"no {name}")
    parts.append(", ".join(stack))
    return "; ".join(parts)


def code_version() -> str:
    """`git describe` of the checkout, and the files changed in reconciler/ and bench/."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        ).stdout.strip()  # fmt: skip
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=30
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "reconciler", "bench"],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    if not commit:
        return f"unknown ({ROOT} is not a git checkout)"
    out = f"{described} (commit {commit})"
    if changed:
        # Identify the code measured: a hash of reconciler/'s diff and untracked files.
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", "reconciler"], capture_output=True, cwd=ROOT, timeout=30
        ).stdout
        digest = hashlib.sha256(diff)
        for line in sorted(changed):
            path = ROOT / line[3:]
            if line.startswith("??") and line[3:].startswith("reconciler/") and path.is_file():
                digest.update(path.read_bytes())
        files = ", ".join(line[3:] for line in changed)
        out += f"; uncommitted (reconciler/ hash {digest.hexdigest()[:12]}): {files}"
    return out
