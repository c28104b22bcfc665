"""CPU per delivery of the worker's own cycle, in one process, without the network.

    .venv/bin/python bench/bench_worker_cycle.py [--deliveries 10000] [--repeat 5]

One webhook (organization acme, a JSON body with two placeholders) in a fresh SQLite
state; --deliveries events are stored, then a Worker claims, renders, checks the
target, "sends" through an in-memory transport that answers 200 at once, and records
every attempt, 200 at a time, until all are delivered. The figure is the process CPU
time of that loop over the deliveries: what the dispatcher's own code costs per
delivery, without the intake's HTTP, the sockets or the receiver, which make the
end-to-end benchmark (bench_dispatch.py) swing by more than a few percent between
runs on a shared machine.

To compare two versions of the code, run this file with each checkout's interpreter
from that checkout, alternating, several times (it only imports `reconciler`, and
runs on checkouts from before `open_store(create=)` and `max_in_flight`): the minimum
and the median of each are printed. For a count free of the machine's load, run it
under callgrind with two --deliveries counts and --repeat 1: the difference of the
instruction counts over the difference of the deliveries is the instructions per
delivery. docs/benchmarks.md has the figures.

Not part of the test suite: pytest collects tests/ only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from reconciler.dispatch.sender import Sender
from reconciler.dispatch.ssrf import NetworkPolicy
from reconciler.dispatch.worker import Database, Worker, WorkerSettings
from reconciler.model import WebhookSpec
from reconciler.store import open_store
from reconciler.store.base import Write
from reconciler.store.queue import EventRecord

TIME = "2026-11-29T00:00:00Z"
DEFINITION = {
    "name": "a",
    "organization": "acme",
    "event": "new_rule_violation",
    "method": "POST",
    "url": "http://127.0.0.1:9/hook/a",  # never connected to: the transport is in memory
    "headers": {"Content-Type": "application/json"},
    "body": {"id": "{{event_id}}", "t": "{{description}}"},
    "max_in_flight": 1000,  # one webhook's throughput, not isolation, is measured
}


def one_run(deliveries: int) -> float:
    """CPU microseconds per delivery of one run, on a new state."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'state.db'}"
        try:
            store = open_store(url, create=True)
        except TypeError:  # a checkout before open_store(create=): it creates by default
            store = open_store(url)
        definition = dict(DEFINITION)
        if "max_in_flight" not in WebhookSpec.model_fields:  # before fair delivery: no cap
            del definition["max_in_flight"]
        spec = WebhookSpec.model_validate(definition)
        store.commit(
            [Write("put", "acme", "a", spec.canonical_json())],
            [],
            expected_serial=store.state().serial,
        )
        now = time.time()
        for start in range(0, deliveries, 100):
            store.add_events(
                [
                    EventRecord(f"e{n}", "new_rule_violation", "acme", "r", "d", TIME)
                    for n in range(start, min(start + 100, deliveries))
                ],
                now,
            )
        return asyncio.run(_deliver_all(store, deliveries))


async def _deliver_all(store: object, deliveries: int) -> float:
    db = Database(store)  # type: ignore[arg-type]
    sender = Sender(
        httpx.MockTransport(lambda _request: httpx.Response(200, stream=httpx.ByteStream(b"ok")))
    )
    worker = Worker(
        db,
        sender,
        policy=NetworkPolicy.from_options(False, ["127.0.0.1/32"]),
        env={},
        rng=random.Random(0),
        owner="bench:1:w",
        settings=WorkerSettings(batch=200, concurrency=200),
    )
    try:
        started = time.process_time()
        done = 0
        while done < deliveries:
            taken = await worker.run_once()
            if not taken:
                raise SystemExit(f"only {done} of {deliveries} deliveries were claimed")
            done += taken
        return (time.process_time() - started) / done * 1e6
    finally:
        await sender.aclose()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    figures = [one_run(args.deliveries) for _ in range(args.repeat)]
    print(
        f"worker cycle, {args.deliveries:,} deliveries, {args.repeat} runs: "
        f"min {min(figures):.1f} µs, median {statistics.median(figures):.1f} µs of CPU "
        f"per delivery ({', '.join(f'{f:.0f}' for f in figures)})"
    )


if __name__ == "__main__":
    main()
