"""The reliability suite: `reconciler serve` under injected faults, on SQLite and on
PostgreSQL.

Thousands of deliveries go to a receiver that answers slowly, hangs, resets
connections, bursts 500s, storms 429s with Retry-After, rejects, and sends huge,
binary and endless bodies (tests/support/faulty_receiver.py), while the dispatcher is
SIGKILLed at seeded moments and restarted. Then the receiver behaves, the queue
drains, and the database and the receiver must agree: every accepted event has
all its deliveries, each delivered or failed with its reason; nothing is left
pending; a delivery reaches the receiver only ever under its own webhook-id; and
the dispatcher's memory stays bounded. A hanging receiver holds one slot of the
dispatcher per request, never more than its webhook's max_in_flight, and healthy
webhooks of its organization and of another are all delivered meanwhile.

The seed comes from RECONCILER_RELIABILITY_SEED, else a fresh one; it is printed
(pytest shows it with a failure) and named in every failure message.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.store.queue import EXCERPT_LIMIT
from tests.support.faulty_receiver import STREAM_CAP, Fault, FaultyReceiver
from tests.support.helpers_state import bearer_at, definition, run_cli, write_definition
from tests.support.receiver import DEADLINE, Recorded
from tests.support.serve_process import Server, eventually, rows

pytestmark = pytest.mark.reliability

ORG = "acme"
VIOLATION = "new_rule_violation"
DEFICIT = "reserved_instance_deficit"
BODY = {"event_id": "{{event_id}}", "webhook": "{{webhook}}"}
# Retries fast enough to happen within the test: five, over about three seconds.
FAST_RETRY = {"schedule": ["100ms", "250ms", "500ms", "1s", "1s"], "jitter": 0.3}
# The serve process's peak resident memory stays under this while it is answered
# endless streams and 64 MiB bodies; reading even a few of those whole would pass it.
MEMORY_BOUND_KB = 256 * 1024
POSTERS = 8  # events posted at once: the intake commits them together

# -- the run under faults and SIGKILLs ------------------------------------------------

WEBHOOKS = ("alpha", "bravo", "charlie", "delta")
EVENTS = 750  # 3,000 deliveries
KILLS = 5
KILL_GAP = (100, 800)  # steps (see Chaos) between a (re)start and its SIGKILL
PHASE_DEADLINE = 90.0  # the longest any phase of the run may take (each takes seconds)
MIX = {
    Fault.OK: 30,
    Fault.SLOW: 12,
    Fault.HANG: 3,
    Fault.RESET: 7,
    Fault.ERROR_BURST: 6,
    Fault.STORM: 2,
    Fault.REJECT: 2,
    Fault.HUGE: 8,
    Fault.BINARY: 10,  # with NUL bytes, which PostgreSQL text cannot hold
    Fault.ENDLESS: 8,
}


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def seed() -> int:
    chosen = os.environ.get("RECONCILER_RELIABILITY_SEED")
    value = int(chosen) if chosen else random.SystemRandom().randrange(2**32)
    print(f"reliability seed {value} (RECONCILER_RELIABILITY_SEED={value} replays it)")
    return value


class Chaos:
    """`reconciler serve` on one state, SIGKILLed at seeded moments and restarted.

    Progress is counted in steps: a request arriving at the receiver, or an event
    accepted by the intake. The n-th SIGKILL comes gaps[n] steps after the running
    process started, sent by the thread that took the step, whatever the process is
    doing then: taking events (the posts in flight are cut), sending, recording.
    """

    def __init__(
        self, root: Path, state: str, receiver: FaultyReceiver, seed: int, *args: str
    ) -> None:
        self.root = root
        self.state = state
        self.receiver = receiver
        self.seed = seed
        self.args = args
        rng = random.Random(f"kills-{seed}")
        self.gaps = [rng.randint(*KILL_GAP) for _ in range(KILLS)]
        self.servers: list[Server] = []
        self.peaks_kb: list[int] = []  # each killed process's peak resident memory
        self.kills = 0
        self._lock = threading.Lock()
        self._current: Server | None = None
        self._steps = 0  # since the current process started
        receiver.on_request(lambda _: self.step())

    def start(self) -> Server:
        server = Server(self.root, self.state, len(self.servers), self.args)
        self.servers.append(server)  # stopped by the test, even if never ready
        server.wait_ready()
        with self._lock:
            self._current, self._steps = server, 0
        return server

    def step(self) -> None:
        with self._lock:
            victim = self._current
            if victim is None or self.kills == len(self.gaps):
                return
            self._steps += 1
            if self._steps < self.gaps[self.kills]:
                return
            self._current = None
            self.kills += 1
        try:
            self.peaks_kb.append(victim.memory_kb())
        finally:
            victim.process.kill()

    def running(self) -> Server:
        """The live process. After a SIGKILL: check what the dead one left in the
        queue, then start the next."""
        with self._lock:
            current = self._current
        if current is not None:
            assert current.process.poll() is None, f"serve died, not by a SIGKILL{self}"
            return current
        victim = self.servers[-1]
        assert victim.wait() == -signal.SIGKILL, f"serve {victim.number} was not killed{self}"
        check_nothing_stuck(self.state, self)
        return self.start()

    def finish_kills(self) -> Server:
        """Restart after each SIGKILL until all of them happened; the last process
        goes on running."""

        def all_done() -> Server | None:
            server = self.running()
            return server if self.kills == len(self.gaps) else None

        return eventually(all_done, f"{len(self.gaps)} SIGKILLs", self, PHASE_DEADLINE)

    def wait_for(self, condition: Callable[[str], bool], what: str) -> None:
        """Poll `condition(state)` until it holds, within PHASE_DEADLINE."""
        eventually(lambda: condition(self.state), what, self, PHASE_DEADLINE)

    def __str__(self) -> str:
        counts = rows(self.state, "SELECT status, count(*) FROM deliveries GROUP BY status")
        tails = "".join(str(server) for server in self.servers[-2:])
        return (
            f"\n(seed {self.seed}: RECONCILER_RELIABILITY_SEED={self.seed} replays it; "
            f"SIGKILLs after {self.gaps} steps, {self.kills} done; "
            f"deliveries {dict(counts)}; the receiver saw {len(self.receiver.requests())} "
            f"requests){tails}"
        )


@pytest.fixture
def faulty(seed: int) -> Iterator[FaultyReceiver]:
    with FaultyReceiver(seed, MIX) as running:
        yield running
        assert not running.errors, running.errors


def test_thousands_of_events_through_faults_and_sigkills_lose_nothing(
    tmp_path: Path, state: str, faulty: FaultyReceiver, seed: int
) -> None:
    apply(tmp_path, state, {name: fast_webhook(faulty.url(f"/{name}")) for name in WEBHOOKS})
    headers = bearer_at(state, ORG)
    chaos = Chaos(tmp_path, state, faulty, seed, "--concurrency", "64")
    try:
        chaos.start()
        posted = [f"evt-{i:05d}" for i in range(EVENTS)]
        accepted, interrupted = post_through_kills(chaos, headers, posted)
        last = chaos.finish_kills()
        # Every delivery meets the misbehaving receiver at least once; then it behaves.
        chaos.wait_for(all_tried, "every delivery tried")
        faulty.behave()
        chaos.wait_for(queue_is_quiet, "the queue drained")
        chaos.peaks_kb.append(last.memory_kb())

        # Every event was accepted in the end: one whose answer was lost to a SIGKILL
        # was posted again, as a client would, and is there exactly once.
        assert sorted(accepted) == posted, chaos
        for event_id, body in accepted.items():
            assert body["deliveries"] == len(WEBHOOKS), (event_id, body, str(chaos))
            assert not body["duplicate"] or event_id in interrupted, (event_id, str(chaos))
        stored = check_database(state, posted, WEBHOOKS, chaos)
        check_receiver(faulty, stored, chaos)

        served = faulty.served()
        assert set(served) == set(MIX), (served, str(chaos))  # every fault happened
        streamed = [a for a in faulty.answers() if a.fault in (Fault.HUGE, Fault.ENDLESS)]
        assert not [a for a in streamed if a.capped], f"an endless answer was read whole{chaos}"
        assert any(a.hung_up for a in streamed), chaos
        assert max(chaos.peaks_kb) < MEMORY_BOUND_KB, (chaos.peaks_kb, str(chaos))
        assert chaos.kills == KILLS and len(chaos.servers) == KILLS + 1, chaos
        # A restarted process takes the dead one's leases back at once.
        assert any("took back" in server.log() for server in chaos.servers[1:]), chaos
        assert last.process.poll() is None, chaos
        for server in chaos.servers:
            assert "Traceback" not in server.log(), server
    finally:
        for server in chaos.servers:
            server.stop()


def post_through_kills(
    chaos: Chaos, headers: dict[str, str], event_ids: list[str]
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Post every event, POSTERS at once, to whichever process is running. A post
    cut by a SIGKILL is posted again to the next process. Returns the 202 bodies
    and the ids whose first post was cut."""
    accepted: dict[str, dict[str, Any]] = {}
    cut: defaultdict[str, int] = defaultdict(int)
    waiting = list(event_ids)
    with (
        httpx.Client(timeout=DEADLINE, headers=headers) as client,
        ThreadPoolExecutor(POSTERS, thread_name_prefix="poster") as pool,
    ):
        while waiting:
            batch, waiting = waiting[:POSTERS], waiting[POSTERS:]
            url = chaos.running().url
            answers = pool.map(functools.partial(post_and_step, chaos, client, url), batch)
            for event_id, response in zip(batch, answers, strict=True):
                if response is None:
                    cut[event_id] += 1
                    assert cut[event_id] <= KILLS, f"{event_id} never got an answer{chaos}"
                    waiting.append(event_id)
                    continue
                assert response.status_code == 202, f"{response.text}{chaos}"
                accepted[event_id] = response.json()
                assert accepted[event_id]["event_id"] == event_id, chaos
    return accepted, set(cut)


