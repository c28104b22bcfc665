"""How long `load_definitions` (what `reconciler validate` does) takes, against PyYAML's C loader.

    .venv/bin/python bench/bench_validate.py [--sizes 1000,10000,50000] [--repeat 5]

For each size, a tree of <size / per-org> organizations × <per-org> files is
generated once (bench/generate.py) into bench/.data/ (git-ignored) and reused.
Then, in this one process, interleaved, each repetition times:

  baseline  list the files (one glob), read each, yaml.load(text, Loader=yaml.CSafeLoader):
            merely reading and parsing, nothing checked;
  validate  reconciler.loader.load_definitions(root): list, read, parse with
            locations, refuse duplicate keys and alias bombs, pydantic model,
            every rule in checks.py.

Each side is timed by this process's CPU time (--clock wall: by wall time); which
one runs first alternates between repetitions; the garbage collector stays
on (as in real use; --no-gc switches it off, to see its share) and is run before
each measurement. Reported: the medians,
their ratio (validate / baseline) and the spread of the per-repetition ratios.
The target is a ratio of at most 1.5 at 10,000 files.

Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(BENCH.parent))

from bench.generate import write_definitions  # noqa: E402
from reconciler.loader import load_definitions  # noqa: E402

TARGET = 1.5
TARGET_SIZE = 10_000


def dataset(size: int, per_org: int, seed: int, data_dir: Path) -> Path:
    """The generated tree for `size` files, made once and cached."""
    if size % per_org:
        raise SystemExit(f"size {size} is not a multiple of --per-org {per_org}")
    orgs = size // per_org
    version = hashlib.sha256((BENCH / "generate.py").read_bytes()).hexdigest()[:10]
    root = data_dir / f"validate-{orgs}x{per_org}-seed{seed}-{version}"
    done = root.with_name(root.name + ".done")
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        write_definitions(root, orgs, per_org, seed)
        done.touch()
        print(f"  generated {size:,} files in {time.perf_counter() - started:.1f}s: {root}")
    return root


def baseline(root: Path, loader: type = yaml.CSafeLoader) -> int:
    count = 0
    for path in sorted(root.glob("*/*.yaml")):
        yaml.load(path.read_bytes().decode("utf-8"), Loader=loader)
        count += 1
    return count


def subject(root: Path) -> int:
    return load_definitions(root).files


GC_OFF = False  # --no-gc: a diagnostic, to see what the cyclic collector costs
# --clock: this process's CPU time (the default: on a shared machine it moves far less
# with the load of others than wall time does), or wall time.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK = CLOCKS["cpu"]


def timed(run: Callable[[], object]) -> float:
    gc.collect()
    if GC_OFF:
        gc.disable()
    try:
        started = CLOCK()
        run()
        return CLOCK() - started
    finally:
        gc.enable()


def measure(root: Path, size: int, repeat: int) -> tuple[list[float], list[float]]:
    # Warm-up, untimed: page cache, imports, pydantic's first validation; and a check
    # that the subject really validates every file without a problem.
    result = load_definitions(root)
    if result.files != size or len(result.definitions) != size or result.problems:
        shown = "\n".join(str(p) for p in result.problems[:5])
        raise SystemExit(
            f"generated data is not all valid: {result.files} files, "
            f"{len(result.definitions)} definitions, {len(result.problems)} problems\n{shown}"
        )
    del result  # measure from a small heap, as a fresh `reconciler validate` does
    if baseline(root) != size:
        raise SystemExit("baseline did not read every file")
    base: list[float] = []
    subj: list[float] = []
    for i in range(repeat):
        if i % 2 == 0:
            base.append(timed(lambda: baseline(root)))
            subj.append(timed(lambda: subject(root)))
        else:
            subj.append(timed(lambda: subject(root)))
            base.append(timed(lambda: baseline(root)))
    return base, subj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="comma-separated file counts")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per size")
    parser.add_argument("--per-org", type=int, default=100, help="files per organization")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir", type=Path, default=BENCH / ".data", help="cache of generated trees"
    )
    parser.add_argument("--no-cache", action="store_true", help="generate into a temp dir")
    parser.add_argument(
        "--no-pure", action="store_true", help="skip the pure-Python SafeLoader run at 10k"
    )
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="diagnostic: switch the cyclic garbage collector off while timing (both sides)",
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="cpu",
        help="time each side by this process's CPU time (default) or by wall time",
    )
    args = parser.parse_args(argv)
    global GC_OFF, CLOCK
    GC_OFF = args.no_gc
    CLOCK = CLOCKS[args.clock]
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cpus; PyYAML {yaml.__version__} "
        f"(libyaml {'yes' if yaml.__with_libyaml__ else 'NO'}); repeat={args.repeat}; "
        f"{args.clock} time; load average {os.getloadavg()[0]:.2f}"
        + ("; garbage collector OFF while timing" if GC_OFF else "")
    )
    temp = tempfile.TemporaryDirectory(prefix="bench-validate-") if args.no_cache else None
    data_dir = Path(temp.name) if temp else args.data_dir
    rows = []
    pure: float | None = None
    try:
        for size in sizes:
            print(f"size {size:,}:")
            root = dataset(size, args.per_org, args.seed, data_dir)
            base, subj = measure(root, size, args.repeat)
            ratios = sorted(s / b for s, b in zip(subj, base, strict=True))
            b, s = statistics.median(base), statistics.median(subj)
            print(
                "  baseline " + " ".join(f"{t:.3f}" for t in base) + "\n"
                "  validate " + " ".join(f"{t:.3f}" for t in subj)
            )
            rows.append((size, b, s, s / b, ratios[0], ratios[-1]))
            if size == TARGET_SIZE and not args.no_pure:
                pure = timed(lambda root=root: baseline(root, yaml.SafeLoader))
    finally:
        if temp:
            temp.cleanup()

    print()
    print(
        "| files  | C-loader baseline (median) | validate (median) | per file | ratio | spread    |"
    )
    print(
        "|-------:|---------------------------:|------------------:|---------:|------:|----------:|"
    )
    for size, b, s, ratio, lo, hi in rows:
        print(
            f"| {size:>6,} | {b:>24.3f} s | {s:>15.3f} s | {s / size * 1e6:>5.0f} µs "
            f"| {ratio:>5.2f} | {lo:.2f}–{hi:.2f} |"
        )
    if pure is not None:
        print(f"\npure-Python yaml.SafeLoader, {TARGET_SIZE:,} files, once: {pure:.3f} s")
    for size, _b, _s, ratio, _lo, _hi in rows:
        if size == TARGET_SIZE:
            verdict = "meets" if ratio <= TARGET else "MISSES"
            print(f"\n{TARGET_SIZE:,} files: ratio {ratio:.2f} {verdict} the target (<= {TARGET}×)")
            return 0 if ratio <= TARGET else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
