"""Integration: `reconciler serve --processes N`, a supervisor and N dispatcher
processes on one port and one state (SQLite and PostgreSQL), as real processes
over real HTTP.

What it must keep: every accepted event delivered, each delivery once (no
kill, no duplicate), a dead process replaced at once with its leases
taken back, SIGTERM stopping them all cleanly, and no dispatcher left running
when the supervisor itself is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.dispatch.processes import Supervisor, listen
from tests.integration.test_integration_serve import BODY, Project, accepted
from tests.support.receiver import DEADLINE, Receiver, ok
from tests.support.serve_process import Server, eventually

WEBHOOKS = ("a", "b")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(default=ok()) as running:
        yield running
        assert not running.errors, running.errors


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def project(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> Iterator[Project]:
    made = Project(tmp_path)
    if request.param == "postgres":
        made.state = request.getfixturevalue("postgres_url")
    for name in WEBHOOKS:
        made.define(name, url=receiver.url(f"/{name}"), body=BODY)
    made.apply_cli()
    try:
        yield made
    finally:
        for server in made.servers:
            for pid in children(server.pid):
                kill(pid)
            server.stop()


def children(pid: int) -> set[int]:
    """The live child processes of `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def dispatchers(server: Server, count: int = 2) -> set[int]:
    """The supervisor's dispatcher processes, once all `count` are running."""

    def running() -> set[int] | None:
        found = children(server.pid)
        return found if len(found) == count else None

    return eventually(running, f"{count} dispatcher processes", server)


def send_events(project: Project, server: Server, first: int, count: int) -> list[str]:
    """Post `count` events, each on a new connection, so the kernel spreads them
    over the processes; returns their ids."""
    ids = []
    for n in range(first, first + count):
        with httpx.Client(timeout=DEADLINE, headers=project.headers) as client:
            event_id = f"evt-{n:04d}"
            accepted(client, server, event_id, len(WEBHOOKS))
            ids.append(event_id)
    return ids


def delivered(
    project: Project, receiver: Receiver, server: Server, ids: list[str], *, killed: bool = False
) -> None:
    """Every delivery of `ids` delivered and received. Without a kill, each exactly
    once; after one, a request in flight may have been sent again, always under its
    delivery's own webhook-id."""
    expected = len(ids) * len(WEBHOOKS)

    def done() -> bool:
        rows = project.rows("SELECT status, count(*) FROM deliveries GROUP BY status")
        return dict(rows) == {"delivered": expected}

    eventually(done, f"{expected} deliveries delivered", server)
    stored = {
        (event, webhook): delivery
        for delivery, event, webhook in project.rows("SELECT id, event_id, webhook FROM deliveries")
    }
    sent: dict[tuple[str, str], list[str]] = {}
    for request in receiver.requests():
        key = (request.json()["event_id"], request.json()["webhook"])
        sent.setdefault(key, []).append(request.header("webhook-id") or "")
    assert set(sent) == {(e, w) for e in ids for w in WEBHOOKS}
    for key, webhook_ids in sent.items():
        assert set(webhook_ids) == {stored[key]}, key
    if not killed:
        assert Counter(len(v) for v in sent.values()) == Counter({1: expected})


def test_processes_share_one_port_and_one_queue(project: Project, receiver: Receiver) -> None:
    server = project.serve("--processes", "2", "--concurrency", "20")
    workers = dispatchers(server)
    ids = send_events(project, server, 0, 60)
    delivered(project, receiver, server, ids)
    log = server.log()
    assert "starting 2 dispatcher processes" in log
    # Every attempt is logged by the process that made it, and only the two
    # dispatcher processes made any.
    senders = {int(line.split("[", 1)[1].split("]", 1)[0])
               for line in log.splitlines() if " attempt delivery=" in line}  # fmt: skip
    assert senders and senders <= workers


def test_a_killed_process_is_replaced_and_nothing_accepted_is_lost(
    project: Project, receiver: Receiver
) -> None:
    server = project.serve("--processes", "2", "--concurrency", "20")
    first = dispatchers(server)
    ids = send_events(project, server, 0, 20)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int] | None:
        now = children(server.pid)
        return now if len(now) == 2 and victim not in now else None

    after = eventually(replaced, "a new process in place of the killed one", server)
    assert first - {victim} <= after
    assert f"dispatcher process {victim} was killed by SIGKILL; starting another" in server.log()
    ids += send_events(project, server, 20, 20)
    delivered(project, receiver, server, ids, killed=True)
    assert server.process.poll() is None


def test_sigterm_to_the_supervisor_stops_every_process(project: Project) -> None:
    server = project.serve("--processes", "2")
    workers = dispatchers(server)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server
    assert not any(alive(pid) for pid in workers)
    assert "starting another" not in server.log()


def test_no_dispatcher_outlives_a_killed_supervisor(project: Project) -> None:
    server = project.serve("--processes", "2")
    workers = dispatchers(server)
    server.signal(signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL
    eventually(lambda: not any(alive(pid) for pid in workers),
               "the dispatcher processes to stop after their supervisor died", server)  # fmt: skip


def test_each_process_gets_its_own_listening_socket_on_the_one_port() -> None:
    sockets = listen("127.0.0.1", 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1 and ports != {0}
        assert len({sock.fileno() for sock in sockets}) == 3
        assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


# -- the supervisor and stop signals that come while it forks ------------------------


def test_a_stop_signal_that_reaches_a_new_process_before_its_own_handling_ends_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Between fork and the child's own signal handling, SIGTERM must end the child:
    run by the handler it inherits from the supervisor, it was ignored, and the child
    went on to serve while the supervisor waited for it to stop."""
    real_fork = os.fork

    def fork_signalled() -> int:
        pid = real_fork()
        if pid == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # the child has not set its handling yet
        return pid

    monkeypatch.setattr(os, "fork", fork_signalled)
    served = tmp_path / "served"

    def child(slot: int) -> int:
        served.touch()
        return 0

    # Every child ends at birth, so the supervisor gives up after its restarts.
    assert Supervisor(1, child).run() == 1
    assert not served.exists()


def test_a_stop_that_comes_before_a_new_process_is_listed_still_reaches_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM to the supervisor just after a fork, before it lists the child: the
    child is stopped all the same, not left serving while the supervisor waits."""
    real_fork = os.fork
    supervisor: Supervisor

    def fork_then_stop() -> int:
        pid = real_fork()
        if pid:
            supervisor.stop()  # as the signal handler would, before the child is listed
        return pid

    monkeypatch.setattr(os, "fork", fork_then_stop)
    served = tmp_path / "served"

    def child(slot: int) -> int:
        # Wait for the SIGTERM; should it not come within 5 s, note that and end.
        signal.signal(signal.SIGALRM, lambda signum, frame: served.touch())
        signal.alarm(5)
        signal.pause()
        return 0

    supervisor = Supervisor(1, child)
    assert supervisor.run() == 0
    assert not served.exists()
