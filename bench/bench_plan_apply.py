"""How long plan and apply take, against PyYAML's C loader, and their peak memory.

    .venv/bin/python bench/bench_plan_apply.py [--sizes 1000,10000,50000] [--repeat 3]

For each size the generated tree (bench/generate.py, cached in bench/.data/) is
measured in this one process, interleaved with its baseline:

  baseline  read every file and yaml.load it with yaml.CSafeLoader: merely parsing;
  apply     into an empty SQLite state (a new file each time): load and validate
            the definitions, plan against the empty state, write every webhook
            and its audit record in one transaction; what
            `reconciler apply --auto-approve` does, less printing the plan;
  plan      against the state that already holds them (no change): load,
            validate, read the live state, compare.

Peak memory is the maximum resident set size of a child process that runs
`reconciler apply --auto-approve` and then `reconciler plan` on the tree through
the real CLI (output to /dev/null), read with os.wait4.

Targets at 10,000 definitions: plan <= 2x baseline, apply <= 3x, peak < 300 MB.
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
from functools import partial
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.bench_validate import baseline, dataset, timed  # noqa: E402
from reconciler.apply import ApplyOptions, changes_to_writes  # noqa: E402
from reconciler.loader import load_definitions  # noqa: E402
from reconciler.plan import make_plan  # noqa: E402
from reconciler.store.sqlite import SqliteStore  # noqa: E402

TARGETS = {"plan": 2.0, "apply": 3.0}
TARGET_SIZE = 10_000
MEMORY_TARGET_MB = 300


def apply_into(root: Path, db: Path) -> int:
    store = SqliteStore(db)
    try:
        result = load_definitions(root)
        plan = make_plan((d.spec for d in result.definitions), store.webhooks(), store.state())
        writes, audit = changes_to_writes(plan, ApplyOptions(actor="bench"))
        store.commit(writes, audit, expected_serial=plan.serial)
        return len(writes)
    finally:
        store.close()


def plan_against(root: Path, db: Path) -> int:
    store = SqliteStore(db)
    try:
        result = load_definitions(root)
        plan = make_plan((d.spec for d in result.definitions), store.webhooks(), store.state())
        if plan.has_changes:
            raise SystemExit("plan against the applied state should show no change")
        return plan.unchanged
    finally:
        store.close()


def peak_rss_mb(root: Path, workdir: Path) -> float:
    """Max RSS of one child process running apply then plan through the CLI."""
    script = (
        "import sys; from reconciler.cli import cli\n"
        "for args in (['apply', '--auto-approve', '--actor', 'bench'], ['plan']):\n"
        "    try:\n"
        "        cli([*args, sys.argv[1], '--state', sys.argv[2]], standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
    )
    db = workdir / "rss.db"
    with open(os.devnull, "w") as sink:
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(root), f"sqlite:///{db}"],
            stdout=sink,
            cwd=BENCH.parent,
        )
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the CLI child failed")
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--per-org", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=BENCH / ".data")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}")
    rows = []
    failed = False
    for size in sizes:
        root = dataset(size, args.per_org, args.seed, args.data_dir)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            apply_into(root, work / "warm.db")  # warm-up: page cache, imports
            base, applies, plans = [], [], []
            for i in range(args.repeat):
                db = work / f"state-{i}.db"
                base.append(timed(partial(baseline, root)))
                applies.append(timed(partial(apply_into, root, db)))
                plans.append(timed(partial(plan_against, root, db)))
            rss = peak_rss_mb(root, work)
        b, a, p = (statistics.median(x) for x in (base, applies, plans))
        rows.append((size, b, a, p, rss))
        if size == TARGET_SIZE:
            failed |= p / b > TARGETS["plan"] or a / b > TARGETS["apply"]
            failed |= rss > MEMORY_TARGET_MB

    print()
    print(
        "| definitions | C-loader parse | apply (empty SQLite) | ratio | plan (no change) "
        "| ratio | peak RSS (CLI apply+plan) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, b, a, p, rss in rows:
        print(
            f"| {size:,} | {b:.2f} s | {a:.2f} s | {a / b:.2f}x | {p:.2f} s | {p / b:.2f}x "
            f"| {rss:.0f} MB |"
        )
    print()
    print(
        f"targets at {TARGET_SIZE:,}: plan <= {TARGETS['plan']}x, apply <= "
        f"{TARGETS['apply']}x, peak < {MEMORY_TARGET_MB} MB: {'MISSED' if failed else 'met'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