def post_and_step(
    chaos: Chaos, client: httpx.Client, url: str, event_id: str
) -> httpx.Response | None:
    response = post_event(client, url, event_id)
    if response is not None and response.status_code == 202:
        chaos.step()
    return response


def post_event(
    client: httpx.Client,
    url: str,
    event_id: str,
    event: str = VIOLATION,
    organization: str = ORG,
) -> httpx.Response | None:
    """POST one event; None when the connection failed (the process was killed)."""
    try:
        return client.post(
            f"{url}/v1/events",
            json={"type": event, "organization": organization, "name": "rule", "id": event_id},
        )
    except httpx.TransportError:
        return None


# -- what the database and the receiver say -------------------------------------------


@dataclass(frozen=True)
class Stored:
    """One delivery as the database has it, with its attempts in order."""

    id: str
    event_id: str
    webhook: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    log: tuple[tuple[int, str, int | None, str | None], ...]  # number, outcome, status, error


def stored_deliveries(state: str) -> dict[str, Stored]:
    logs: defaultdict[str, list[tuple[int, str, int | None, str | None]]] = defaultdict(list)
    for delivery, number, outcome, code, error in rows(
        state, "SELECT delivery_id, number, outcome, status, error FROM attempts ORDER BY id"
    ):
        logs[delivery].append((number, outcome, code, error))
    return {
        row[0]: Stored(*row, log=tuple(logs[row[0]]))
        for row in rows(
            state,
            "SELECT id, event_id, webhook, status, attempts, last_status, last_error "
            "FROM deliveries",
        )
    }


