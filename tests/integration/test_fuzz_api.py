"""Fuzzing the HTTP API against its own OpenAPI document (schemathesis).

The document is the one the app serves at /openapi.json, fetched with a real
bearer token. Every operation in it is called in process over ASGI with
generated valid and invalid data, against a real SQLite state holding a few
applied webhooks and deliveries. Every answer must be no 5xx and exactly what
the document says: a declared status, its content type and headers, a body
that matches its schema, and invalid data rejected with a 4xx.

The cases come from each operation's own strategy (`operation.as_strategy`),
run by plain Hypothesis tests, derandomized, so a run is reproducible and one
test id names one operation. (schemathesis's lazy pytest loader,
`schemathesis.pytest.from_fixture`, renames pytest items through an attribute
pytest 9.2 no longer has; the strategies are the same ones it would use.)

No worker runs (the dispatcher is never started), the webhooks point at
127.0.0.1, and the dispatcher's sender has a transport that refuses to send and
records any attempt: nothing leaves the process, and each test checks that
nothing tried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reconciler import tokens
from reconciler.dispatch.app import create_app
from reconciler.dispatch.auth import UNAUTHORIZED
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.store.queue import AttemptResult, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import FakeClock, bearer, put_specs, spec

START = 1_700_000_000.0
ORGS = ("acme", "globex")

# Every operation of the document; a route added to the app without being added
# here fails test_the_document_lists_every_fuzzed_operation.
OPERATIONS = [
    ("POST", "/v1/events"),
    ("POST", "/v1/events/batch"),
    ("GET", "/v1/deliveries"),
    ("GET", "/v1/deliveries/{delivery_id}"),
    ("POST", "/v1/deliveries/{delivery_id}/replay"),
    ("POST", "/v1/deliveries/{delivery_id}/retry"),
    ("GET", "/v1/webhooks/status"),
    ("POST", "/v1/webhooks/{organization}/{name}/resume"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
UNGUARDED = ("/healthz", "/readyz")
GUARDED = [(method, path) for method, path in OPERATIONS if path not in UNGUARDED]
# The operations for which invalid data exists: a body or typed query parameters (a
# delivery id is any text, and the other operations take nothing).
WITH_INPUT = [("POST", "/v1/events"), ("POST", "/v1/events/batch"), ("GET", "/v1/deliveries")]
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE

CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
CHECKS = [*CONFORMANCE, negative_data_rejection]

# Invalid data must be refused with one of the answers the document declares for it
# (schemathesis's default list also has 400, 405, 406, 415, 428, 429 and any 5xx).
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": ["401", "403", "404", "409", "413", "422"]
            }
        }
    }
)

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass
class Fuzzed:
    """The app over a seeded state, its document as schemathesis read it, and tokens."""

    app: Any
    schema: Any
    store: SqliteStore
    deliveries: list[str]  # the ids of the deliveries in the state
    sent: list[httpx.Request] = field(default_factory=list)

    def token(self, role: str = "admin", *orgs: str) -> dict[str, str]:
        return bearer(self.store, *orgs, role=role, all_organizations=not orgs, now=START)

    def cases(
        self, method: str, path: str, headers: dict[str, str], modes: list[GenerationMode]
    ) -> st.SearchStrategy[Any]:
        """Cases for one operation, sent with `headers` (never mutated: the data is what
        varies); for a delivery path, also one per delivery of the state."""
        operation = self.schema[path][method]
        strategies = []
        for mode in modes:
            strategies.append(operation.as_strategy(generation_mode=mode, headers=headers))
            if "{delivery_id}" in path:
                strategies += [
                    operation.as_strategy(
                        generation_mode=mode,
                        headers=headers,
                        path_parameters={"delivery_id": known},
                    )
                    for known in self.deliveries
                ]
        return st.one_of(strategies)


def _refuse_to_send(sent: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ConnectError("nothing is sent while fuzzing", request=request)

    return httpx.MockTransport(handler)


@pytest.fixture
def fuzzed(tmp_path: Path) -> Iterator[Fuzzed]:
    store = SqliteStore(tmp_path / "state.db")
    webhooks = [spec("a", org, url=f"http://127.0.0.1:9/{org}/{{{{name}}}}") for org in ORGS]
    webhooks.append(spec("b", "acme", method="GET", body=None, url="http://127.0.0.1:9/acme/b"))
    put_specs(store, webhooks)
    for number, org in enumerate(ORGS):  # failed, so replayable, deliveries
        event = EventRecord(
            f"done-{org}", "new_rule_violation", org, "r", "", "2026-11-29T00:00:00Z"
        )
        store.add_event(event, START + number)
        claims = store.claim("seed", 10, START + number, 60.0, event=event.key)
        failed = [
            AttemptResult(c.delivery_id, c.attempt, START, 1.0, "failed", status=404)
            for c in claims
        ]
        store.finish(failed, "seed", START + number)
    # ...and one still queued, which a replay must refuse (409).
    store.add_event(
        EventRecord("queued", "new_rule_violation", "globex", "r", "", "2026-11-29T00:00:00Z"),
        START,
    )
    deliveries = [record.id for record in store.deliveries()]
    assert len(deliveries) == 4
    sent: list[httpx.Request] = []
    sender = Sender(_refuse_to_send(sent))
    dispatcher = Dispatcher(store, sender, clock=FakeClock(START + 100), env={})
    app = create_app(dispatcher)

    async def turn() -> None:  # one turn of the delivery loop, for /readyz
        await dispatcher.worker.run_forever(lambda: True, asyncio.Event())

    asyncio.run(turn())
    reader = bearer(store, role="auditor", all_organizations=True, now=START)
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG, headers=reader)
        yield Fuzzed(app, schema, store, deliveries, sent)
    finally:
        dispatcher.db.close()
        asyncio.run(sender.aclose())
        store.close()


def test_the_document_lists_every_fuzzed_operation(fuzzed: Fuzzed) -> None:
    paths = fuzzed.schema.raw_schema["paths"]
    listed = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(*op, POSITIVE) for op in OPERATIONS] + [(*op, NEGATIVE) for op in WITH_INPUT],
)
def test_every_operation_answers_as_its_document_says(
    fuzzed: Fuzzed, method: str, path: str, mode: GenerationMode
) -> None:
    admin = fuzzed.token("admin")
    statuses: set[int] = set()

    @FUZZ
    @given(case=fuzzed.cases(method, path, admin, [mode]))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=admin, checks=CHECKS)
        statuses.add(response.status_code)

    run()
    # The cases reached the operation itself, not only its refusals. A webhook to
    # resume is named by organization and name: made-up names reach the operation,
    # which answers 404 for a webhook the state does not hold.
    if mode is POSITIVE and path == "/v1/webhooks/{organization}/{name}/resume":
        assert statuses <= {200, 404, 403} and 404 in statuses, statuses
    elif mode is POSITIVE:
        assert any(200 <= status < 300 for status in statuses), statuses
    else:
        assert 422 in statuses, statuses
    assert fuzzed.sent == []


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_a_token_of_one_organization_never_reaches_another(
    fuzzed: Fuzzed, method: str, path: str
) -> None:
    acme = fuzzed.token("admin", "acme")
    own = {record.id for record in fuzzed.store.deliveries(organizations=["acme"])}

    @settings(FUZZ, max_examples=30)
    @given(case=fuzzed.cases(method, path, acme, [POSITIVE]))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=acme, checks=CHECKS)
        if response.status_code >= 300 or path == "/metrics":
            return
        data = response.json()
        if path == "/v1/events":
            assert case.body["organization"] == "acme"
        elif path == "/v1/deliveries":
            assert {d["organization"] for d in data["deliveries"]} <= {"acme"}
        elif path == "/v1/webhooks/status":
            assert {w["organization"] for w in data["webhooks"]} <= {"acme"}
            assert "globex" not in response.text
        else:
            assert case.path_parameters["delivery_id"] in own

    run()
    assert fuzzed.sent == []


def _revoked(fuzzed: Fuzzed) -> dict[str, str]:
    record, secret = tokens.create_token(
        fuzzed.store,
        role="admin",
        organizations=(),
        all_organizations=True,
        name="revoked",
        expires_in=None,
        now=START,
    )
    tokens.revoke_token(fuzzed.store, record.id, START)
    return {"Authorization": f"Bearer {secret}"}


def _expired(fuzzed: Fuzzed) -> dict[str, str]:
    return bearer(fuzzed.store, role="admin", all_organizations=True, now=START, expires_in=60.0)


NOBODY: dict[str, Callable[[Fuzzed], dict[str, str]]] = {
    "no token": lambda _: {},
    "another scheme": lambda _: {"Authorization": "Basic YWRtaW46YWRtaW4="},
    "garbage": lambda _: {"Authorization": "Bearer not-a-token"},
    "unknown token": lambda _: {"Authorization": "Bearer rcn_" + "A" * 43},
    "revoked token": _revoked,
    "expired token": _expired,
}


@pytest.mark.parametrize("who", list(NOBODY))
@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_without_a_valid_token_every_operation_is_401(
    fuzzed: Fuzzed, method: str, path: str, who: str
) -> None:
    headers = NOBODY[who](fuzzed)
    modes = [POSITIVE, NEGATIVE] if (method, path) in WITH_INPUT else [POSITIVE]

    @settings(FUZZ, max_examples=10)
    @given(case=fuzzed.cases(method, path, headers, modes))
    def run(case: Any) -> None:
        if not headers:  # the scheme's own generated credentials are left out too
            case.headers = {
                k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
            }
        response = case.call_and_validate(headers=headers, checks=CONFORMANCE)
        # Whatever was sent, its size included: who asks is judged first.
        assert response.status_code == 401, response.text
        assert response.json() == {"error": UNAUTHORIZED, "problems": []}
        sent = {k.lower(): v for k, v in response.request.headers.items()}
        assert sent.get("authorization") == headers.get("Authorization")

    run()
    assert fuzzed.sent == []


@pytest.mark.parametrize("who", list(NOBODY))
@pytest.mark.parametrize("path", UNGUARDED)
def test_liveness_and_readiness_answer_without_a_token(fuzzed: Fuzzed, path: str, who: str) -> None:
    headers = NOBODY[who](fuzzed)

    @settings(FUZZ, max_examples=5)
    @given(case=fuzzed.cases("GET", path, headers, [POSITIVE]))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CONFORMANCE)
        assert response.status_code != 401, response.text

    run()


# A role without the permission an operation needs: 403 whatever was sent.
FORBIDDEN = [
    ("auditor", "POST", "/v1/events"),
    ("publisher", "GET", "/v1/deliveries"),
    ("publisher", "GET", "/v1/deliveries/{delivery_id}"),
    ("publisher", "POST", "/v1/deliveries/{delivery_id}/replay"),
    ("auditor", "POST", "/v1/deliveries/{delivery_id}/replay"),
    ("publisher", "GET", "/v1/webhooks/status"),
]


@pytest.mark.parametrize(("role", "method", "path"), FORBIDDEN)
def test_a_role_without_the_permission_is_403(
    fuzzed: Fuzzed, role: str, method: str, path: str
) -> None:
    headers = fuzzed.token(role)
    modes = [POSITIVE, NEGATIVE] if (method, path) in WITH_INPUT else [POSITIVE]

    @settings(FUZZ, max_examples=10)
    @given(case=fuzzed.cases(method, path, headers, modes))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CONFORMANCE)
        assert response.status_code == 403, response.text
        assert response.json() == {"error": response.json()["error"], "problems": []}

    run()
    assert fuzzed.sent == []
