"""Integration on PostgreSQL: several `reconciler serve` processes sharing one state,
one killed with SIGKILL mid-run; two keeping a webhook to its rate_limit together;
applies serializing on the advisory lock; concurrent migrations.

Real processes, real HTTP on loopback, the real server. Every wait polls a condition
under a deadline and fails with what it waited for (and the servers' logs); every
child process is killed and reaped in a `finally`.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest

from reconciler.store.postgres import split_url
from reconciler.store.postgres_migrations import MIGRATIONS
from tests.support.helpers_state import (
    RECONCILER,
    REPO,
    cli_env,
    definition,
    run_cli,
    write_definition,
)
from tests.support.receiver import DEADLINE, Receiver, Recorded, hang
from tests.support.serve_process import Server, eventually, rows

pytestmark = pytest.mark.postgres

ORG = "acme"
EVENT = "new_rule_violation"
WEBHOOKS = ("a", "b", "c")
EVENTS = 150
KILL_AFTER = 120  # requests seen by the receiver when one server is killed (of 450)
HOLD = 0.03  # the receiver holds every request this long, so requests are in flight
BODY = {"event_id": "{{event_id}}", "webhook": "{{webhook}}"}


# -- helpers ----------------------------------------------------------------------


@functools.cache
def tokens_command_exists() -> bool:
    """Bearer tokens are being added to the HTTP API; once `reconciler tokens` exists,
    the API wants one on every endpoint but /healthz."""
    return run_cli(["tokens", "--help"], REPO).returncode == 0


def api_headers(state: str, cwd: Path) -> dict[str, str]:
    """An admin token for ORG if the CLI can make one; no header otherwise."""
    if not tokens_command_exists():
        return {}
    made = run_cli(["tokens", "create", "--role", "admin", "--org", ORG, "--state", state], cwd)
    assert made.returncode == 0, made.stdout + made.stderr
    return {"Authorization": f"Bearer {token_in(made.stdout)}"}


def token_in(output: str) -> str:
    """The secret printed by `tokens create`: a JSON "token" field, else the `rcn_...`
    word, else the longest word that looks like a token."""
    try:
        data = json.loads(output)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("token"), str):
        return data["token"]
    found = re.search(r"\brcn_[A-Za-z0-9_\-]{20,}", output)
    if found:
        return found.group(0)
    words = re.findall(r"[A-Za-z0-9_\-.~+/=]{20,}", output)
    assert words, f"no token in the output of `reconciler tokens create`: {output!r}"
    return max(words, key=len)


class Cluster:
    """Definitions, one PostgreSQL state, and the serve processes started on it."""

    def __init__(self, root: Path, state: str) -> None:
        self.root = root
        self.state = state
        self.folder = root / "webhooks.d"
        self.servers: list[Server] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli([*args, "--state", self.state], self.root)

    def start(self, count: int, *args: str) -> list[Server]:
        """Start `count` servers at once; return when every one is ready."""
        started = []
        for _ in range(count):
            server = Server(self.root, self.state, len(self.servers), args)
            self.servers.append(server)  # stopped at teardown, even if never ready
            started.append(server)
        for server in started:
            server.wait_ready()
        return started

    def logs(self) -> str:
        return "".join(str(server) for server in self.servers)

    def __str__(self) -> str:
        return self.logs()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, postgres_url)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(default=hang(HOLD)) as running:
        yield running
        assert not running.errors, running.errors


# -- three dispatchers, one killed ----------------------------------------------------


def test_three_dispatchers_share_the_queue_and_a_sigkill_loses_no_accepted_event(
    cluster: Cluster, receiver: Receiver
) -> None:
    for name in WEBHOOKS:
        write_definition(
            cluster.folder, ORG, definition(name, url=receiver.url(f"/{name}"), body=BODY)
        )
    applied = cluster.cli("apply", str(cluster.folder), "--auto-approve", "--actor", "it")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    headers = api_headers(cluster.state, cluster.root)
    servers = cluster.start(3, "--concurrency", "10")

    # Once the receiver has seen KILL_AFTER requests, SIGKILL the process that sent the
    # last one, while the receiver still holds it: that process has it in flight.
    victims: list[Server] = []
    kill_problems: list[str] = []
    killed = threading.Event()
    held: set[str] = set()  # what the killed process held, read just after the kill

    def kill_mid_run(request: Recorded) -> None:
        if request.number + 1 != KILL_AFTER:  # numbers are unique: this runs once
            return
        try:
            ((owner,),) = rows(
                cluster.state,
                "SELECT lease_owner FROM deliveries WHERE id = %s AND status = 'in_flight'",
                (request.header("webhook-id"),),
            )
            pid = int(owner.split(":")[1])  # host:pid:random
            (victim,) = [s for s in servers if s.pid == pid]
            victims.append(victim)  # before the kill: the poster may see it at once
            os.kill(victim.pid, signal.SIGKILL)
            held.update(
                row[0]
                for row in rows(
                    cluster.state,
                    "SELECT id FROM deliveries WHERE status = 'in_flight' AND lease_owner = %s",
                    (owner,),
                )
            )
        except Exception as exc:  # reported by the test, not lost in the receiver's thread
            kill_problems.append(f"{request.header('webhook-id')}: {exc!r}")
        finally:
            killed.set()

    receiver.on_request(kill_mid_run)

    # Events spread over the three servers in turn. A POST to the killed one fails; the
    # same event id is posted again to a live server, as a client would retry, and is
    # accepted there (duplicate: true when the killed process had stored it already).
    accepted: dict[str, int] = {}  # event id -> number of the server that took it
    duplicates = []
    with httpx.Client(timeout=DEADLINE, headers=headers) as client:
        for i in range(EVENTS):
            event_id = f"evt-{i:04d}"
            turn = i
            while True:
                live = [s for s in servers if s not in victims]
                server = live[turn % len(live)]
                try:
                    response = client.post(
                        f"{server.url}/v1/events",
                        json={"type": EVENT, "organization": ORG, "name": "r", "id": event_id},
                    )
                except httpx.TransportError:
                    assert server in victims, f"{event_id} to a live server failed{server}"
                    turn += 1
                    continue
                break
            assert response.status_code == 202, response.text
            body = response.json()
            assert (body["event_id"], body["deliveries"]) == (event_id, len(WEBHOOKS)), body
            if body["duplicate"]:
                duplicates.append(event_id)
            accepted[event_id] = server.number

    assert killed.wait(DEADLINE), f"the receiver never saw {KILL_AFTER} requests{cluster.logs()}"
    assert not kill_problems, kill_problems
    (victim,) = victims
    assert victim.wait() == -signal.SIGKILL
    assert len(accepted) * len(WEBHOOKS) > KILL_AFTER  # some requests were still to come
    assert set(accepted.values()) == {s.number for s in servers}
    assert set(duplicates) <= {e for e, n in accepted.items() if n != victim.number}

    # What the dead process held: the survivors on this host take it back while they
    # run (they look for dead owners every few seconds), long before its leases would
    # run out; a dispatcher restarted here would take back at its start what is left.
    assert held, f"the killed process held no delivery{victim}"
    survivors = [s for s in servers if s is not victim]

    def took_back() -> int:
        return sum(
            int(count)
            for server in cluster.servers
            for count in re.findall(r"took back (\d+) deliveries", server.log())
        )

    # The survivors, while they run, before anything is restarted: a dispatcher
    # started now would take back at its start what is left, and could be first.
    eventually(
        lambda: took_back() == len(held),
        f"the surviving dispatchers saying they took the dead one's {len(held)} deliveries back",
        cluster,
    )
    assert any("took back" in s.log() for s in survivors), cluster
    (restarted,) = cluster.start(1, "--concurrency", "10")  # finds nothing left to take

    def all_delivered() -> bool:
        counts = dict(rows(cluster.state, "SELECT status, count(*) FROM deliveries GROUP BY 1"))
        return counts == {"delivered": EVENTS * len(WEBHOOKS)}

    eventually(all_delivered, "every delivery delivered", cluster)
    assert took_back() == len(held)

    # In the database: each accepted event once, one delivery per webhook, delivered,
    # with a recorded 200.
    stored = rows(
        cluster.state,
        "SELECT d.id, d.event_id, d.webhook, d.status, d.last_status, "
        "(SELECT count(*) FROM attempts a WHERE a.delivery_id = d.id "
        " AND a.outcome = 'delivered' AND a.status = 200) "
        "FROM deliveries d",
    )
    assert sorted(row[0] for row in rows(cluster.state, "SELECT id FROM events")) == sorted(
        accepted
    )
    expected = {(event, webhook): delivery for delivery, event, webhook, *_ in stored}
    assert set(expected) == {(e, w) for e in accepted for w in WEBHOOKS}
    assert len(expected) == len(stored)
    for delivery, _, _, status, last_status, delivered_attempts in stored:
        assert (status, last_status, delivered_attempts) == ("delivered", 200, 1), delivery

    # At the receiver: every delivery arrived, always under its own webhook-id; a
    # delivery arrived twice only if the killed process had it in flight.
    sent: dict[tuple[str, str], list[str]] = defaultdict(list)
    for request in receiver.requests():
        body = request.json()
        assert request.path == f"/{body['webhook']}"
        sent[(body["event_id"], body["webhook"])].append(request.header("webhook-id") or "")
    lost = set(expected) - set(sent)
    assert not lost, f"{len(lost)} deliveries never reached the receiver: {sorted(lost)[:5]}"
    assert set(sent) == set(expected)
    for key, ids in sent.items():
        assert set(ids) == {expected[key]}, (key, ids)
    twice = {expected[key] for key, ids in sent.items() if len(ids) > 1}
    assert twice <= held, sorted(twice - held)
    # The request that triggered the kill was never answered: it was sent again.
    assert twice, "the kill should have left at least one request to send again"
    assert max(len(ids) for ids in sent.values()) == 2

    # The queue is shared: each process logs every attempt it made; every delivery's
    # success is logged, and what the killed process held was delivered by another.
    delivered_by: dict[str, set[int]] = defaultdict(set)
    for server in [*servers, restarted]:
        for found in re.finditer(r"attempt delivery=(\S+) .*? outcome=delivered", server.log()):
            delivered_by[found.group(1)].add(server.number)
    assert set(delivered_by) == set(expected.values())
    for delivery in held:
        assert delivered_by[delivery] - {victim.number}, (delivery, delivered_by[delivery])
    for server in [s for s in servers if s is not victim] + [restarted]:
        assert server.process.poll() is None, server
        assert "Traceback" not in server.log(), server


# -- a rate limit kept by two dispatchers together ---------------------------------------

RATE = 5  # the webhook's rate_limit, requests a second
RATED_EVENTS = 15  # three seconds' worth at RATE
# Arrival times are real: each request crosses two event loops and the loopback after
# its slot comes, a few milliseconds late (more on a busy machine), so a request sent
# late can share a one-second window with the RATE requests after it, and with one
# more if it is over one slot (1/RATE s) late. Two dispatchers that each kept to the
# rate alone put 8 to 10 into one window. Lateness never brings a request forward, so
# counted from the moment the first event was posted, no tolerance is needed.
WINDOW_TOLERANCE = 2


def test_two_dispatchers_together_keep_a_webhook_to_its_rate_limit(cluster: Cluster) -> None:
    with Receiver() as receiver:  # answers at once, records each arrival
        write_definition(
            cluster.folder,
            ORG,
            definition("slack", url=receiver.url("/slack"), body=BODY, rate_limit=f"{RATE}/s"),
        )
        applied = cluster.cli("apply", str(cluster.folder), "--auto-approve", "--actor", "it")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        headers = api_headers(cluster.state, cluster.root)
        servers = cluster.start(2, "--concurrency", "10")
        with httpx.Client(timeout=DEADLINE, headers=headers) as client:
            posted = time.monotonic()  # the receiver's clock; no slot comes before this
            for i in range(RATED_EVENTS):  # half to each dispatcher, as fast as they take them
                response = client.post(
                    f"{servers[i % 2].url}/v1/events",
                    json={"type": EVENT, "organization": ORG, "name": "r", "id": f"evt-{i:02d}"},
                )
                assert response.status_code == 202, response.text
        seen = receiver.wait_for(RATED_EVENTS, "/slack")
        assert not receiver.errors, receiver.errors

    assert len(seen) == RATED_EVENTS, f"some were sent twice{cluster}"
    assert {r.json()["event_id"] for r in seen} == {f"evt-{i:02d}" for i in range(RATED_EVENTS)}
    arrivals = sorted(r.arrived for r in seen)
    crowded = [
        [round(t - start, 3) for t in arrivals if start <= t < start + 1.0] for start in arrivals
    ]
    worst = max(crowded, key=len)
    assert len(worst) <= RATE + WINDOW_TOLERANCE, (
        f"{len(worst)} requests arrived within one second (at +s: {worst}); "
        f"the rate is {RATE}/s{cluster}"
    )
    # From the first post on, x seconds hold at most RATE * x + 1 slots: the n-th request
    # (from 0) arrives no earlier than n slots after it (a millisecond for rounding).
    since = [round(t - posted, 3) for t in arrivals]
    early = [(n, at) for n, at in enumerate(since) if at < n / RATE - 0.001]
    assert not early, f"requests ahead of their turn (n, +s): {early} of {since}{cluster}"
    # Both dispatchers sent: the rate was kept by the two together, not by one alone.
    for server in servers:
        assert re.search(r"outcome=delivered", server.log()), (
            f"serve {server.number} sent none{cluster}"
        )
        assert "Traceback" not in server.log(), server

    def all_delivered() -> bool:
        counts = dict(rows(cluster.state, "SELECT status, count(*) FROM deliveries GROUP BY 1"))
        return counts == {"delivered": RATED_EVENTS}

    eventually(all_delivered, "every delivery recorded as delivered", cluster)


# -- applies serialize on the advisory lock ---------------------------------------------

HOLDER = """\
import sys
from reconciler.store import open_store

