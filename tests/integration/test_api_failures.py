"""A state that cannot answer (a full disk, a database gone) is answered in the API's
one shape, on every route and on both of the intake's ways in (the fast path and
the FastAPI route): 503 `{"error": ..., "problems": []}` with Retry-After, nothing of
the cause or a traceback in the body, one log line naming the request and the cause,
never the token. The same request sent again once the state answers is taken, and an
event id is queued once. A bug is a 500 in the same shape.

In-process through httpx's ASGI transport, on SQLite and PostgreSQL: the store's
calls are made to fail, and, for a real component, the database itself refuses the
write (SQLite at its `max_page_count`, PostgreSQL raising SQLSTATE 53100 disk_full).
`serve`'s own protocol is tested in test_intake_protocol.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from reconciler.dispatch import failures
from reconciler.dispatch.app import create_app
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.errors import StateError
from reconciler.store.queue import AttemptResult, EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import FakeClock, bearer, put_specs, spec

START = 1_700_000_000.0
EVENT = {
    "type": "new_rule_violation",
    "organization": "acme",
    "name": "no-public-s3",
    "description": "bucket logs is public",
    "time": "2026-11-29T21:22:42Z",
    "id": "evt-1",
}


@pytest.fixture
def store(each_store: Any) -> Any:
    put_specs(each_store, [spec("a"), spec("b"), spec("a", "globex")])
    return each_store


def full_disk(store: Any) -> Exception:
    """What each store raises when its disk is full."""
    if isinstance(store, SqliteStore):
        return sqlite3.OperationalError("database or disk is full")
    return StateError(f"the state at {store.url} failed: could not extend file: disk full")


def break_store(store: Any, monkeypatch: pytest.MonkeyPatch, *calls: str) -> None:
    error = full_disk(store)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    for name in calls:
        monkeypatch.setattr(store, name, broken)


def send(
    store: Any, requests: list[tuple[str, str, dict[str, str], Any]], *, fast: bool = True
) -> list[httpx.Response]:
    """Each request, in order, to one app over one dispatcher (without its fast path
    unless `fast`)."""

    async def go() -> list[httpx.Response]:
        sender = Sender(httpx.AsyncHTTPTransport())  # never used: nothing is delivered
        dispatcher = Dispatcher(store, sender, clock=FakeClock(START), env={})
        app = create_app(dispatcher)
        if not fast:
            app.intake = None
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        answers = []
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                for method, path, headers, body in requests:
                    answers.append(await http.request(method, path, headers=headers, json=body))
        finally:
            await sender.aclose()
            dispatcher.db.close()
        return answers

    return asyncio.run(go())


def unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == str(failures.RETRY_AFTER)
    assert response.json() == {"error": failures.UNAVAILABLE, "problems": []}


def one_line_naming(caplog: pytest.LogCaptureFixture, request: str, secret: str) -> str:
    """The one log line of the failure: it names the request and the cause, no secret."""
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    (line,) = lines
    message = line.getMessage()
    assert message.startswith(f"{request}: the state failed ("), message
    assert "answered 503" in message
    assert line.exc_info is None and "\n" not in message  # one line, no traceback
    assert secret not in message
    return message


def a_failed_delivery(store: Any) -> str:
    """A delivery of globex's one webhook, failed for good: one to replay."""
    event = EventRecord("seed", "new_rule_violation", "globex", "r", "", "2026-11-29T00:00:00Z")
    store.add_event(event, START)
    (claim,) = store.claim("seed", 1, START, 60.0, event=EventKey(event.organization, event.id))
    failed = AttemptResult(claim.delivery_id, claim.attempt, START, 1.0, "failed", status=404)
    store.finish([failed], "seed", START)
    return claim.delivery_id


# -- intake: the event is not taken, and taken when sent again -------------------------

INTAKE = {
    "one event": ("/v1/events", EVENT),
    "a batch": ("/v1/events/batch", {"events": [EVENT, {**EVENT, "id": "evt-2"}]}),
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "route"])
@pytest.mark.parametrize("case", list(INTAKE))
def test_intake_on_a_failing_state_is_503_and_the_same_request_is_taken_later(
    store: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    case: str,
    fast: bool,
) -> None:
    path, body = INTAKE[case]
    headers = bearer(store, "acme", role="publisher", now=START)
    secret = headers["Authorization"].split()[1]
    break_store(store, monkeypatch, "add_events", "add_events_and_claim")

    with caplog.at_level(logging.INFO, logger="reconciler"):
        (refused,) = send(store, [("POST", path, headers, body)], fast=fast)
    unavailable(refused)
    assert "disk" not in refused.text and "Traceback" not in refused.text
    assert "full" in one_line_naming(caplog, f"POST {path}", secret)  # the cause
    monkeypatch.undo()
    assert store.deliveries() == []

    (taken,) = send(store, [("POST", path, headers, body)], fast=fast)
    assert taken.status_code == 202, taken.text
    again = send(store, [("POST", path, headers, body)], fast=fast)[0].json()
    results = again.get("results", [again])
    assert all(result["duplicate"] for result in results)
    assert len(store.deliveries()) == 2 * len(results)


