"""The intake's fast path answers exactly as the FastAPI route would.

Every request is sent twice, to the app as served and to the same app without its
fast path, each over its own fresh state: status, content type, body and what was
stored must be the same. Valid events must be taken by the fast path itself;
everything else must reach the route.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.dispatch import fast_intake
from reconciler.dispatch.app import create_app
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.events import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import FakeClock, bearer, put_specs, spec

START = 1_700_000_000.0
EVENT: dict[str, Any] = {
    "type": "new_rule_violation",
    "organization": "acme",
    "name": "no-public-s3",
    "description": "bucket logs is public",
    "time": "2026-11-29T21:22:42Z",
    "id": "evt-1",
}
ROLES = ("publisher", "admin", "auditor", "publisher-globex", "none", "garbage")
ONE, BATCH = fast_intake.PATH, fast_intake.BATCH_PATH


class Side:
    """One app over one fresh state, with a token of every kind."""

    def __init__(self, root: Path, fast: bool) -> None:
        self.store = SqliteStore(root / f"state-{fast}.db")
        put_specs(self.store, [spec("a"), spec("b"), spec("a", "globex")])
        self.headers: dict[str, dict[str, str]] = {
            "publisher": bearer(self.store, "acme", role="publisher", now=START),
            "admin": bearer(self.store, "acme", "globex", now=START),
            "auditor": bearer(self.store, "acme", role="auditor", now=START),
            "publisher-globex": bearer(self.store, "globex", role="publisher", now=START),
            "none": {},
            "garbage": {"Authorization": "Bearer rcn_not-a-token"},
        }
        self.fast = fast

    def send(
        self, role: str, content: bytes, content_type: str | None, path: str = fast_intake.PATH
    ) -> httpx.Response:
        headers = dict(self.headers[role])
        if content_type is not None:
            headers["Content-Type"] = content_type

        async def go() -> httpx.Response:
            sender = Sender(httpx.AsyncHTTPTransport())  # never used: nothing is delivered
            dispatcher = Dispatcher(self.store, sender, clock=FakeClock(START), env={})
            app = create_app(dispatcher)
            if not self.fast:
                app.intake = None
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                    return await http.post(path, content=content, headers=headers)
            finally:
                await sender.aclose()
                dispatcher.db.close()

        return asyncio.run(go())

    def stored(self) -> list[tuple[str, str, str]]:
        return sorted((d.event_id, d.organization, d.webhook) for d in self.store.deliveries())


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    fast, route = Side(tmp_path, True), Side(tmp_path, False)
    yield fast, route
    fast.store.close()
    route.store.close()


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per request the fast path saw: True if it answered it itself."""
    seen: list[bool] = []
    original = fast_intake.FastIntake.answer

    async def spy(self: fast_intake.FastIntake, *args: Any) -> Any:
        result = await original(self, *args)
        seen.append(result is not None)
        return result

    monkeypatch.setattr(fast_intake.FastIntake, "answer", spy)
    return seen


def same_answer(
    sides: tuple[Side, Side],
    role: str,
    content: bytes,
    content_type: str | None,
    path: str = fast_intake.PATH,
) -> httpx.Response:
    fast, route = sides
    a = fast.send(role, content, content_type, path)
    b = route.send(role, content, content_type, path)
    assert a.status_code != 500, a.text
    assert (a.status_code, a.headers.get("content-type"), a.content) == (
        b.status_code,
        b.headers.get("content-type"),
        b.content,
    )
    assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate")
    assert fast.stored() == route.stored()
    return a


def body(**fields: Any) -> bytes:
    return json.dumps({**EVENT, **fields}).encode()


def batch(*changes: dict[str, Any]) -> bytes:
    return json.dumps({"events": [{**EVENT, **change} for change in changes]}).encode()


def test_a_valid_event_is_taken_by_the_fast_path_with_the_routes_answer(
    sides: tuple[Side, Side], taken: list[bool]
) -> None:
    answer = same_answer(sides, "publisher", body(), "application/json")
    assert answer.status_code == 202
    assert answer.json() == {
        "event_id": "evt-1",
        "organization": "acme",
        "deliveries": 2,
        "duplicate": False,
    }
    assert taken == [True]
    assert sides[0].stored() == [("evt-1", "acme", "a"), ("evt-1", "acme", "b")]


