"""Bearer tokens on the HTTP API: every role against every endpoint and organization.

In-process through httpx's ASGI transport, as in test_api.py; application errors
come back as 500 responses (raise_app_exceptions=False), so every test can say
"never a 500". The dispatcher's clock is a FakeClock: tokens expire because a
test moves it, and a revocation reaches the API once the cache's second is over.
One test at the end runs a real `reconciler serve` with tokens from the CLI.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import tokens
from reconciler.dispatch.app import create_app
from reconciler.dispatch.auth import CACHE_SECONDS, UNAUTHORIZED, AuthError, Guard
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.store.queue import AttemptResult, EventKey, EventRecord
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    RECONCILER,
    FakeClock,
    bearer,
    cli_env,
    definition,
    put_specs,
    run_cli,
    spec,
    write_definition,
)

START = 1_700_000_000.0
ORGS = ("acme", "globex", "initech")

Call = tuple[str, str, dict[str, str], Any]  # method, path, headers, JSON body or bytes
Step = Call | Callable[[], None]  # a request, or something done between two


@dataclass
class World:
    """A state with one webhook and one failed (so replayable) delivery per organization."""

    store: SqliteStore
    clock: FakeClock
    delivery: dict[str, str]  # organization -> its delivery's id

    def headers(self, who: str) -> dict[str, str]:
        """The Authorization header of a named caller (see CALLERS)."""
        return CALLERS[who](self)

    def send(self, *steps: Step) -> list[httpx.Response]:
        """Send requests, in order, to one app over one dispatcher; return the answers."""

        async def go() -> list[httpx.Response]:
            sender = Sender(httpx.AsyncHTTPTransport())  # never used here
            dispatcher = Dispatcher(self.store, sender, clock=self.clock, env={})
            app = create_app(dispatcher)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            answers = []
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                    for step in steps:
                        if callable(step):
                            step()
                            continue
                        method, path, headers, body = step
                        kwargs: dict[str, Any] = {"headers": headers}
                        if isinstance(body, bytes):
                            kwargs["content"] = body
                            kwargs["headers"] = {**headers, "Content-Type": "application/json"}
                        elif body is not None:
                            kwargs["json"] = body
                        answers.append(await http.request(method, path, **kwargs))
            finally:
                await sender.aclose()
                dispatcher.db.close()
            for answer in answers:
                assert answer.status_code != 500, answer.text
            return answers

        return asyncio.run(go())

    def one(
        self, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> httpx.Response:
        return self.send((method, path, headers, body))[0]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = SqliteStore(tmp_path / "state.db")
    put_specs(store, [spec("a", org) for org in ORGS])
    delivery = {}
    for number, org in enumerate(ORGS):
        event = EventRecord(
            f"seed-{org}", "new_rule_violation", org, "r", "", "2026-11-29T00:00:00Z"
        )
        store.add_event(event, START + number)
        (record,) = store.deliveries(event=event.key)
        (claim,) = store.claim("seed", 1, START + number, 60.0, event=event.key)
        failed = AttemptResult(record.id, claim.attempt, START, 1.0, "failed", status=404)
        store.finish([failed], "seed", START + number)
        delivery[org] = record.id
    yield World(store, FakeClock(START + 100), delivery)
    store.close()


def _token(role: str, *orgs: str, all_organizations: bool = False) -> Any:
    return lambda w: bearer(
        w.store, *orgs, role=role, all_organizations=all_organizations, now=w.clock.now
    )


CALLERS = {
    "admin@acme": _token("admin", "acme"),
    "publisher@acme": _token("publisher", "acme"),
    "auditor@acme": _token("auditor", "acme"),
    "partner-admin@acme,globex": _token("admin", "acme", "globex"),
    "auditor@*": _token("auditor", all_organizations=True),
    "publisher@*": _token("publisher", all_organizations=True),
    "metrics@*": _token("metrics", all_organizations=True),
}

# What each caller sees of each organization's delivery, and may send events for.
SCOPE = {
    "admin@acme": {"acme"},
    "publisher@acme": {"acme"},
    "auditor@acme": {"acme"},
    "partner-admin@acme,globex": {"acme", "globex"},
    "auditor@*": set(ORGS),
    "publisher@*": set(ORGS),
    "metrics@*": set(ORGS),
}
ROLE = {caller: caller.split("@")[0].removeprefix("partner-") for caller in CALLERS}


def may(caller: str, permission: tokens.Permission) -> bool:
    return permission in tokens.PERMISSIONS[ROLE[caller]]


def event_body(org: str) -> dict[str, Any]:
    return {"type": "new_rule_violation", "organization": org, "name": "r", "id": f"new-{org}"}


def _refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": response.json()["error"], "problems": []}
    assert words in response.json()["error"], response.text


# -- each role, each endpoint, each organization ------------------------------------------


@pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
@pytest.mark.parametrize("org", ORGS)
@pytest.mark.parametrize("caller", list(CALLERS))
def test_sending_an_event(world: World, caller: str, org: str, batch: bool) -> None:
    body: dict[str, Any] = event_body(org)
    if batch:
        body = {"events": [body, {**body, "id": f"also-{org}"}]}
    response = world.one(
        "POST", "/v1/events/batch" if batch else "/v1/events", world.headers(caller), body
    )

    if not may(caller, "send"):
        _refused(response, 403, f"the role {ROLE[caller]} may not send events")
    elif org not in SCOPE[caller]:
        _refused(response, 403, f"organization {org} is out of this token's scope")
    else:
        assert response.status_code == 202, response.text
        answers = [
            {"event_id": f"{name}-{org}", "organization": org, "deliveries": 1, "duplicate": False}
            for name in ("new", "also")
        ]
        assert response.json() == ({"results": answers} if batch else answers[0])
        return
    assert world.store.deliveries(event=EventKey(org, f"new-{org}")) == []  # nothing was queued


@pytest.mark.parametrize("caller", list(CALLERS))
def test_listing_deliveries_shows_only_the_tokens_organizations(world: World, caller: str) -> None:
    response = world.one("GET", "/v1/deliveries", world.headers(caller))

    if not may(caller, "read"):
        _refused(response, 403, f"the role {ROLE[caller]} may not read deliveries")
        return
    assert response.status_code == 200, response.text
    listed = {d["organization"]: d["id"] for d in response.json()["deliveries"]}
    assert listed == {org: world.delivery[org] for org in SCOPE[caller]}


@pytest.mark.parametrize("org", ORGS)
@pytest.mark.parametrize("caller", list(CALLERS))
def test_listing_one_organizations_deliveries(world: World, caller: str, org: str) -> None:
    response = world.one("GET", f"/v1/deliveries?org={org}", world.headers(caller))

    if not may(caller, "read"):
        _refused(response, 403, f"the role {ROLE[caller]} may not read deliveries")
    elif org not in SCOPE[caller]:
        _refused(response, 403, f"organization {org} is out of this token's scope")
    else:
        assert response.status_code == 200, response.text
        assert [d["id"] for d in response.json()["deliveries"]] == [world.delivery[org]]


@pytest.mark.parametrize("org", ORGS)
@pytest.mark.parametrize("caller", list(CALLERS))
def test_reading_one_delivery(world: World, caller: str, org: str) -> None:
    delivery_id = world.delivery[org]
    response = world.one("GET", f"/v1/deliveries/{delivery_id}", world.headers(caller))

    if not may(caller, "read"):
        _refused(response, 403, f"the role {ROLE[caller]} may not read deliveries")
    elif org not in SCOPE[caller]:
        # invisible: the same answer as for a delivery that does not exist
        assert response.status_code == 404, response.text
        assert response.json() == {"error": f"no delivery {delivery_id}", "problems": []}
    else:
        assert response.status_code == 200, response.text
        assert (response.json()["id"], response.json()["organization"]) == (delivery_id, org)


@pytest.mark.parametrize("org", ORGS)
@pytest.mark.parametrize("caller", list(CALLERS))
def test_replaying_a_delivery(world: World, caller: str, org: str) -> None:
    delivery_id = world.delivery[org]
    response = world.one("POST", f"/v1/deliveries/{delivery_id}/replay", world.headers(caller))
    status = world.store.delivery(delivery_id)[0].status  # type: ignore[index]

    if ROLE[caller] != "admin":
        _refused(response, 403, f"the role {ROLE[caller]} may not replay deliveries")
    elif org not in SCOPE[caller]:
        assert response.status_code == 404, response.text
        assert response.json()["error"] == f"no delivery {delivery_id}"
    else:
        assert response.status_code == 202, response.text
        assert response.json() == {"replayed": [delivery_id]}
        assert status == "pending"
        return
    assert status == "failed"  # untouched


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json"])
@pytest.mark.parametrize("caller", list(CALLERS))
def test_metrics_and_the_openapi_document_take_any_valid_token(
    world: World, caller: str, path: str
) -> None:
    response = world.one("GET", path, world.headers(caller))
    assert response.status_code == 200, response.text


INSTALLATION_SERIES = (
    "reconciler_queue_deliveries",
    "reconciler_queue_oldest_due_seconds",
    "reconciler_deliveries_deferred_total",
    "reconciler_attempt_duration_seconds",
)


@pytest.mark.parametrize("caller", list(CALLERS))
def test_metrics_show_only_the_tokens_organizations(world: World, caller: str) -> None:
    everyone = _token("admin", all_organizations=True)(world)
    batch = {"events": [event_body(org) for org in ORGS]}
    sent, metrics = world.send(
        ("POST", "/v1/events/batch", everyone, batch),
        ("GET", "/metrics", world.headers(caller), None),
    )
    assert sent.status_code == 202, sent.text
    assert metrics.status_code == 200, metrics.text
    for org in ORGS:
        line = (
            f'reconciler_events_received_total{{organization="{org}",event="new_rule_violation"}} 1'
        )
        if org in SCOPE[caller]:
            assert line in metrics.text
        else:  # not its series, not even its name
            assert org not in metrics.text
    every_organization = caller.endswith("@*")
    for series in INSTALLATION_SERIES:
        assert (f"\n{series}" in metrics.text) is every_organization, series


def test_healthz_needs_no_token(world: World) -> None:
    response = world.one("GET", "/healthz", {})
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_unknown_routes_stay_404_with_or_without_a_token(world: World) -> None:
    for headers in ({}, world.headers("admin@acme")):
        assert world.one("GET", "/nowhere", headers).status_code == 404
    assert world.one("GET", "/docs", {}).status_code == 404  # no unauthenticated pages


# -- who is not let in -------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/v1/events", event_body("acme")),
    ("POST", "/v1/events/batch", {"events": [event_body("acme")]}),
    ("GET", "/v1/deliveries", None),
    ("GET", "/v1/deliveries?org=acme", None),
    ("GET", "/v1/deliveries/{acme}", None),
    ("POST", "/v1/deliveries/{acme}/replay", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
]


def _unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"error": UNAUTHORIZED, "problems": []}
    assert response.headers["www-authenticate"] == "Bearer"


def _path(world: World, path: str) -> str:
    return path.replace("{acme}", world.delivery["acme"])


BAD_HEADERS = {
    "missing header": {},
    "empty header": {"Authorization": ""},
    "wrong scheme": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    "token as a Basic credential": {"Authorization": "Basic rcn_x"},
    "scheme alone": {"Authorization": "Bearer"},
    "garbage": {"Authorization": "Bearer not-a-token"},
    "well-formed but unknown": {"Authorization": "Bearer rcn_" + "A" * 43},
    "a token hash instead of the token": {"Authorization": "Bearer " + "0" * 64},
    "the token id": {"Authorization": "Bearer tok_0123456789ab"},
}


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_no_valid_token_is_401_everywhere_but_healthz(
    world: World, case: str, method: str, path: str, body: Any
) -> None:
    response = world.one(method, _path(world, path), BAD_HEADERS[case], body)
    _unauthorized(response)
    assert world.store.deliveries(event=EventKey("acme", "new-acme")) == []
    assert world.store.delivery(world.delivery["acme"])[0].status == "failed"  # type: ignore[index]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_a_revoked_token_is_401(world: World, method: str, path: str, body: Any) -> None:
    headers = world.headers("admin@acme")
    (token,) = world.store.tokens()
    tokens.revoke_token(world.store, token.id, world.clock.now)

    _unauthorized(world.one(method, _path(world, path), headers, body))


def test_a_revocation_reaches_a_running_api_within_the_cache_time(world: World) -> None:
    headers = world.headers("auditor@acme")
    (token,) = world.store.tokens()

    def revoke() -> None:
        tokens.revoke_token(world.store, token.id, world.clock.now)

    def later() -> None:
        world.clock.now += CACHE_SECONDS

    before, after = world.send(
        ("GET", "/v1/deliveries", headers, None),
        revoke,
        later,
        ("GET", "/v1/deliveries", headers, None),
    )
    assert before.status_code == 200
    _unauthorized(after)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_an_expired_token_is_401(world: World, method: str, path: str, body: Any) -> None:
    made = world.clock.now
    headers = bearer(world.store, "acme", now=made, expires_in=3600.0)

    def at(moment: float) -> Callable[[], None]:
        return lambda: setattr(world.clock, "now", moment)

    # The same token, the same app: good a second before the hour, refused at the hour.
    good, late = world.send(
        at(made + 3599.0),
        (method, _path(world, path), headers, body),
        at(made + 3600.0),
        (method, _path(world, path), headers, body),
    )
    assert good.status_code in (200, 202), good.text
    _unauthorized(late)


def test_the_scheme_is_case_insensitive(world: World) -> None:
    (_, secret) = world.headers("auditor@acme")["Authorization"].split(" ")
    for scheme in ("bearer", "BEARER", "Bearer"):
        response = world.one("GET", "/v1/deliveries", {"Authorization": f"{scheme} {secret}"})
        assert response.status_code == 200, (scheme, response.text)


def test_who_asks_comes_before_what_they_sent(world: World) -> None:
    not_json = b"{not json"
    invalid = {"type": "nope"}
    # No token: 401 whatever the body, so an anonymous caller learns nothing of the API.
    _unauthorized(world.one("POST", "/v1/events", {}, not_json))
    _unauthorized(world.one("POST", "/v1/events", {}, invalid))
    _unauthorized(world.one("GET", "/v1/deliveries?limit=0", {}))
    # A token without the role: 403, whatever the body.
    auditor = world.headers("auditor@acme")
    _refused(world.one("POST", "/v1/events", auditor, not_json), 403, "may not send events")
    _refused(world.one("POST", "/v1/events", auditor, invalid), 403, "may not send events")
    publisher = world.headers("publisher@acme")
    _refused(world.one("GET", "/v1/deliveries?limit=0", publisher), 403, "may not read")
    # The right role: the body's problems, then the organization.
    assert world.one("POST", "/v1/events", publisher, not_json).status_code == 422
    assert world.one("POST", "/v1/events", publisher, invalid).status_code == 422
    bad_org = {**event_body("globex"), "type": "nope"}
    assert world.one("POST", "/v1/events", publisher, bad_org).status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/events"),
        ("POST", "/v1/events/batch"),
        ("GET", "/v1/deliveries"),
        ("GET", "/metrics"),
    ],
)
@pytest.mark.parametrize("declared", [True, False], ids=["Content-Length", "chunked"])
def test_who_asks_comes_before_the_size_of_what_they_sent(
    world: World, method: str, path: str, declared: bool
) -> None:
    too_large = b" " * (1024 * 1024 + 1)  # over every path's limit

    async def chunks() -> Any:
        for start in range(0, len(too_large), 65536):
            yield too_large[start : start + 65536]

    async def go(headers: dict[str, str]) -> httpx.Response:
        sender = Sender(httpx.AsyncHTTPTransport())  # never used here
        dispatcher = Dispatcher(world.store, sender, clock=world.clock, env={})
        transport = httpx.ASGITransport(app=create_app(dispatcher), raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                content = too_large if declared else chunks()
                return await http.request(method, path, headers=headers, content=content)
        finally:
            await sender.aclose()
            dispatcher.db.close()

    _unauthorized(asyncio.run(go({})))
    _unauthorized(asyncio.run(go(BAD_HEADERS["well-formed but unknown"])))
    if path != "/metrics":  # a role refused: 403 (every role may read /metrics)
        wrong = "auditor@acme" if method == "POST" else "publisher@acme"
        assert asyncio.run(go(world.headers(wrong))).status_code == 403
    # Only a caller let in hears about the size.
    too_big = asyncio.run(go(world.headers("admin@acme")))
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["problems"] == []
    assert world.store.deliveries(event=EventKey("acme", "new-acme")) == []


def test_a_partner_admin_sees_all_of_their_clients_and_no_one_else(world: World) -> None:
    partner = world.headers("partner-admin@acme,globex")
    acme, globex, initech = (event_body(org) for org in ORGS)
    answers = world.send(
        ("POST", "/v1/events", partner, acme),
        ("POST", "/v1/events", partner, globex),
        ("POST", "/v1/events", partner, initech),
        ("GET", "/v1/deliveries?limit=1000", partner, None),
    )
    assert [a.status_code for a in answers] == [202, 202, 403, 200]
    listed = sorted(d["organization"] for d in answers[3].json()["deliveries"])
    assert listed == ["acme", "acme", "globex", "globex"]


def test_a_token_of_one_organization_cannot_learn_which_ids_another_has_used(
    world: World,
) -> None:
    # acme has an event "seed-acme" (the world's seed); "never-used" is nobody's.
    globex = _token("admin", "globex")(world)

    def post(event_id: str) -> Call:
        body = {"type": "new_rule_violation", "organization": "globex", "name": "r", "id": event_id}
        return ("POST", "/v1/events", globex, body)

    def batch(event_id: str) -> Call:
        body = post(event_id)[3]
        return ("POST", "/v1/events/batch", globex, {"events": [body, body]})

    def listed(query: str) -> Call:
        return ("GET", f"/v1/deliveries?{query}", globex, None)

    answers = world.send(
        post("seed-acme"),
        post("never-used"),
        post("seed-acme"),
        post("never-used"),
        batch("seed-acme-2"),
        batch("never-used-2"),
        listed("org=acme&event_id=seed-acme"),
        listed("org=acme&event_id=no-such-id"),
        listed("event_id=seed-acme"),
        listed("event_id=no-such-id"),
        listed("org=globex&event_id=seed-acme"),
    )

    def seen(answer: httpx.Response) -> tuple[int, str]:
        # the answer with the id it was asked about taken out
        text = answer.text
        for event_id in ("seed-acme-2", "never-used-2", "seed-acme", "never-used", "no-such-id"):
            text = text.replace(event_id, "ID")
        return answer.status_code, text

    (taken, free, taken_again, free_again, taken_batch, free_batch) = answers[:6]
    assert seen(taken) == seen(free)
    assert taken.json() == {
        "event_id": "seed-acme",
        "organization": "globex",
        "deliveries": 1,
        "duplicate": False,
    }
    assert seen(taken_again) == seen(free_again)
    assert taken_again.json() == {**taken.json(), "duplicate": True}
    assert seen(taken_batch) == seen(free_batch)
    assert [r["duplicate"] for r in taken_batch.json()["results"]] == [False, True]
    # reading: out of scope (403) or incomplete (422) alike, whether acme has the id or not
    assert seen(answers[6]) == seen(answers[7])
    assert answers[6].status_code == 403
    assert seen(answers[8]) == seen(answers[9])
    assert answers[8].status_code == 422
    (own,) = answers[10].json()["deliveries"]
    assert (own["organization"], own["event_id"]) == ("globex", "seed-acme")
    # acme's event and its delivery are as they were
    assert world.store.deliveries(event=EventKey("acme", "seed-acme")) == [
        world.store.delivery(world.delivery["acme"])[0]  # type: ignore[index]
    ]
    assert world.store.delivery(world.delivery["acme"])[0].status == "failed"  # type: ignore[index]


def test_the_openapi_document_declares_the_bearer_scheme(world: World) -> None:
    document = world.one("GET", "/openapi.json", world.headers("auditor@acme")).json()
    schemes = document["components"]["securitySchemes"]
    assert [s["scheme"].lower() for s in schemes.values()] == ["bearer"]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path in ("/healthz", "/readyz"):
                assert "security" not in operation
            else:
                assert operation["security"], path
                assert "401" in operation["responses"], path


_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(value=st.one_of(_HEADER_TEXT, _HEADER_TEXT.map(lambda t: "Bearer " + t)))
def test_no_authorization_header_gives_a_500(value: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "state.db")
        try:
            world = World(store, FakeClock(START), {})
            answers = world.send(
                ("GET", "/v1/deliveries", {"Authorization": value}, None),
                ("POST", "/v1/events", {"Authorization": value}, event_body("acme")),
            )
        finally:
            store.close()
    for answer in answers:
        assert answer.status_code == 401, (value, answer.text)


# -- over real HTTP, with tokens from the command line ----------------------------------------


def test_serve_with_tokens_from_the_cli(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    write_definition(tmp_path / "webhooks.d", "acme", definition("a"))
    applied = run_cli(["apply", "webhooks.d", "--auto-approve", "--state", state], tmp_path)
    assert applied.returncode == 0, applied.stderr

    def token(*args: str) -> str:
        made = run_cli(["tokens", "create", *args, "--state", state], tmp_path)
        assert made.returncode == 0, made.stderr
        assert re.fullmatch(r"rcn_[A-Za-z0-9_-]{43}\n", made.stdout), made.stdout
        assert "shown" in made.stderr
        return made.stdout.strip()

    publisher = token("--role", "publisher", "--org", "acme", "--name", "rules-engine")
    auditor = token("--role", "auditor", "--org", "acme", "--expires", "30d")
    revoked = token("--role", "admin", "--all-orgs")
    listed = json.loads(
        run_cli(["tokens", "list", "--format", "json", "--state", state], tmp_path).stdout
    )
    revoked_id = next(t["id"] for t in listed if t["organizations"] == "*")
    assert run_cli(["tokens", "revoke", revoked_id, "--state", state], tmp_path).returncode == 0

    server = subprocess.Popen(
        [*RECONCILER, "serve", "--state", state, "--port", "0"],
        cwd=tmp_path,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("serving on http://"), line
        base = line.split()[2]

        def auth(secret: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {secret}"}

        with httpx.Client(base_url=base, timeout=60) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/v1/deliveries").status_code == 401
            posted = http.post("/v1/events", json=event_body("acme"), headers=auth(publisher))
            assert posted.status_code == 202, posted.text
            assert (
                http.post(
                    "/v1/events", json=event_body("globex"), headers=auth(publisher)
                ).status_code
                == 403
            )
            seen = http.get("/v1/deliveries", headers=auth(auditor))
            assert [d["event_id"] for d in seen.json()["deliveries"]] == ["new-acme"]
            assert http.get("/v1/deliveries", headers=auth(publisher)).status_code == 403
            refused = http.get("/v1/deliveries", headers=auth(revoked))
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert "Traceback" not in err
    for secret in (publisher, auditor, revoked):
        assert secret not in err  # never logged


class _CountingDatabase:
    """Store calls as the dispatcher's database thread makes them, counted, each
    held until `opened` is set."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.calls = 0
        self.opened = asyncio.Event()
        self.fail: Exception | None = None

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        self.calls += 1
        await self.opened.wait()
        if self.fail is not None:
            raise self.fail
        return call(*args)