def all_tried(state: str) -> bool:
    return not rows(state, "SELECT id FROM deliveries WHERE attempts = 0")


def queue_is_quiet(state: str) -> bool:
    return not rows(state, "SELECT id FROM deliveries WHERE status IN ('pending', 'in_flight')")


def check_nothing_stuck(state: str, context: object) -> None:
    """Every delivery that is not final has a due time (pending) or a lease that
    runs out (in flight): a dispatcher will take it up."""
    for delivery, status, due, owner, expires in rows(
        state,
        "SELECT id, status, due_at, lease_owner, lease_expires FROM deliveries "
        "WHERE status IN ('pending', 'in_flight')",
    ):
        if status == "pending":
            assert due is not None, f"{delivery} is pending with no due time{context}"
        else:
            assert owner and expires is not None, f"{delivery} in flight, no lease{context}"


def check_database(
    state: str, event_ids: Iterable[str], webhooks: Iterable[str], context: object
) -> dict[str, Stored]:
    """Every event, and one delivery per webhook for each, all final with a consistent
    attempt log; returns the deliveries by id."""
    expected_events = set(event_ids)
    events = dict(rows(state, "SELECT id, deliveries FROM events"))
    assert set(events) == expected_events, (
        f"events missing: {sorted(expected_events - set(events))[:5]}, "
        f"unexpected: {sorted(set(events) - expected_events)[:5]}{context}"
    )
    names = set(webhooks)
    assert set(events.values()) == {len(names)}, context
    stored = stored_deliveries(state)
    pairs = {(d.event_id, d.webhook) for d in stored.values()}
    assert len(pairs) == len(stored), f"an event has two deliveries to one webhook{context}"
    missing = {(e, w) for e in expected_events for w in names} - pairs
    assert not missing, f"{len(missing)} deliveries missing: {sorted(missing)[:5]}{context}"
    assert len(stored) == len(expected_events) * len(names), context
    problems = [(p, d) for d in stored.values() if (p := attempt_log_problem(d))]
    assert not problems, f"{len(problems)} deliveries wrong, e.g. {problems[:3]}{context}"
    return stored


