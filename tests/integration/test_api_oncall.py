"""The on-call's API: held deliveries at intake and resume, retry now, and the
deliveries list's filters (over the HTTP client, on a real SQLite file)."""

from __future__ import annotations

from typing import Any

import httpx

from reconciler.store.queue import EventKey
from reconciler.store.sqlite import SqliteStore
from tests.integration.test_api import EVENT, Api, call
from tests.integration.test_api import clock as clock
from tests.integration.test_api import store as store
from tests.support.helpers_state import FakeClock

GONE = "paused by the dispatcher after HTTP 410 on msg_x"


def test_intake_says_which_webhooks_are_held_and_resume_sends_them(
    store: SqliteStore,
    clock: FakeClock,
) -> None:
    store.pause("acme", "b", GONE, actor="dispatcher")

    async def scenario(api: Api) -> dict[str, Any]:
        one = await api.post_event(id="e1")
        batch = await api.http.post("/v1/events/batch", json={"events": [{**EVENT, "id": "e2"}]})
        resumed = await api.http.post("/v1/webhooks/acme/b/resume")
        return {"one": one, "batch": batch, "resumed": resumed}

    got = call(store, clock, scenario)

    assert got["one"].status_code == 202
    one = got["one"].json()
    assert (one["deliveries"], [h["webhook"] for h in one["held"]]) == (2, ["b"])
    assert GONE in one["held"][0]["reason"]
    (result,) = got["batch"].json()["results"]
    assert [h["webhook"] for h in result["held"]] == ["b"]
    assert got["resumed"].json() == {
        "organization": "acme",
        "name": "b",
        "resumed": True,
        "released": 2,
    }
    assert {r.status for r in store.deliveries(webhook="b", organization="acme")} == {"pending"}


def test_intake_without_a_paused_webhook_answers_as_before(
    store: SqliteStore,
    clock: FakeClock,
) -> None:
    async def scenario(api: Api) -> httpx.Response:
        return await api.post_event(id="e1")

    assert set(call(store, clock, scenario).json()) == {
        "event_id",
        "organization",
        "deliveries",
        "duplicate",
    }
    assert store.deliveries(event=EventKey("acme", "e1"))