@dataclass
class _GuardHost:
    db: _CountingDatabase
    now: float

    def clock(self) -> float:
        return self.now

    async def token(self, digest: str) -> Any:
        """As Dispatcher.token: one lookup on the database thread."""
        return await self.db.run(tokens.find_by_hash, self.db.store, digest)


def _guarded(world: World) -> tuple[Guard, _CountingDatabase, str]:
    secret = world.headers("publisher@acme")["Authorization"].removeprefix("Bearer ")
    db = _CountingDatabase(world.store)
    return Guard(_GuardHost(db, world.clock.now)), db, secret  # type: ignore[arg-type]


def test_requests_missing_the_cache_together_share_one_lookup(world: World) -> None:
    guard, db, secret = _guarded(world)

    async def main() -> list[Any]:
        waiting = [asyncio.ensure_future(guard.authenticate(secret)) for _ in range(50)]
        await asyncio.sleep(0)
        db.opened.set()
        return await asyncio.gather(*waiting)

    accesses = asyncio.run(main())
    assert db.calls == 1
    assert {access.may("send") for access in accesses} == {True}
    assert {access.sees("acme") for access in accesses} == {True}


def test_one_request_leaving_does_not_end_the_lookup_the_others_wait_for(world: World) -> None:
    guard, db, secret = _guarded(world)

    async def main() -> tuple[bool, list[Any]]:
        first = asyncio.ensure_future(guard.authenticate(secret))
        others = [asyncio.ensure_future(guard.authenticate(secret)) for _ in range(3)]
        await asyncio.sleep(0)
        first.cancel()  # the client that started the lookup goes away
        await asyncio.sleep(0)
        db.opened.set()
        results = await asyncio.gather(*others)
        return first.cancelled(), results

    cancelled, accesses = asyncio.run(main())
    assert cancelled
    assert db.calls == 1
    assert [access.may("send") for access in accesses] == [True, True, True]