def attempt_log_problem(delivery: Stored) -> str | None:
    """What is wrong with a delivery's end and attempt log, if anything: it must be
    final, with its reason; attempts numbered 1..n, retries, then the final one."""
    if delivery.status not in ("delivered", "failed"):
        return "not final"
    if not delivery.log:
        return "no attempt recorded"
    if [number for number, *_ in delivery.log] != list(range(1, delivery.attempts + 1)):
        return "attempts not numbered 1..n"
    *retries, (_, outcome, code, error) = delivery.log
    if any(attempt[1] != "retry" for attempt in retries) or outcome != delivery.status:
        return "attempts other than retries, then the final one"
    if (code, error) != (delivery.last_status, delivery.last_error):
        return "the last attempt is not the delivery's last status and error"
    if delivery.status == "delivered" and not (code is not None and 200 <= code < 300):
        return "delivered without a 2xx"
    if delivery.status == "failed" and not error:
        return "failed without a reason"
    if delivery.status == "failed" and code != 400 and "retries exhausted" not in (error or ""):
        return "failed, but neither by a 400 nor by exhausted retries"
    return None


def check_receiver(receiver: FaultyReceiver, stored: dict[str, Stored], context: object) -> None:
    """Each request carries the webhook-id of the delivery it is (its body names the
    event and the webhook); every delivery arrived; each delivered one got a 2xx."""
    answers = receiver.answers()
    seen: defaultdict[str, list[Recorded]] = defaultdict(list)
    for request in receiver.requests():
        webhook_id = request.header("webhook-id") or ""
        delivery = stored.get(webhook_id)
        assert delivery is not None, f"a request with an unknown webhook-id {webhook_id!r}{context}"
        body = request.json()
        # One id, one delivery: a request under a delivery's id is that delivery's.
        assert (request.path, body["event_id"], body["webhook"]) == (
            f"/{delivery.webhook}",
            delivery.event_id,
            delivery.webhook,
        ), (webhook_id, request.target, body, str(context))
        seen[webhook_id].append(request)
    lost = set(stored) - set(seen)
    assert not lost, f"{len(lost)} never reached the receiver: {sorted(lost)[:5]}{context}"
    for delivery in stored.values():
        statuses = [answers[request.number].status for request in seen[delivery.id]]
        if delivery.status == "delivered":
            assert any(s is not None and 200 <= s < 300 for s in statuses), (
                f"{delivery} is delivered, but the receiver answered {statuses}{context}"
            )
    assert any(len(requests) > 1 for requests in seen.values()), context  # retries, kills


# -- one slot per hanging request ---------------------------------------------------------

HUNG = 6  # requests the receiver never answers
SLOTS = 16  # the dispatcher's concurrency
STREAMS = 300  # events, each to an endless answer, a 64 MiB answer and a plain 200


