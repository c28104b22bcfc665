"""How long plan and apply take, against PyYAML's C loader, and their peak memory.

    .venv/bin/python bench/bench_plan_apply.py [--sizes 1000,10000,50000] [--repeat 3]
        [--backend sqlite|postgres|both] [--postgres URL]

For each size the generated tree (bench/generate.py, cached in bench/.data/) is
measured in this one process, interleaved with its baseline, on each backend:

  baseline  read every file and yaml.load it with yaml.CSafeLoader: merely parsing;
  apply     into an empty state (a new one each time, opened and migrated inside
            the timing): load and validate the definitions, plan against the empty
            state, write every webhook and its audit record in one transaction;
            what `reconciler apply --auto-approve` does, less printing the plan;
  plan      against the state that already holds them (no change): load,
            validate, read the live state, compare.

Backends: sqlite, a new file per repetition in a temporary directory; postgres,
a throwaway schema per repetition (`?schema=bench_<random>`) in the database of
--postgres (default $RECONCILER_BENCH_POSTGRES, else the local server's `test`
database), dropped afterwards.

The machine may be shared: each measurement also reads how busy the whole machine
was meanwhile (/proc/stat), less this process and the PostgreSQL server's
processes; when something else kept more than --max-other-load cores busy (default
0.25), it is measured again, up to --attempts times in all (default 4), and said so.

Peak memory is the maximum resident set size of a child process that runs
`reconciler apply --auto-approve` and then `reconciler plan` on the tree through
the real CLI (output to /dev/null), read with os.wait4.

Targets at 10,000 definitions (for the embedded SQLite state): plan <= 2x
baseline, apply <= 3x, peak < 300 MB; PostgreSQL's figures are reported beside
them against the same targets, for information.
Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import bench.bench_validate as bench_validate  # noqa: E402
from bench.bench_dispatch_pg import postgres_cpu  # noqa: E402
from bench.bench_validate import baseline, dataset, timed  # noqa: E402
from bench.harness import machine_busy  # noqa: E402
from reconciler.apply import ApplyOptions, changes_to_writes  # noqa: E402
from reconciler.loader import load_definitions  # noqa: E402
from reconciler.plan import make_plan  # noqa: E402
from reconciler.store import open_store  # noqa: E402

TARGETS = {"plan": 2.0, "apply": 3.0}
TARGET_SIZE = 10_000
MEMORY_TARGET_MB = 300
BACKENDS = ("sqlite", "postgres")
T = TypeVar("T")
POSTGRES = os.environ.get("RECONCILER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def apply_into(root: Path, state: str) -> int:
    try:
        store = open_store(state, create=True)  # as apply opens it: the first makes the state
    except TypeError:  # a checkout before open_store(create=), which creates by default
        store = open_store(state)
    try:
        result = load_definitions(root)
        plan = make_plan((d.spec for d in result.definitions), store.webhooks(), store.state())
        writes, audit = changes_to_writes(plan, ApplyOptions(actor="bench"))
        store.commit(writes, audit, expected_serial=plan.serial)
        return len(writes)
    finally:
        store.close()


def plan_against(root: Path, state: str) -> int:
    store = open_store(state)
    try:
        result = load_definitions(root)
        plan = make_plan((d.spec for d in result.definitions), store.webhooks(), store.state())
        if plan.has_changes:
            raise SystemExit("plan against the applied state should show no change")
        return plan.unchanged
    finally:
        store.close()


class States:
    """Throwaway states of one backend: `new()` is a context manager yielding the URL
    of an empty state, removed afterwards."""

    def __init__(self, backend: str, workdir: Path, postgres: str) -> None:
        self.backend = backend
        self.workdir = workdir
        self.postgres = postgres

    @contextmanager
    def new(self) -> Iterator[str]:
        tag = uuid.uuid4().hex[:12]
        if self.backend == "sqlite":
            db = self.workdir / f"state-{tag}.db"
            try:
                yield f"sqlite:///{db}"
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            return
        import psycopg

        schema = f"bench_{tag}"
        try:
            yield f"{self.postgres}?schema={schema}"
        finally:
            with psycopg.connect(self.postgres, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def describe(self) -> str:
        if self.backend == "sqlite":
            import sqlite3

            return f"sqlite {sqlite3.sqlite_version} (a new file per repetition)"
        import psycopg

        with psycopg.connect(self.postgres, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            sync = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
        host = self.postgres.rpartition("@")[2]
        return (
            f"PostgreSQL {version} at {host}, synchronous_commit={sync}, psycopg "
            f"{psycopg.__version__} (a new schema per repetition)"
        )


def peak_rss_mb(root: Path, states: States) -> float:
    """Max RSS of one child process running apply then plan through the CLI."""
    script = (
        "import sys; from reconciler.cli import cli\n"
        "for args in (['apply', '--auto-approve', '--actor', 'bench'], ['plan']):\n"
        "    try:\n"
        "        cli([*args, sys.argv[1], '--state', sys.argv[2]], standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
    )
    with states.new() as state, open(os.devnull, "w") as sink:
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(root), state],
            stdout=sink,
            cwd=BENCH.parent,
        )
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the CLI child failed")
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def measure_once(states: States, root: Path) -> tuple[float, float]:
    """(apply, plan) seconds into one new state, removed afterwards."""
    with states.new() as state:
        applied = timed(partial(apply_into, root, state))
        planned = timed(partial(plan_against, root, state))
    return applied, planned


def other_load(run: Callable[[], T]) -> tuple[T, float]:
    """run()'s result, and the cores the machine spent busy meanwhile on anything but
    this process and the local PostgreSQL server (on a shared machine: someone else)."""
    busy0, pg0, own0, wall0 = machine_busy()[0], postgres_cpu(), os.times(), time.monotonic()
    result = run()
    busy1, pg1, own1 = machine_busy()[0], postgres_cpu(), os.times()
    wall = time.monotonic() - wall0
    ours = own1.user + own1.system - own0.user - own0.system
    ours += sum(pg1.values()) - sum(pg0.get(pid, 0.0) for pid in pg1)
    return result, max(0.0, (busy1 - busy0 - ours) / wall)


def quietly(run: Callable[[], T], max_other: float, attempts: int, what: str) -> T:
    """run(), again (up to `attempts` times in all) while another load kept more than
    `max_other` cores busy meanwhile; the last result is kept whatever it was."""
    for attempt in range(1, attempts + 1):
        result, others = other_load(run)
        if others <= max_other:
            return result
        print(
            f"  {what}: other load {others:.2f} cores"
            + (", measured again" if attempt < attempts else ", kept (no quiet moment)"),
            flush=True,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--per-org", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=BENCH / ".data")
    parser.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    parser.add_argument(
        "--postgres",
        default=POSTGRES,
        help="a PostgreSQL database URL, without ?schema= (a throwaway schema is made in it)",
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="measure again when other processes kept more than this many cores busy",
    )
    parser.add_argument("--attempts", type=int, default=4, help="tries per measurement")
    parser.add_argument(
        "--clock",
        choices=bench_validate.CLOCKS,
        default="wall",
        help="time by wall time (the default: it counts the disk's flushes and, on "
        "PostgreSQL, the server's work) or by this process's CPU time",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = BACKENDS if args.backend == "both" else (args.backend,)

    bench_validate.CLOCK = bench_validate.CLOCKS[args.clock]
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}; "
        f"{args.clock} time; load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    failed: dict[str, bool] = dict.fromkeys(backends, False)
    with tempfile.TemporaryDirectory() as tmp:
        all_states = {b: States(b, Path(tmp), args.postgres) for b in backends}
        for states in all_states.values():
            print(f"{states.backend}: {states.describe()}")
        for size in sizes:
            root = dataset(size, args.per_org, args.seed, args.data_dir)
            for states in all_states.values():  # warm-up: page cache, imports, connections
                measure_once(states, root)
            base: list[float] = []
            applies: dict[str, list[float]] = {b: [] for b in backends}
            plans: dict[str, list[float]] = {b: [] for b in backends}
            for i in range(args.repeat):
                order = backends if i % 2 == 0 else backends[::-1]
                guard = (args.max_other_load, args.attempts)
                base.append(
                    quietly(partial(timed, partial(baseline, root)), *guard, f"{size:,} baseline")
                )
                for backend in order:
                    a, p = quietly(
                        partial(measure_once, all_states[backend], root),
                        *guard,
                        f"{size:,} {backend} apply+plan",
                    )
                    applies[backend].append(a)
                    plans[backend].append(p)
            b = statistics.median(base)
            for backend in backends:
                rss = peak_rss_mb(root, all_states[backend])
                a, p = statistics.median(applies[backend]), statistics.median(plans[backend])
                rows.append((size, backend, b, a, p, rss))
                print(
                    f"  {size:,} {backend}: apply {' '.join(f'{x:.2f}' for x in applies[backend])}"
                    f" s, plan {' '.join(f'{x:.2f}' for x in plans[backend])} s",
                    flush=True,
                )
                if size == TARGET_SIZE:
                    failed[backend] |= p / b > TARGETS["plan"] or a / b > TARGETS["apply"]
                    failed[backend] |= rss > MEMORY_TARGET_MB

    print()
    print(
        "| definitions | backend | C-loader parse | apply (empty state) | ratio "
        "| plan (no change) | ratio | peak RSS (CLI apply+plan) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size, backend, b, a, p, rss in rows:
        print(
            f"| {size:,} | {backend} | {b:.2f} s | {a:.2f} s | {a / b:.2f}x | {p:.2f} s "
            f"| {p / b:.2f}x | {rss:.0f} MB |"
        )
    print()
    for backend in backends:
        print(
            f"{backend}: targets at {TARGET_SIZE:,}: plan <= {TARGETS['plan']}x, apply <= "
            f"{TARGETS['apply']}x, peak < {MEMORY_TARGET_MB} MB: "
            f"{'MISSED' if failed[backend] else 'met'}"
        )
    # The targets are the embedded state's; with --backend postgres alone, PostgreSQL's.
    return 1 if failed.get("sqlite", failed.get("postgres")) else 0


if __name__ == "__main__":
    raise SystemExit(main())
