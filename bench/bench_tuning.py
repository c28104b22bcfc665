"""What `serve`'s two tuned paths save, against the stock paths `serve --stock` runs.

    .venv/bin/python bench/bench_tuning.py [--lines 20000] [--deliveries 10000]
        [--repeat 5] [--only log|serve]

Both parts alternate the variants within one run (the order reversed every other
repetition) and report CPU time, not wall time: the machine is shared, and CPU per
unit of work moves much less with its load than throughput does.

  log    in this process, on the event loop `serve` uses: --lines INFO lines like
         the worker's line per attempt, 200 per turn of the loop (a worker's batch),
         the root logger writing to /dev/null through
           tuned   serve's TurnBufferedHandler with its LineFormatter: a write per
                   turn, the date's text made once a second;
           stock   logging's StreamHandler and Formatter, the same format, a write
                   per line: what `serve --stock` logs through;
         CPU (time.process_time) per line, min and median of --repeat. With
         --log-variant V, one run of V alone: run it under callgrind with two
         --lines counts, and the difference of the instruction counts over the
         difference of the lines is the instructions per line, free of noise.
  serve  `reconciler serve` and `reconciler serve --stock`, one process, one webhook
         per event, --concurrency 200, on the same state, bench_dispatch.py's
         durable run (the sink, wrk or bench/loadgen.py posting --deliveries
         events): the dispatcher's CPU per delivery from /proc (its event loop
         thread and its other threads), and the rate for context. --stock changes
         both paths at once: uvicorn's own HTTP protocol instead of
         dispatch/intake_protocol.py, and the stock logging path above.

Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import bench_dispatch as bd  # noqa: E402
from harness import Sink, code_version  # noqa: E402

LOG_VARIANTS = ("tuned", "stock")
SERVE_VARIANTS = ("tuned", "stock")
PER_TURN = 200
MESSAGE = (
    "attempt delivery=%s event=%s/%s webhook=%s/%s attempt=%d outcome=%s status=%s "
    "duration_ms=%.1f%s"
)


# -- log -------------------------------------------------------------------------------


def log_run(variant: str, lines: int) -> float:
    """CPU microseconds per line of one run of `variant`."""
    from reconciler.dispatch.logs import lines_per_turn, serve_handler
    from reconciler.dispatch.server import event_loop_factory

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    log = logging.getLogger("reconciler.dispatch")
    with open(os.devnull, "w") as stream:
        root.handlers[:] = [serve_handler(stream, process_id=False, stock=variant == "stock")]
        root.setLevel(logging.INFO)
        try:

            async def write_all() -> float:
                with lines_per_turn(asyncio.get_running_loop()):
                    started = time.process_time()
                    for turn in range(0, lines, PER_TURN):
                        for n in range(turn, min(turn + PER_TURN, lines)):
                            args = (f"dlv_{n:026x}", "acme", f"evt_{n:026x}", "acme", "hook")
                            more = (1, "delivered", 200, 1.5, "")
                            log.info(MESSAGE, *args, *more)
                        await asyncio.sleep(0)  # the turn ends: its lines are written
                    return (time.process_time() - started) / lines * 1e6

            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                return runner.run(write_all())
        finally:
            root.handlers[:], _ = saved
            root.setLevel(saved[1])


def log_part(lines: int, repeat: int, variants: tuple[str, ...] = LOG_VARIANTS) -> None:
    if len(variants) == 1:  # one run, for an instruction count under callgrind
        print(f"log, {variants[0]}: {log_run(variants[0], lines):.2f} µs per line")
        return
    figures: dict[str, list[float]] = {v: [] for v in LOG_VARIANTS}
    log_run("tuned", lines // 10)  # warm-up
    for rep in range(repeat):
        order = LOG_VARIANTS if rep % 2 == 0 else LOG_VARIANTS[::-1]
        for variant in order:
            figures[variant].append(log_run(variant, lines))
        print(
            f"[{rep + 1}] log, CPU per line: "
            + ", ".join(f"{v} {figures[v][-1]:.2f} µs" for v in LOG_VARIANTS),
            flush=True,
        )
    tuned = statistics.median(figures["tuned"])
    print(f"\nThe line per attempt, {lines:,} lines per run, {repeat} runs each, alternating:\n")
    print("| path | CPU per line, min | median | more than tuned, median |")
    print("|---|---:|---:|---:|")
    for variant in LOG_VARIANTS:
        med = statistics.median(figures[variant])
        print(
            f"| {variant} | {min(figures[variant]):.2f} µs | {med:.2f} µs "
            f"| {med - tuned:+.2f} µs ({med / tuned:.2f}x) |"
        )


# -- serve ------------------------------------------------------------------------------


def serve_part(deliveries: int, repeat: int) -> None:
    base_flags = bd.serve_flags()
    runs: dict[str, list[bd.DurableRun]] = {v: [] for v in SERVE_VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        work = Path(tmp)
        sink = Sink(work)
        try:
            state = bd.make_state(work, sink.port, 1, bd.webhook_cap([200], [1]))
            bd.SERVE_FLAGS[:] = base_flags
            bd.durable(sink, state, work, 1, 200, 1000)  # warm-up, untimed
            for rep in range(repeat):
                order = SERVE_VARIANTS if rep % 2 == 0 else SERVE_VARIANTS[::-1]
                for variant in order:
                    bd.SERVE_FLAGS[:] = base_flags + (["--stock"] if variant == "stock" else [])
                    run = bd.durable(sink, state, work, 1, 200, deliveries)
                    runs[variant].append(run)
                    main = run.cpu["dispatcher main thread"] / run.deliveries * 1e6
                    print(
                        f"[{rep + 1}] serve {variant:5} {run.rate:,.0f}/s, {run.cpu_us:.0f} µs "
                        f"of CPU per delivery ({main:.0f} µs on the event loop thread), "
                        f"other load {run.others:.2f} cores",
                        flush=True,
                    )
        finally:
            sink.close()
    print(f"\nserve and serve --stock, K = 1, C = 200, {deliveries:,} deliveries per run, "
          f"{repeat} runs each, alternating:\n")  # fmt: skip
    print(
        "| serve | dispatcher CPU per delivery, median | event loop thread | runs "
        "| deliveries/s, median | other load, median |"
    )
    print("|---|---:|---:|---|---:|---:|")
    for variant in SERVE_VARIANTS:
        rs = runs[variant]
        print(
            f"| {'--stock' if variant == 'stock' else '(tuned)'} "
            f"| {statistics.median(r.cpu_us for r in rs):.0f} µs "
            f"| {statistics.median(r.cpu['dispatcher main thread'] / r.deliveries * 1e6 for r in rs):.0f} µs "  # noqa: E501
            f"| {', '.join(f'{r.cpu_us:.0f}' for r in rs)} "
            f"| {statistics.median(r.rate for r in rs):,.0f}/s "
            f"| {statistics.median(r.others for r in rs):.2f} cores |"
        )
    ratios = [s.cpu_us / t.cpu_us for t, s in zip(runs["tuned"], runs["stock"], strict=True)]
    print(
        f"\n--stock against tuned, CPU per delivery, pair by pair: "
        f"{', '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000, help="log lines per run")
    parser.add_argument("--deliveries", type=int, default=10_000, help="per serve run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("log", "serve"))
    parser.add_argument(
        "--log-variant",
        choices=LOG_VARIANTS,
        help="log: this variant once, nothing else (to count its instructions, see the docs)",
    )
    args = parser.parse_args(argv)
    print(f"code: {code_version()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.only in (None, "log"):
        log_part(args.lines, args.repeat, (args.log_variant,) if args.log_variant else LOG_VARIANTS)
    if args.only in (None, "serve"):
        serve_part(args.deliveries, args.repeat)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