def test_hanging_and_endless_receivers_cost_one_slot_each_not_the_process(
    tmp_path: Path, state: str
) -> None:
    with FaultyReceiver(0) as receiver:
        receiver.always("/stuck", Fault.HANG)
        receiver.always("/endless", Fault.ENDLESS)
        receiver.always("/huge", Fault.HUGE)
        apply(
            tmp_path,
            state,
            {
                # Never answered, waited for as long as a definition allows.
                "stuck": {
                    "event": DEFICIT,
                    "url": receiver.url("/stuck"),
                    "timeout": "60s",
                    "retry": {"schedule": []},
                },
                **{name: fast_webhook(receiver.url(f"/{name}")) for name in ("endless", "huge")},
                "fine": fast_webhook(receiver.url("/fine")),
            },
        )
        headers = bearer_at(state, ORG)
        server = Server(tmp_path, state, 0, ("--concurrency", str(SLOTS)))
        try:
            server.wait_ready()
            with httpx.Client(timeout=DEADLINE, headers=headers) as client:
                post_all(client, server, [f"stuck-{i}" for i in range(HUNG)], DEFICIT)
                eventually(lambda: receiver.open_count(Fault.HANG) == HUNG, "hung requests", server)
                post_all(client, server, [f"evt-{i:04d}" for i in range(STREAMS)])

            def all_others_delivered() -> bool:
                counts = dict(
                    rows(
                        state,
                        "SELECT status, count(*) FROM deliveries WHERE webhook <> 'stuck' "
                        "GROUP BY status",
                    )
                )
                return counts == {"delivered": 3 * STREAMS}

            eventually(all_others_delivered, "every other delivery delivered", server)
            peak_kb = server.memory_kb()
            # The hung requests held their slots all along, and hold them still.
            assert receiver.open_count(Fault.HANG) == HUNG, server
            stuck = rows(state, "SELECT status FROM deliveries WHERE webhook = 'stuck'")
            assert stuck == [("in_flight",)] * HUNG, server
            assert server.process.poll() is None, server
        finally:
            server.stop()

    assert peak_kb < MEMORY_BOUND_KB, f"serve peaked at {peak_kb} kB{server}"
    streamed = [a for a in receiver.answers() if a.fault in (Fault.HUGE, Fault.ENDLESS)]
    # One request per delivery, or more where a 1 s timeout on a loaded machine made
    # the dispatcher try again (with the same webhook-id): every delivery was streamed.
    numbers = {a.number for a in streamed}
    ids = {r.header("webhook-id") for r in receiver.requests() if r.number in numbers}
    assert len(ids) == 2 * STREAMS
    # The dispatcher hung up on every one, far before its end (or the cap).
    assert all(a.hung_up and not a.capped for a in streamed), server
    assert all(a.body_bytes < STREAM_CAP for a in streamed)
    # Every delivery kept an excerpt of what it was streamed, cut at the limit; an
    # attempt a loaded machine timed out early keeps less, or none.
    excerpts = rows(
        state,
        "SELECT d.id, a.response_excerpt FROM attempts a JOIN deliveries d "
        "ON d.id = a.delivery_id WHERE d.webhook IN ('endless', 'huge') "
        "AND a.response_excerpt IS NOT NULL",
    )
    full = {delivery for delivery, excerpt in excerpts if len(excerpt.encode()) == EXCERPT_LIMIT}
    assert len(full) == 2 * STREAMS
    assert all(len(excerpt.encode()) <= EXCERPT_LIMIT for _, excerpt in excerpts)


# -- a hanging endpoint beside healthy ones ---------------------------------------------

CAP = 4  # the hanging webhook's max_in_flight
BACKLOG = 120  # its deliveries queued first: many times its cap
HEALTHY = 150  # events to each healthy webhook, queued behind that backlog