def test_a_failed_shared_lookup_fails_each_waiter_and_the_next_request_looks_again(
    world: World,
) -> None:
    guard, db, secret = _guarded(world)
    db.fail = RuntimeError("the state is unreachable")

    async def main() -> tuple[list[Any], Any]:
        waiting = [asyncio.ensure_future(guard.authenticate(secret)) for _ in range(3)]
        await asyncio.sleep(0)
        db.opened.set()
        failures = await asyncio.gather(*waiting, return_exceptions=True)
        db.fail = None
        return failures, await guard.authenticate(secret)

    failures, access = asyncio.run(main())
    assert [str(f) for f in failures] == ["the state is unreachable"] * 3
    assert db.calls == 2
    assert access.may("send")


def test_an_unknown_token_looked_up_together_is_refused_for_each(world: World) -> None:
    guard, db, _ = _guarded(world)
    unknown = "rcn_" + "A" * 43

    async def main() -> list[Any]:
        waiting = [asyncio.ensure_future(guard.authenticate(unknown)) for _ in range(3)]
        await asyncio.sleep(0)
        db.opened.set()
        return await asyncio.gather(*waiting, return_exceptions=True)

    refusals = asyncio.run(main())
    assert db.calls == 1
    assert [(type(r), r.status) for r in refusals] == [(AuthError, 401)] * 3
