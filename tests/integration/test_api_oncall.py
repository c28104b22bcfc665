"""The on-call's API: held deliveries at intake and resume, retry now, and the
deliveries list's filters (over the HTTP client, on a real SQLite file)."""

from __future__ import annotations

from typing import Any

import httpx

from reconciler.store.queue import AttemptResult, EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.integration.test_api import EVENT, Api, call
from tests.integration.test_api import clock as clock
from tests.integration.test_api import store as store
from tests.support.helpers_state import FakeClock, bearer

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


def backing_off(store: SqliteStore, clock: FakeClock, event_id: str, organization: str) -> str:
    """A delivery of acme/a (or globex/a) whose first attempt was a 503: due in 2h."""
    store.add_event(
        EventRecord(event_id, "new_rule_violation", organization, "r", "", "2026-01-01T00:00:00Z"),
        clock.now,
        "a",
    )
    (claim,) = store.claim("t", 10, clock.now, 90, EventKey(organization, event_id))
    store.finish(
        [
            AttemptResult(
                claim.delivery_id, 1, clock.now, 5.0, "retry", 503, next_due=clock.now + 7200
            )
        ],
        "t",
        clock.now,
    )
    return claim.delivery_id


def test_retry_makes_a_pending_delivery_due_now(
    store: SqliteStore,
    clock: FakeClock,
) -> None:
    waiting = backing_off(store, clock, "e1", "acme")
    clock.now += 60

    async def scenario(api: Api) -> tuple[httpx.Response, httpx.Response, int]:
        retried = await api.http.post(f"/v1/deliveries/{waiting}/retry")
        shown = await api.http.get(f"/v1/deliveries/{waiting}")
        return retried, shown, await api.deliver()

    retried, shown, sent = call(store, clock, scenario)
    assert retried.status_code == 202
    assert retried.json() == {"retried": [waiting]}
    assert (shown.json()["status"], shown.json()["due_at"]) == ("pending", clock.now)
    assert sent == 1  # the worker's next turn takes it


def test_retry_of_another_organizations_delivery_is_404_as_elsewhere(
    store: SqliteStore,
    clock: FakeClock,
) -> None:
    theirs = backing_off(store, clock, "e1", "globex")
    acme_admin = bearer(store, "acme")
    publisher = bearer(store, "globex", role="publisher")

    async def scenario(api: Api) -> list[httpx.Response]:
        path = f"/v1/deliveries/{theirs}/retry"
        return [
            await api.http.post(path, headers=acme_admin),
            await api.http.get(f"/v1/deliveries/{theirs}", headers=acme_admin),
            await api.http.post(path, headers=publisher),
            await api.http.post("/v1/deliveries/msg_nope/retry"),
        ]

    other, shown, wrong_role, unknown = call(store, clock, scenario)
    assert other.status_code == shown.status_code == 404
    assert other.json() == {"error": f"no delivery {theirs}", "problems": []}
    assert wrong_role.status_code == 403
    assert unknown.status_code == 404
    (record,) = store.deliveries(organization="globex")
    assert record.due_at == clock.now + 7200  # untouched


def test_retry_of_a_finished_delivery_is_409_pointing_at_replay(
    store: SqliteStore,
    clock: FakeClock,
) -> None:
    store.add_event(
        EventRecord("e1", "new_rule_violation", "acme", "r", "", "2026-01-01T00:00:00Z"),
        clock.now,
        "a",
    )
    (claim,) = store.claim("t", 10, clock.now, 90)
    store.finish([AttemptResult(claim.delivery_id, 1, clock.now, 5.0, "failed", 404)], "t", 0)

    async def scenario(api: Api) -> httpx.Response:
        return await api.http.post(f"/v1/deliveries/{claim.delivery_id}/retry")

    response = call(store, clock, scenario)
    assert response.status_code == 409
    assert "replay" in response.json()["error"]


def test_the_list_takes_since_until_and_status_code(
    store: SqliteStore,
    clock: FakeClock,
) -> None:
    old = backing_off(store, clock, "e1", "acme")
    clock.now += 3 * 3600
    new = backing_off(store, clock, "e2", "acme")

    async def scenario(api: Api) -> list[httpx.Response]:
        return [
            await api.http.get("/v1/deliveries", params={"since": "2h"}),
            await api.http.get("/v1/deliveries", params={"until": "2h"}),
            await api.http.get("/v1/deliveries", params={"status_code": 503, "webhook": "a"}),
            await api.http.get("/v1/deliveries", params={"since": "yesterday"}),
        ]

    since, until, code, bad = call(store, clock, scenario)
    assert [d["id"] for d in since.json()["deliveries"]] == [new]
    assert [d["id"] for d in until.json()["deliveries"]] == [old]
    assert [d["id"] for d in code.json()["deliveries"]] == [new, old]
    assert bad.status_code == 422
    (problem,) = bad.json()["problems"]
    assert problem["field"] == "query.since"
    assert "2h" in problem["message"]