store = open_store(sys.argv[1], create=True)  # as apply opens it
try:
    with store.lock("holder-x", 0):
        print("locked", flush=True)
        sys.stdin.readline()
finally:
    store.close()
"""


def read_line(process: subprocess.Popen[str], what: str) -> str:
    """The next stdout line of `process`, within DEADLINE (read on a helper thread)."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=DEADLINE)
    except queue.Empty:
        raise AssertionError(f"not within {DEADLINE:g}s: {what}") from None


def test_applies_serialize_on_the_advisory_lock(tmp_path: Path, postgres_url: str) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, ORG, definition("one"))

    def apply(*flags: str) -> list[str]:
        return [*RECONCILER, "apply", str(folder), "--auto-approve", "--actor", "it",
                "--state", postgres_url, *flags]  # fmt: skip

    with ExitStack() as children:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, postgres_url],
            cwd=REPO,
            env=cli_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.callback(reap, holder)
        assert read_line(holder, "the holder takes the lock") == "locked\n"

        # A second apply that may wait: it waits for the holder, and applies after it.
        waiting = subprocess.Popen(
            apply("--lock-timeout", str(DEADLINE)),
            cwd=tmp_path,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.callback(reap, waiting)

        # One that may not wait fails at once, naming the holder, and changes nothing.
        refused = subprocess.run(
            apply("--lock-timeout", "0"),
            cwd=tmp_path,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        (message,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert "holder-x" in message and f"pid {holder.pid}" in message, message
        assert "Traceback" not in refused.stderr
        assert rows(postgres_url, "SELECT count(*) FROM webhooks") == [(0,)]
        assert rows(postgres_url, "SELECT count(*) FROM audit_log") == [(0,)]
        assert waiting.poll() is None, "the waiting apply finished while the lock was held"

        assert holder.stdin is not None
        holder.stdin.close()  # the holder lets go and exits
        assert holder.wait(DEADLINE) == 0

        out, err = waiting.communicate(timeout=DEADLINE)
        assert waiting.returncode == 0, out + err
        assert "Applied: 1 created, 0 updated, 0 deleted" in out

        after = subprocess.run(
            apply("--lock-timeout", "0"),
            cwd=tmp_path,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert after.returncode == 0, after.stdout + after.stderr
        assert "Nothing to apply." in after.stdout
    assert rows(postgres_url, "SELECT action, name FROM audit_log") == [("create", "one")]
    assert rows(postgres_url, "SELECT count(*) FROM locks") == [(0,)]


def reap(process: subprocess.Popen[str]) -> None:
    """Kill (if still running) and wait for a child; close its pipes."""
    if process.poll() is None:
        process.kill()
    process.wait(DEADLINE)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


# -- concurrent migrations ------------------------------------------------------------------


def test_migrate_run_by_four_processes_at_once_migrates_once(
    tmp_path: Path, postgres_url: str
) -> None:
    migrations = [name for name, _ in MIGRATIONS]
    with ExitStack() as children:
        runs = []
        for _ in range(4):
            run = subprocess.Popen(
                [*RECONCILER, "migrate", "--state", postgres_url],
                cwd=tmp_path,
                env=cli_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            children.callback(reap, run)
            runs.append(run)
        outputs = [run.communicate(timeout=DEADLINE) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
        assert [line.split()[1] for line in out.splitlines()[:-1]] == migrations, out
        assert f"schema up to date ({len(migrations)} migrations)" in out
    assert sorted(rows(postgres_url, "SELECT name FROM schema_migrations")) == [
        (name,) for name in migrations
    ]
    assert rows(postgres_url, "SELECT count(*) FROM meta WHERE key = 'lineage'") == [(1,)]


def test_migrate_succeeds_when_its_schema_is_being_created_at_the_same_moment(
    tmp_path: Path, postgres_url: str
) -> None:
    """The race inside the test above, made certain: another session has created the
    schema and not yet committed when the processes start, so their
    `CREATE SCHEMA IF NOT EXISTS` sees no schema and then waits on the catalog's unique
    index; once the other session commits, the schema exists, and opening the state
    must go on rather than fail with a duplicate key."""
    conninfo, schema, _ = split_url(postgres_url)
    migrations = [name for name, _ in MIGRATIONS]
    # The creator's transaction stays open, idle, for as long as four processes take to
    # start on a loaded machine: without the state's idle-in-transaction deadline.
    idle_ok = "-c idle_in_transaction_session_timeout=0"
    with (
        ExitStack() as children,
        psycopg.connect(conninfo, connect_timeout=10, options=idle_ok) as creator,
    ):
        creator.execute(f'CREATE SCHEMA "{schema}"')  # the transaction stays open
        runs = []
        for _ in range(4):
            run = subprocess.Popen(
                [*RECONCILER, "migrate", "--state", postgres_url],
                cwd=tmp_path,
                env=cli_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            children.callback(reap, run)
            runs.append(run)

        def waiting_on_the_creator() -> bool:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as watch:
                ((blocked,),) = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (creator.info.backend_pid,),
                ).fetchall()
            return blocked == len(runs)

        eventually(waiting_on_the_creator, "four migrate processes waiting on the schema")
        creator.commit()
        outputs = [run.communicate(timeout=DEADLINE) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
        assert f"schema up to date ({len(migrations)} migrations)" in out
    assert sorted(rows(postgres_url, "SELECT name FROM schema_migrations")) == [
        (name,) for name in migrations
    ]
