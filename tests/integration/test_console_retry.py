"""The console's Retry now button and its held deliveries, over HTTP on SQLite:
retry goes through the API's dispatcher call and refusals (admin only, org-scoped,
CSRF-checked); a paused webhook's held deliveries are listed with their reason."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpx import HTTPXMock

from reconciler.store.queue import DeliveryRecord
from tests.support.console import Console, add_event, console_over, csrf_of, deliver
from tests.support.helpers_state import put_specs, spec

SLACK = "https://hooks.example.com/slack"


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    with console_over(tmp_path / "state.db") as made:
        surplus = spec("pager", event="reserved_instance_surplus")
        put_specs(made.store, [spec("slack"), surplus, spec("ops", "globex")])
        yield made


def _record(console: Console, delivery_id: str) -> DeliveryRecord:
    found = console.store.delivery(delivery_id)
    assert found is not None
    return found[0]


def _backing_off(console: Console, httpx_mock: HTTPXMock) -> DeliveryRecord:
    """A delivery of acme/slack whose one attempt got 503: pending, due later."""
    httpx_mock.add_response(url=SLACK, status_code=503)
    add_event(console, "acme", "e1")
    deliver(console)
    (record,) = console.store.deliveries(organizations=["acme"], webhook="slack")
    assert record.status == "pending" and record.attempts == 1
    assert record.due_at is not None and record.due_at > console.clock()
    return record


def test_an_admin_makes_a_backing_off_delivery_due_now(
    console: Console, httpx_mock: HTTPXMock
) -> None:
    record = _backing_off(console, httpx_mock)
    console.clock.now += 5
    admin = console.signed_in("acme")
    page = admin.get(f"/ui/deliveries/{record.id}").text
    assert '<button type="submit">Retry now</button>' in page
    assert ">Replay</button>" not in page  # a pending delivery is retried, not replayed
    answer = admin.post(f"/ui/deliveries/{record.id}/retry", data={"csrf_token": csrf_of(page)})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/ui/deliveries/{record.id}?retried=1"
    shown = admin.get(answer.headers["location"]).text
    assert re.search(r'<p role="status" class="notice">Due now', shown)
    now = _record(console, record.id)
    assert (now.status, now.due_at, now.attempts) == ("pending", console.clock(), 1)
    httpx_mock.add_response(url=SLACK, status_code=200)
    assert deliver(console) == 1  # the next worker turn sends it, at once
    assert _record(console, record.id).status == "delivered"


def test_retry_is_refused_to_an_auditor_another_org_and_without_csrf(
    console: Console, httpx_mock: HTTPXMock
) -> None:
    record = _backing_off(console, httpx_mock)
    due = record.due_at
    auditor = console.signed_in("acme", role="auditor")
    page = auditor.get(f"/ui/deliveries/{record.id}").text
    assert "Retry now" not in page
    refused = auditor.post(f"/ui/deliveries/{record.id}/retry", data={"csrf_token": csrf_of(page)})
    assert refused.status_code == 403 and "may not replay" in refused.text
    other = console.signed_in("globex")
    elsewhere = other.post(
        f"/ui/deliveries/{record.id}/retry",
        data={"csrf_token": csrf_of(other.get("/ui/webhooks").text)},
    )
    assert elsewhere.status_code == 404 and f"no delivery {record.id}" in elsewhere.text
    admin = console.signed_in("acme")
    for data in ({}, {"csrf_token": "wrong"}):
        answer = admin.post(f"/ui/deliveries/{record.id}/retry", data=data)
        assert answer.status_code == 403 and "CSRF" in answer.text
    assert _record(console, record.id).due_at == due  # none of them changed it


def test_a_finished_delivery_is_refused_with_the_apis_reason(
    console: Console, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=SLACK, status_code=200)
    add_event(console, "acme", "e1")
    deliver(console)
    (record,) = console.store.deliveries(organizations=["acme"], webhook="slack")
    assert record.status == "delivered"
    admin = console.signed_in("acme")
    page = admin.get(f"/ui/deliveries/{record.id}").text
    assert ">Replay</button>" in page and "Retry now" not in page
    answer = admin.post(f"/ui/deliveries/{record.id}/retry", data={"csrf_token": csrf_of(page)})
    assert answer.status_code == 409
    assert f"delivery {record.id} is delivered: retry makes a pending delivery due now" in (
        answer.text
    )
    assert _record(console, record.id).status == "delivered"


def test_held_deliveries_show_why_and_are_counted_on_the_webhooks_page(
    console: Console,
) -> None:
    add_event(console, "acme", "e1")
    add_event(console, "acme", "e2")
    add_event(console, "globex", "g1")
    console.store.pause("acme", "slack", "HTTP 410 from the receiver", "dispatcher")
    console.store.pause("globex", "ops", "HTTP 410 from the receiver", "dispatcher")
    held = console.store.deliveries(organizations=["acme"], webhook="slack")
    assert [d.status for d in held] == ["held", "held"]

    admin = console.signed_in("acme")
    listing = admin.get("/ui/deliveries").text
    assert "<option>held</option>" in listing
    only_held = admin.get("/ui/deliveries?status=held").text
    ids = set(re.findall(r'href="/ui/deliveries/([^"?/]+)"', only_held))
    assert ids == {d.id for d in held}  # not globex's held one
    assert "HTTP 410 from the receiver" in only_held

    page = admin.get(f"/ui/deliveries/{held[0].id}").text
    reason = re.search(r'<dd id="held-reason">([^<]+)</dd>', page)
    assert reason and "HTTP 410 from the receiver" in reason.group(1)
    assert "reconciler webhooks resume acme/slack" in page
    assert "Retry now" not in page and ">Replay</button>" not in page
    answer = admin.post(f"/ui/deliveries/{held[0].id}/retry", data={"csrf_token": csrf_of(page)})
    assert answer.status_code == 409 and "is held while its webhook is paused" in answer.text

    webhooks = admin.get("/ui/webhooks").text
    row = webhooks[webhooks.index(">slack<") :].split("</tr>")[0]
    assert "paused" in row and ">2 held</a>" in row
    assert "status=held&amp;org=acme&amp;webhook=slack" in row
    pager = webhooks[webhooks.index(">pager<") :].split("</tr>")[0]
    assert "held" not in pager
    console.store.resume("acme", "slack", "tester")
    assert "held</a>" not in admin.get("/ui/webhooks").text