# -- every other route that reads or writes the state --------------------------------


def test_reading_and_replaying_on_a_failing_state_is_503(
    store: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = a_failed_delivery(store)
    admin = bearer(store, all_organizations=True, now=START)
    secret = admin["Authorization"].split()[1]
    routes: list[tuple[str, str, str]] = [
        ("GET", "/v1/deliveries", "deliveries"),
        ("GET", f"/v1/deliveries/{delivery}", "delivery"),
        ("POST", f"/v1/deliveries/{delivery}/replay", "replay"),
        ("GET", "/metrics", "queue_counts"),
    ]
    for method, path, call in routes:
        caplog.clear()
        break_store(store, monkeypatch, call)
        with caplog.at_level(logging.INFO, logger="reconciler"):
            (answer,) = send(store, [(method, path, admin, None)])
        monkeypatch.undo()
        unavailable(answer)
        one_line_naming(caplog, f"{method} {path}", secret)
    assert store.delivery(delivery)[0].status == "failed"  # the replay did not happen


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "route"])
def test_a_token_that_cannot_be_looked_up_is_503_not_401(
    store: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fast: bool
) -> None:
    # The state, not the token, is at fault: the caller is told to come back, not
    # that their token is wrong.
    headers = bearer(store, "acme", role="publisher", now=START)
    break_store(store, monkeypatch, "token_by_hash")
    with caplog.at_level(logging.INFO, logger="reconciler"):
        (answer,) = send(store, [("POST", "/v1/events", headers, EVENT)], fast=fast)
    unavailable(answer)
    one_line_naming(caplog, "POST /v1/events", headers["Authorization"].split()[1])


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "route"])
def test_a_bug_is_a_500_in_the_same_shape_with_its_traceback_in_the_log(
    store: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fast: bool
) -> None:
    headers = bearer(store, "acme", role="publisher", now=START)

    def bug(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "add_events", bug)
    monkeypatch.setattr(store, "add_events_and_claim", bug)
    with caplog.at_level(logging.INFO, logger="reconciler"):
        (answer,) = send(store, [("POST", "/v1/events", headers, EVENT)], fast=fast)
    assert answer.status_code == 500
    assert answer.json() == {"error": failures.INTERNAL, "problems": []}
    assert "retry-after" not in answer.headers
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.getMessage() == "POST /v1/events failed unexpectedly; answered 500"
    assert line.exc_info is not None  # a bug keeps its traceback, in the log only


# -- the real thing: the database refuses the write ------------------------------------


def _fill_sqlite(store: SqliteStore) -> Callable[[], None]:
    """SQLite at its page limit: the next page it needs is refused, as on a full disk.
    Returns what lifts the limit."""
    db = store._db  # the test's own database
    db.execute("VACUUM")  # no free page left over from migrations to write into
    assert db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")
    return lambda: db.execute("PRAGMA max_page_count=1073741823") and None


def _fill_postgres(store: Any) -> Callable[[], None]:
    """PostgreSQL refusing every new event with SQLSTATE 53100 (disk_full), as the
    server does when it cannot extend a file. Returns what lets it write again."""
    with store._tx() as cur:
        cur.execute(
            "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file: No space left on device' "
            "USING ERRCODE = 'disk_full'; END $$"
        )
        cur.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON events "
            "FOR EACH ROW EXECUTE FUNCTION full_disk()"
        )

    def lift() -> None:
        with store._tx() as cur:
            cur.execute("DROP TRIGGER full_disk ON events")

    return lift


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "route"])
def test_a_full_database_answers_503_and_takes_the_event_once_it_has_room(
    store: Any, caplog: pytest.LogCaptureFixture, fast: bool
) -> None:
    headers = bearer(store, "acme", role="publisher", now=START)
    big = {**EVENT, "name": "n" * 1000, "description": "d" * 10_000}
    lift = _fill_sqlite(store) if isinstance(store, SqliteStore) else _fill_postgres(store)

    with caplog.at_level(logging.INFO, logger="reconciler"):
        refused, read = send(
            store,
            [
                ("POST", "/v1/events", headers, big),
                ("GET", "/metrics", headers, None),  # reading still works
            ],
            fast=fast,
        )
    unavailable(refused)
    assert read.status_code == 200
    message = one_line_naming(caplog, "POST /v1/events", headers["Authorization"].split()[1])
    assert "full" in message or "No space left" in message
    assert store.deliveries() == []

    lift()
    (taken,) = send(store, [("POST", "/v1/events", headers, big)], fast=fast)
    assert taken.json() == {
        "event_id": "evt-1",
        "organization": "acme",
        "deliveries": 2,
        "duplicate": False,
    }
