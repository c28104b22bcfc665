"""Fault injection between `reconciler serve` processes and the real PostgreSQL server.

Each dispatcher reaches the server directly or through a TCP proxy of the test's own
(pg_proxy.py, on loopback) that adds latency, stalls a link right after a claim, or
holds back the answer to a claim's commit. Backends are terminated with
pg_terminate_backend, only those of this test's dispatchers (their application_name,
unique per test, in this run's database). Dispatchers are SIGKILLed and not restarted.

What holds, whatever the fault: nothing accepted is lost; no delivery is sent by two
dispatchers while a lease holds (each webhook-id reaches the receiver once); rows a
stalled transaction locked are released within the idle-in-transaction deadline;
/readyz turns unready within seconds; intake answers within its deadline (202, or 503
"outcome unknown" in the shape of every refusal, never a 500 or a hang); takeover
happens within the lease of the webhook's timeout. Real processes need real time:
bounds are generous, never exact.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from reconciler.dispatch import failures
from reconciler.dispatch.readiness import PROBE_AFTER, PROBE_WAIT
from reconciler.store.queue import LEASE_MARGIN
from tests.support.fault_fleet import Fleet
from tests.support.receiver import DEADLINE, hang
from tests.support.serve_process import eventually, rows

pytestmark = [pytest.mark.postgres, pytest.mark.reliability]

TIMEOUT = 1.0  # the webhook's timeout
LEASE = TIMEOUT + LEASE_MARGIN  # its deliveries' lease
IDLE = 3  # the states' idle_in_transaction_session_timeout here, in seconds
INTAKE_DEADLINE = 3.0  # serve --intake-deadline here
SLACK = 10.0  # what a loaded machine may add to any bound, in seconds
BURSTS = 4  # times every backend of the dispatchers is terminated


@pytest.fixture
def fleet(tmp_path: Path, postgres_url: str, postgres_database: str) -> Iterator[Fleet]:
    made = Fleet(
        tmp_path, postgres_url, timeout=TIMEOUT, idle=IDLE, intake_deadline=INTAKE_DEADLINE
    )
    try:
        yield made
    finally:
        made.close()


# -- a link stalled right after a claim -------------------------------------------------


def test_a_link_stalled_after_a_claim_wedges_nothing_and_sends_nothing_twice(
    fleet: Fleet,
) -> None:
    proxy = fleet.proxy()
    stalled = fleet.start(proxy)
    assert eventually(lambda: fleet.ready(stalled), "the dispatcher ready", fleet)
    proxy.stall_after_claim()
    fleet.add_events(20)
    assert proxy.tripped.wait(DEADLINE), f"no claim went through the proxy{fleet}"
    tripped = time.monotonic()

    # Intake answers within its deadline: the outcome is unknown, and says so.
    response, took = fleet.post(stalled, "posted-during-the-stall")
    fleet.refused(response)
    assert response.json()["error"] == failures.unknown(INTAKE_DEADLINE)
    assert took < INTAKE_DEADLINE + SLACK, took

    # /readyz turns unready within seconds (a probe that does not come back).
    eventually(
        lambda: not fleet.ready(stalled),
        "the stalled dispatcher unready",
        fleet,
        timeout=PROBE_AFTER + PROBE_WAIT + SLACK,
    )

    # The server ends the idle transaction: its rows are unlocked, and still pending.
    def lockable() -> bool:
        ((count,),) = rows(
            fleet.state,
            "SELECT count(*) FROM (SELECT id FROM deliveries WHERE status = 'pending' "
            "FOR UPDATE SKIP LOCKED) free",
        )
        return bool(count == 20)

    eventually(lockable, "the claimed rows released", fleet, timeout=IDLE + SLACK)
    assert time.monotonic() - tripped < IDLE + SLACK

    # Another dispatcher delivers them, and takes the client's retry of the event
    # whose outcome was unknown.
    other = fleet.start()
    fleet.accept(other, "posted-during-the-stall")
    fleet.all_delivered(21)

    # The link comes back: the stalled claim fails there, and nothing is sent twice.
    proxy.release()
    eventually(lambda: fleet.ready(stalled), "the stalled dispatcher ready again", fleet)
    fleet.all_delivered(21)
    fleet.assert_each_sent_once(21)


# -- a claim committed, its answer late ------------------------------------------------


def test_a_claim_whose_commit_came_back_after_its_lease_is_never_sent(fleet: Fleet) -> None:
    proxy = fleet.proxy()
    late = fleet.start(proxy)
    assert eventually(lambda: fleet.ready(late), "the dispatcher ready", fleet)
    proxy.late_commit_after_claim(LEASE + 3)
    fleet.add_events(10)
    assert proxy.tripped.wait(DEADLINE), f"no claim committed through the proxy{fleet}"
    tripped = time.monotonic()
    eventually(  # the server committed the claim: all ten leased to `late`
        lambda: rows(fleet.state, "SELECT DISTINCT status FROM deliveries") == [("in_flight",)],
        "the claim committed",
        fleet,
    )

    # Another dispatcher takes them over when their lease runs out, not before.
    fleet.start()
    fleet.all_delivered(10)
    arrived = [r.arrived - tripped for r in fleet.receiver.requests()]
    assert min(arrived) > LEASE - 1, arrived  # the lease held
    assert max(arrived) < LEASE + SLACK, arrived  # taken over within it, and a poll

    # The claim's answer reaches its dispatcher after the lease: it sends nothing.
    eventually(
        lambda: late.log().count("lease too short to send") >= 10,
        "the late dispatcher putting its 10 claims back unsent",
        fleet,
        timeout=LEASE + 3 + SLACK,
    )
    time.sleep(0.5)  # anything it would wrongly send would be on its way by now
    fleet.assert_each_sent_once(10)
    assert fleet.statuses() == Counter({"delivered": 10})


# -- latency, then a database slower than intake's deadline ----------------------------


def test_under_latency_intake_answers_within_its_deadline_and_loses_nothing(
    fleet: Fleet,
) -> None:
    proxy = fleet.proxy()
    server = fleet.start(proxy)
    proxy.latency = 0.02  # each way, every chunk
    for n in range(5):
        response, took = fleet.post(server, f"slow-{n}")
        assert response.status_code == 202, response.text
        assert took < INTAKE_DEADLINE + SLACK

    proxy.latency = INTAKE_DEADLINE  # a commit now takes longer than the deadline
    response, took = fleet.post(server, "slower")
    fleet.refused(response)
    assert response.json()["error"] == failures.unknown(INTAKE_DEADLINE)
    assert took < INTAKE_DEADLINE + SLACK, took

    proxy.latency = 0.0
    fleet.accept(server, "slower")  # the same id again: queued once, whichever stored it
    fleet.all_delivered(6)
    fleet.assert_each_sent_once(6)


# -- backends terminated ----------------------------------------------------------------


def test_terminated_backends_cost_retries_never_an_event_or_a_500(
    fleet: Fleet, postgres_database: str
) -> None:
    servers = [fleet.start(), fleet.start()]
    stop = threading.Event()
    killed: list[int] = []

    def terminate() -> None:
        """Every backend of the two dispatchers, BURSTS times, a second apart."""
        with psycopg.connect(postgres_database, autocommit=True, connect_timeout=10) as admin:
            for _ in range(BURSTS):
                if stop.wait(1.0):
                    return
                found = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND datname = current_database() "
                    "AND pid <> pg_backend_pid()",
                    (fleet.app,),
                ).fetchall()
                killed.append(len(found))

    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    answers: Counter[int] = Counter()
    deadline = time.monotonic() + DEADLINE * 2
    try:
        for n in range(40):
            server = servers[n % 2]
            event_id = f"evt-{n:03d}"
            while True:
                response, took = fleet.post(server, event_id)
                answers[response.status_code] += 1
                assert took < INTAKE_DEADLINE + SLACK, took
                if response.status_code == 202:
                    break
                fleet.refused(response)  # never a 500, never plain text
                assert time.monotonic() < deadline, f"{event_id} never accepted{fleet}"
                time.sleep(0.1)
            time.sleep(0.05)  # spread over the bursts
    finally:
        stop.set()
        killer.join(DEADLINE)
    assert sum(killed) > 0, "no backend was terminated"
    assert set(answers) <= {202, 503}, answers
    fleet.all_delivered(40)
    fleet.assert_each_sent_once(40)


# -- SIGKILL, no restart ------------------------------------------------------------------


def test_a_killed_dispatchers_deliveries_are_taken_over_within_the_lease(
    fleet: Fleet,
) -> None:
    fleet.receiver.script("/a", hang(0.3))  # requests stay in flight a while
    victim, survivor = fleet.start(), fleet.start()
    for n in range(30):
        fleet.accept(victim, f"evt-{n:03d}")  # handed to the victim's own workers
    fleet.receiver.wait_for(5)
    victim.process.kill()
    killed = time.monotonic()
    victim.wait()
    held = {
        row[0]
        for row in rows(
            fleet.state,
            "SELECT id FROM deliveries WHERE status = 'in_flight' AND lease_owner LIKE %s",
            (f"%:{victim.pid}:%",),
        )
    }
    assert held, f"the killed dispatcher held nothing{fleet}"

    def taken_over() -> bool:
        ((left,),) = rows(
            fleet.state,
            "SELECT count(*) FROM deliveries WHERE status = 'in_flight' AND lease_owner LIKE %s",
            (f"%:{victim.pid}:%",),
        )
        return bool(left == 0)

    eventually(taken_over, "the survivor taking the dead one's deliveries", fleet, timeout=LEASE)
    took = time.monotonic() - killed
    assert took < LEASE, took
    fleet.all_delivered(30)
    assert "took back" in survivor.log()  # noticed while running, not at a start
    # Only what the dead one had in flight may have reached the receiver twice.
    twice = {d for d, n in fleet.sent().items() if n > 1}
    assert twice <= held, twice - held
    assert len(fleet.sent()) == 30