def test_the_same_event_twice_is_a_duplicate_on_the_fast_path_too(
    sides: tuple[Side, Side], taken: list[bool]
) -> None:
    same_answer(sides, "admin", body(), "application/json")
    answer = same_answer(sides, "admin", body(), "application/json; charset=utf-8")
    assert answer.json()["duplicate"] is True
    assert taken == [True, True]


def test_an_id_another_organization_used_is_a_new_event_on_the_fast_path_too(
    sides: tuple[Side, Side], taken: list[bool]
) -> None:
    same_answer(sides, "publisher", body(), "application/json")  # acme's evt-1
    globex = body(organization="globex")
    answers = [same_answer(sides, "publisher-globex", globex, "application/json") for _ in "12"]
    mixed = same_answer(
        sides,
        "admin",
        batch({}, {"organization": "globex"}, {"id": "evt-2"}),
        "application/json",
        BATCH,
    )
    assert [a.json() for a in answers] == [
        {"event_id": "evt-1", "organization": "globex", "deliveries": 1, "duplicate": False},
        {"event_id": "evt-1", "organization": "globex", "deliveries": 1, "duplicate": True},
    ]
    assert [
        (r["organization"], r["event_id"], r["duplicate"]) for r in mixed.json()["results"]
    ] == [("acme", "evt-1", True), ("globex", "evt-1", True), ("acme", "evt-2", False)]
    assert taken == [True] * 4
    assert sides[0].stored() == [
        ("evt-1", "acme", "a"),
        ("evt-1", "acme", "b"),
        ("evt-1", "globex", "a"),
        ("evt-2", "acme", "a"),
        ("evt-2", "acme", "b"),
    ]


@pytest.mark.parametrize(
    ("role", "content", "content_type", "status", "path"),
    [
        ("none", body(), "application/json", 401, ONE),
        ("garbage", body(), "application/json", 401, ONE),
        ("auditor", body(), "application/json", 403, ONE),
        ("publisher-globex", body(), "application/json", 403, ONE),
        ("publisher", body(type="nope"), "application/json", 422, ONE),
        ("publisher", b'{"type": "new_rule_violation"', "application/json", 422, ONE),
        ("publisher", b"[" * 60_000, "application/json", 422, ONE),
        ("publisher", b"\x80", "application/json", 422, ONE),
        ("publisher", b"", "application/json", 422, ONE),
        ("publisher", body(), "text/plain", 422, ONE),
        ("publisher", body(), None, 422, ONE),
        ("publisher", b"x" * (MAX_EVENT_BYTES + 1), "application/json", 413, ONE),
        # Who asks comes before the size of what they sent.
        ("none", b"x" * (MAX_EVENT_BYTES + 1), "application/json", 401, ONE),
        ("garbage", b"x" * (MAX_EVENT_BYTES + 1), "application/json", 401, ONE),
        ("auditor", b"x" * (MAX_EVENT_BYTES + 1), "application/json", 403, ONE),
        ("none", batch({}), "application/json", 401, BATCH),
        ("auditor", batch({}), "application/json", 403, BATCH),
        ("publisher", batch({}, {"organization": "globex"}), "application/json", 403, BATCH),
        ("publisher", batch({}, {"time": "noon"}), "application/json", 422, BATCH),
        ("publisher", b'{"events": []}', "application/json", 422, BATCH),
        ("publisher", batch(*[{}] * (MAX_BATCH_EVENTS + 1)), "application/json", 422, BATCH),
        ("publisher", body(), "application/json", 422, BATCH),
        ("publisher", batch({}), "text/plain", 422, BATCH),
        ("publisher", b"x" * (MAX_BATCH_BYTES + 1), "application/json", 413, BATCH),
        ("none", b"x" * (MAX_BATCH_BYTES + 1), "application/json", 401, BATCH),
        ("garbage", b"x" * (MAX_BATCH_BYTES + 1), "text/plain", 401, BATCH),
        ("auditor", b"x" * (MAX_BATCH_BYTES + 1), "application/json", 403, BATCH),
    ],
)
def test_everything_else_is_answered_by_the_route(
    sides: tuple[Side, Side],
    taken: list[bool],
    role: str,
    content: bytes,
    content_type: str | None,
    status: int,
    path: str,
) -> None:
    answer = same_answer(sides, role, content, content_type, path)
    assert answer.status_code == status
    assert not any(taken)  # every one was handed to the route
    assert sides[0].stored() == []


