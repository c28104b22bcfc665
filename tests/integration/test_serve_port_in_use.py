"""`reconciler serve` on a port that is already taken, as a real process.

The port is bound before the state is opened or any worker starts, so the answer is
one line and exit 1, in one process as with --processes N, and whatever the state
holds: with deliveries pending, workers that had started claiming while the store
closed under them crashed the process (SIGSEGV), now and then, so each case runs
several times. The deliveries point at a loopback address the dispatcher refuses by
default: nothing is sent anywhere even if a worker did start.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.dispatch.processes import listen
from reconciler.errors import ServeError
from reconciler.events import EventIn
from reconciler.store import open_store
from reconciler.store.queue import QueueStore
from tests.support.helpers_state import definition, run_cli, write_definition

ORG = "acme"
TRIES = 5  # the crash was a race between threads: one try proves little
PENDING = 3


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state with one webhook and PENDING deliveries due now."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
    folder = tmp_path / "webhooks.d"
    write_definition(folder, ORG, definition("hook", url="http://127.0.0.1:9/never"))
    applied = run_cli(["apply", str(folder), "--auto-approve", "--state", url], tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    store: QueueStore = open_store(url)  # type: ignore[assignment]
    try:
        for n in range(PENDING):
            event = {"type": "new_rule_violation", "organization": ORG, "name": f"r{n}"}
            store.add_event(EventIn.model_validate(event).record(), time.time())
    finally:
        store.close()
    return url


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def pending(url: str) -> list[tuple[str, int]]:
    store: QueueStore = open_store(url)  # type: ignore[assignment]
    try:
        return [(r.status, r.attempts) for r in store.deliveries(limit=100)]
    finally:
        store.close()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_on_a_port_in_use_says_so_in_one_line(
    state: str, taken_port: int, tmp_path: Path, processes: str
) -> None:
    expected = (
        f"error: port {taken_port} is in use on 127.0.0.1: "
        "stop what listens there or choose another --port\n"
    )
    for _ in range(TRIES):
        result = run_cli(
            ["serve", "--state", state, "--host", "127.0.0.1", "--port", str(taken_port),
             "--processes", processes],
            tmp_path,
        )  # fmt: skip
        assert result.returncode != -signal.SIGSEGV, result.stderr
        assert result.returncode == 1, result.stderr
        assert result.stderr == expected
        assert result.stdout == ""
    # Nothing started: the deliveries wait, untouched, for a dispatcher that can listen.
    assert pending(state) == [("pending", 0)] * PENDING


def test_listen_names_the_port_in_use_and_holds_it_exclusively() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for count in (1, 3):
            with pytest.raises(ServeError, match=rf"^port {port} is in use on 127\.0\.0\.1: "):
                listen("127.0.0.1", port, count)


def test_several_dispatcher_sockets_do_not_join_a_port_another_service_shares() -> None:
    # Sockets that share a port (SO_REUSEPORT) would let a second `serve --processes N`
    # of the same user join the first one's port, unnoticed.
    first = listen("127.0.0.1", 0, 2)
    try:
        port = first[0].getsockname()[1]
        with pytest.raises(ServeError, match=rf"^port {port} is in use"):
            listen("127.0.0.1", port, 2)
        with pytest.raises(ServeError, match=rf"^port {port} is in use"):
            listen("127.0.0.1", port, 1)
    finally:
        for sock in first:
            sock.close()