def test_a_hanging_endpoint_keeps_to_its_cap_while_healthy_webhooks_are_all_delivered(
    tmp_path: Path, state: str
) -> None:
    """The hanging webhook's backlog is queued first, many times its max_in_flight;
    then events for a healthy webhook of the same organization and one of another.
    Every healthy delivery arrives while the hanging endpoint has been sent exactly
    its cap of requests, each a first attempt (its timeout, the longest a definition
    allows, has not let any be sent again), and the rest of its backlog waits
    untried: the healthy ones went through the slots it could not take."""
    with FaultyReceiver(0) as receiver:
        receiver.always("/stuck", Fault.HANG)
        apply(
            tmp_path,
            state,
            {
                "stuck": {
                    "event": DEFICIT,
                    "url": receiver.url("/stuck"),
                    "timeout": "60s",
                    "max_in_flight": CAP,
                },
                "fine": fast_webhook(receiver.url("/fine")),
                "globex/fine": fast_webhook(receiver.url("/globex-fine")),
            },
        )
        headers = bearer_at(state, ORG, "globex")
        # Fewer slots than the backlog and the healthy events: the cap, not a spare
        # slot for everyone, is what lets the healthy ones through.
        server = Server(tmp_path, state, 0, ("--concurrency", str(2 * CAP)))
        try:
            server.wait_ready()
            with httpx.Client(timeout=DEADLINE, headers=headers) as client:
                post_all(client, server, [f"stuck-{i:04d}" for i in range(BACKLOG)], DEFICIT)
                eventually(lambda: receiver.open_count(Fault.HANG) >= CAP, "hung requests", server)
                healthy = [f"evt-{i:04d}" for i in range(HEALTHY)]
                post_all(client, server, healthy)
                post_all(client, server, healthy, organization="globex")

            def healthy_delivered() -> bool:
                counts = rows(
                    state,
                    "SELECT organization, webhook, status, count(*) FROM deliveries "
                    "WHERE webhook = 'fine' GROUP BY organization, webhook, status",
                )
                return sorted(counts) == [
                    ("acme", "fine", "delivered", HEALTHY),
                    ("globex", "fine", "delivered", HEALTHY),
                ]

            eventually(healthy_delivered, "every healthy delivery delivered", server)
            stuck = receiver.requests("/stuck")
            attempts = rows(
                state,
                "SELECT d.status, d.attempts, count(*) FROM deliveries d "
                "WHERE d.webhook = 'stuck' GROUP BY d.status, d.attempts",
            )
            assert server.process.poll() is None, server
        finally:
            server.stop()

    # The hanging endpoint was sent its cap of requests, one per delivery, and no more.
    assert len(stuck) == CAP, (len(stuck), str(server))
    assert len({r.header("webhook-id") for r in stuck}) == CAP, server
    # Those are out still (none timed out and was retried); the rest were never tried.
    assert sorted(attempts) == [("in_flight", 0, CAP), ("pending", 0, BACKLOG - CAP)], (
        attempts,
        str(server),
    )
    # Each healthy event reached its own organization's webhook exactly once.
    for path in ("/fine", "/globex-fine"):
        ids = [r.json()["event_id"] for r in receiver.requests(path)]
        assert sorted(set(ids)) == healthy, (path, str(server))


def post_all(
    client: httpx.Client,
    server: Server,
    event_ids: list[str],
    event: str = VIOLATION,
    organization: str = ORG,
) -> None:
    """Post every event, POSTERS at once; each must be accepted."""
    post = functools.partial(post_event, client, server.url, event=event, organization=organization)
    with ThreadPoolExecutor(POSTERS, thread_name_prefix="poster") as pool:
        for response in pool.map(post, event_ids):
            assert response is not None and response.status_code == 202, server


# -- setting up ---------------------------------------------------------------------------


def fast_webhook(url: str) -> dict[str, Any]:
    return {"url": url, "body": BODY, "timeout": "1s", "retry": FAST_RETRY}


def apply(root: Path, state: str, webhooks: dict[str, dict[str, Any]]) -> None:
    """Write one definition per name, `name` for ORG's or `organization/name` (the
    fields over `definition`'s defaults), and apply them with the CLI."""
    folder = root / "webhooks.d"
    for key, fields in webhooks.items():
        organization, _, name = key.rpartition("/")
        write_definition(folder, organization or ORG, definition(name, **fields))
    result = run_cli(
        ["apply", str(folder), "--auto-approve", "--actor", "it", "--state", state], root
    )
    assert result.returncode == 0, result.stdout + result.stderr
