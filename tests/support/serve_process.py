"""`reconciler serve` as a real child process, for the integration and reliability tests.

`Server` starts one on a free loopback port (allowed to send to 127.0.0.1 only), waits
until it says where it listens, and keeps its log for failure messages. `eventually`
polls a condition under a deadline. `rows` reads the state the processes write, on
SQLite or PostgreSQL.
"""

from __future__ import annotations

import queue
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from tests.support.helpers_state import RECONCILER, cli_env
from tests.support.receiver import DEADLINE

# The test receivers listen on loopback, which the dispatcher refuses unless the
# deployment allows it: these tests allow exactly 127.0.0.1.
ALLOW_LOOPBACK = ("--allow-cidr", "127.0.0.1/32")
T = TypeVar("T")


class Server:
    """One `reconciler serve` child process on a free port."""

    def __init__(
        self,
        root: Path,
        state: str,
        number: int,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.number = number
        self.state = state
        self.log_path = root / f"serve-{number}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *RECONCILER,
                "serve",
                "--state",
                state,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *ALLOW_LOOPBACK,
                *args,
            ],
            cwd=root,
            env=cli_env(**(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""  # known once it is ready: see wait_ready

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self) -> None:
        """Wait for `serving on http://127.0.0.1:PORT (state ...)`; set `url`."""
        deadline = time.monotonic() + DEADLINE
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"serve did not say 'serving on' within {DEADLINE}s{self}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"serve exited before it was ready{self}")
            found = re.match(r"serving on (http://127\.0\.0\.1:(\d+)) \(state (.+)\)$", line)
            if found:
                assert int(found.group(2)) > 0 and found.group(3) == shown(self.state), line
                self.url = found.group(1)
                return

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __str__(self) -> str:
        return f"\n--- serve {self.number} (pid {self.pid}), log tail ---\n{self.log()[-4000:]}"

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def memory_kb(self, field: str = "VmHWM") -> int:
        """A memory figure of the running process from /proc, in kB: VmHWM is the peak
        resident size so far, VmRSS the current one."""
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        found = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
        assert found, f"no {field} in /proc/{self.pid}/status (has serve exited?){self}"
        return int(found.group(1))

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"serve did not exit within {timeout}s{self}") from None

    def stop(self) -> None:
        """Kill (if still running) and reap; close the pipe and the log."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(DEADLINE)
        self._reader.join(DEADLINE)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def shown(state: str) -> str:
    """A state URL as the CLI prints it (a PostgreSQL URL without its user)."""
    if state.startswith("sqlite:"):
        return state
    from reconciler.store.postgres import shown_url

    return shown_url(state)


def eventually(
    check: Callable[[], T], what: str, context: object = "", timeout: float = DEADLINE
) -> T:
    """Poll `check` until it returns something true; after `timeout` seconds fail with
    `what` and `context` (a server, or anything whose text explains the state)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}{context}")
        time.sleep(0.05)


def rows(state: str, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one query on a state URL (sqlite:///PATH or postgresql://...?schema=NAME);
    `args` in that backend's style (`?` or `%s`)."""
    if state.startswith("sqlite:///"):
        conn = sqlite3.connect(state.removeprefix("sqlite:///"), timeout=DEADLINE)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    import psycopg

    from reconciler.store.postgres import split_url

    conninfo, schema, _ = split_url(state)
    with psycopg.connect(
        conninfo, autocommit=True, connect_timeout=10, options=f"-c search_path={schema}"
    ) as pg:
        return pg.execute(sql, args).fetchall()  # type: ignore[arg-type]