def test_a_json_subtype_is_json_as_for_the_route(
    sides: tuple[Side, Side], taken: list[bool]
) -> None:
    answer = same_answer(sides, "publisher", body(), "application/vnd.acme+json")
    assert answer.status_code == 202
    assert taken == [True]


def test_a_valid_batch_is_taken_by_the_fast_path_with_the_routes_answer(
    sides: tuple[Side, Side], taken: list[bool]
) -> None:
    content = batch({"id": "e1"}, {"id": "e2"}, {"id": "e1"})
    answer = same_answer(sides, "publisher", content, "application/json", fast_intake.BATCH_PATH)
    assert answer.status_code == 202
    assert [r["duplicate"] for r in answer.json()["results"]] == [False, False, True]
    assert taken == [True]
    assert len(sides[0].stored()) == 4


values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["new_rule_violation", "ri_surplus", "ri_deficit", "x"]) | values,
        "organization": st.sampled_from(["acme", "globex", "Bad Org"]) | values,
        "name": st.text(max_size=30) | values,
        "description": st.text(max_size=30) | values,
        "time": st.sampled_from(["2026-11-29T21:22:42Z", "2026-11-29T21:22:42", "1700000000"])
        | values,
        "id": st.sampled_from(["evt-1", "evt 2", ""]) | values,
        "extra": values,
    },
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(event=fields, role=st.sampled_from(ROLES))
def test_any_event_gets_the_same_answer_either_way(
    tmp_path_factory: pytest.TempPathFactory, event: dict[str, Any], role: str
) -> None:
    root = tmp_path_factory.mktemp("either-way")
    pair = (Side(root, True), Side(root, False))
    try:
        same_answer(pair, role, json.dumps(event).encode(), "application/json")
    finally:
        for side in pair:
            side.store.close()


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(fields, max_size=3), role=st.sampled_from(ROLES))
def test_any_batch_gets_the_same_answer_either_way(
    tmp_path_factory: pytest.TempPathFactory, events: list[dict[str, Any]], role: str
) -> None:
    root = tmp_path_factory.mktemp("batch-either-way")
    pair = (Side(root, True), Side(root, False))
    try:
        content = json.dumps({"events": events}).encode()
        same_answer(pair, role, content, "application/json", fast_intake.BATCH_PATH)
    finally:
        for side in pair:
            side.store.close()


def test_an_event_no_webhook_gets_says_so_the_same_on_either_path(
    sides: tuple[Side, Side], taken: list[bool]
) -> None:
    """Stored (202) with 0 deliveries, and a note saying nothing is sent; the batch's
    answer carries it for that event only, on the fast path as on the route."""
    note = (
        "no enabled webhook of acme fires on reserved_instance_deficit: "
        "the event is stored, and nothing is sent"
    )
    unmatched = body(type="reserved_instance_deficit", id="evt-none")
    answer = same_answer(sides, "publisher", unmatched, "application/json")
    assert answer.status_code == 202
    assert answer.json() == {
        "event_id": "evt-none",
        "organization": "acme",
        "deliveries": 0,
        "duplicate": False,
        "note": note,
    }
    mixed = same_answer(
        sides,
        "admin",
        batch({"id": "evt-2"}, {"id": "evt-3", "type": "reserved_instance_deficit"}),
        "application/json",
        BATCH,
    )
    results = mixed.json()["results"]
    assert "note" not in results[0] and results[0]["deliveries"] == 2
    assert results[1]["note"] == note
    assert taken == [True, True]
