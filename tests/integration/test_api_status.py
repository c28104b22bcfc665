"""GET /v1/webhooks/status and the per-webhook gauges of /metrics: each token sees its
organizations' webhooks only, on SQLite and PostgreSQL.

The state is filled through the store (intake, claims, outcomes at injected times);
no request is sent anywhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from reconciler.dispatch.app import create_app
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.store.queue import AttemptResult, EventRecord
from tests.support.helpers_state import FakeClock, bearer, put_specs, spec

NOW = 1_800_000_000.0
ACME_ERROR = "transport error: https://acme-bot:s3cretpassword@hooks.acme.example/in?token=zz9"


@pytest.fixture
def store(each_store: Any) -> Any:
    made = each_store
    put_specs(made, [spec("acme-alerts"), spec("acme-audit"), spec("globex-hook", "globex")])
    events = [
        EventRecord(f"e{i}", "new_rule_violation", org, "r", "", "2026-11-29T21:22:42Z")
        for i, org in enumerate(["acme", "acme", "globex"])
    ]
    made.add_events(events, NOW - 600)
    claims = {
        (c.organization, c.webhook, c.event.id): c for c in made.claim("w", 10, NOW - 600, 90)
    }
    failed = claims[("acme", "acme-alerts", "e0")]
    ok = claims[("globex", "globex-hook", "e2")]
    made.finish(
        [
            AttemptResult(failed.delivery_id, 1, NOW - 500, 40.0, "failed", error=ACME_ERROR),
            AttemptResult(ok.delivery_id, 1, NOW - 500, 20.0, "delivered", status=200),
        ],
        "w",
        NOW - 499,
    )
    made.release("w", NOW - 300)  # the rest: due since NOW - 300
    return made


def call(store: Any, *requests: tuple[str, dict[str, str]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        sender = Sender(httpx.AsyncHTTPTransport())  # sends nothing here
        dispatcher = Dispatcher(store, sender, clock=FakeClock(NOW), env={})
        transport = httpx.ASGITransport(app=create_app(dispatcher), raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return [await http.get(path, headers=headers) for path, headers in requests]
        finally:
            await sender.aclose()
            dispatcher.db.close()

    return asyncio.run(go())


def test_a_token_sees_the_health_of_its_organizations_webhooks_only(store: Any) -> None:
    globex = bearer(store, "globex", role="auditor", now=NOW)
    both = bearer(store, "acme", "globex", role="admin", now=NOW)

    mine, every, one = call(
        store,
        ("/v1/webhooks/status", globex),
        ("/v1/webhooks/status", both),
        ("/v1/webhooks/status?org=acme", both),
    )

    assert mine.status_code == 200, mine.text
    assert "acme" not in mine.text  # neither its webhooks, nor its name, nor its errors
    (hook,) = mine.json()["webhooks"]
    assert hook["organization"] == "globex"
    assert hook["webhook"] == "globex-hook"
    assert (hook["attempts"], hook["success_rate"], hook["p95_ms"]) == (1, 1.0, 20.0)
    assert hook["last_success_at"] == "2027-01-15T07:51:41Z"
    assert hook["breaker"] == "closed"
    assert mine.json()["as_of"] == "2027-01-15T08:00:00Z"
    assert [(w["organization"], w["webhook"]) for w in every.json()["webhooks"]] == [
        ("acme", "acme-alerts"),
        ("acme", "acme-audit"),
        ("globex", "globex-hook"),
    ]
    assert {w["organization"] for w in one.json()["webhooks"]} == {"acme"}
    alerts = one.json()["webhooks"][0]
    assert alerts["last_failure_at"] == "2027-01-15T07:51:40Z"
    assert "hooks.acme.example" in alerts["last_failure_reason"]
    assert "s3cretpassword" not in one.text and "zz9" not in one.text
    audit = one.json()["webhooks"][1]
    assert (audit["pending_due"], audit["oldest_due_age_seconds"]) == (2, 300.0)


def test_an_organization_outside_the_tokens_scope_is_403(store: Any) -> None:
    globex = bearer(store, "globex", role="admin", now=NOW)

    (response,) = call(store, ("/v1/webhooks/status?org=acme", globex))

    assert response.status_code == 403
    assert response.json() == {
        "error": "organization acme is out of this token's scope",
        "problems": [],
    }


@pytest.mark.parametrize("role", ["admin", "auditor", "publisher", "metrics"])
def test_the_roles_that_read_deliveries_read_health(store: Any, role: str) -> None:
    headers = bearer(store, "acme", role=role, now=NOW)

    status, deliveries = call(store, ("/v1/webhooks/status", headers), ("/v1/deliveries", headers))

    assert status.status_code == deliveries.status_code
    assert status.status_code == (200 if role in ("admin", "auditor") else 403)
    if status.status_code == 403:
        assert status.json() == deliveries.json()


def test_an_unknown_query_parameter_is_422(store: Any) -> None:
    headers = bearer(store, "acme", role="auditor", now=NOW)
    (response,) = call(store, ("/v1/webhooks/status?organisation=acme", headers))
    assert response.status_code == 422


def test_the_per_webhook_gauges_follow_the_tokens_organizations(store: Any) -> None:
    globex = bearer(store, "globex", role="metrics", now=NOW)
    everyone = bearer(store, role="metrics", all_organizations=True, now=NOW)

    mine, every = call(store, ("/metrics", globex), ("/metrics", everyone))

    assert "acme" not in mine.text
    labels = 'organization="globex",webhook="globex-hook"'
    assert f'reconciler_webhook_breaker_state{{{labels},state="closed"}} 1' in mine.text
    assert f'reconciler_webhook_breaker_state{{{labels},state="open"}} 0' in mine.text
    assert f"reconciler_webhook_backlog{{{labels}}} 0" in mine.text
    assert f"reconciler_webhook_oldest_due_seconds{{{labels}}} 0.000" in mine.text
    audit = 'organization="acme",webhook="acme-audit"'
    assert f"reconciler_webhook_backlog{{{audit}}} 2" in every.text
    assert f"reconciler_webhook_oldest_due_seconds{{{audit}}} 300.000" in every.text
    assert f"reconciler_webhook_backlog{{{labels}}} 0" in every.text
    assert "hooks" not in every.text.replace("webhook", "")  # no URL in any label
