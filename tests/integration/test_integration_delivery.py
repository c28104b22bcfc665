"""Integration: the real worker, a real SQLite store and a real HTTP receiver on
loopback, in one process. Time is an injected fake clock: after a retryable
failure the test moves the clock past the delivery's due time and runs the
worker again, so no test waits for a backoff.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from reconciler.apply import ApplyOptions, changes_to_writes
from reconciler.dispatch.retry import RETRY_AFTER_CAP
from reconciler.dispatch.sender import USER_AGENT
from reconciler.dispatch.service import make_sender
from reconciler.dispatch.ssrf import NetworkPolicy
from reconciler.dispatch.worker import Database, Worker, WorkerSettings
from reconciler.events import EventIn
from reconciler.store.queue import AttemptRecord, DeliveryRecord, EventKey, IntakeResult
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import FakeClock, definition, plan_folder, write_definition
from tests.support.receiver import Receiver, hang, hold, ok, redirect, reset, status

ORG = "acme"
EVENT = "new_rule_violation"
# The receiver listens on loopback, which the dispatcher refuses unless the deployment
# allows it: these tests allow exactly 127.0.0.1, as `--allow-cidr 127.0.0.1/32` does.
LOOPBACK_ALLOWED = NetworkPolicy.from_options(False, ["127.0.0.1/32"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
        assert not running.errors, running.errors


class World:
    """Definitions on disk, applied to a real store; events fired into its queue;
    a real worker over a fake clock."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "webhooks.d"
        self.folder.mkdir()
        self.store = SqliteStore(root / "state.db")
        # Real-looking time: a receiver checks webhook-timestamp against its own clock.
        self.clock = FakeClock(start=float(int(time.time())))

    def define(self, name: str, organization: str = ORG, **fields: Any) -> Path:
        return write_definition(self.folder, organization, definition(name, **fields))

    def apply(self) -> None:
        """What `reconciler apply --auto-approve` does, through the library."""
        plan = plan_folder(self.store, self.folder)
        options = ApplyOptions(actor="integration-test", allow_delete=True, force=True)
        writes, audit = changes_to_writes(plan, options)
        self.store.commit(writes, audit, expected_serial=plan.serial)

    def fire(
        self,
        name: str = "no-public-s3",
        description: str = "bucket logs is public",
        organization: str = ORG,
        event: str = EVENT,
        event_id: str | None = None,
    ) -> IntakeResult:
        """Intake as POST /v1/events does it: validated, then stored with its deliveries."""
        data = {"type": event, "organization": organization, "name": name}
        data["description"] = description
        if event_id is not None:
            data["id"] = event_id
        return self.store.add_event(EventIn.model_validate(data).record(), self.clock())

    def deliveries(self, event_id: str, organization: str = ORG) -> list[DeliveryRecord]:
        return self.store.deliveries(event=EventKey(organization, event_id), limit=1000)

    def only_delivery(self, event_id: str) -> DeliveryRecord:
        (record,) = self.deliveries(event_id)
        return record

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        found = self.store.delivery(delivery_id)
        assert found is not None
        return found[1]

    def advance_past(self, record: DeliveryRecord) -> None:
        """Move the fake clock just past a delivery's due time."""
        assert record.due_at is not None
        self.clock.now = max(self.clock.now, record.due_at + 0.001)

    @contextlib.asynccontextmanager
    async def worker(
        self, env: Mapping[str, str] | None = None, policy: NetworkPolicy = LOOPBACK_ALLOWED
    ) -> AsyncIterator[Worker]:
        db = Database(self.store)
        sender = make_sender(10, policy)
        try:
            yield Worker(db, sender, env=dict(env or {}), clock=self.clock, policy=policy)
        finally:
            await sender.aclose()
            db.close()

    def run(
        self,
        rounds: int = 1,
        env: Mapping[str, str] | None = None,
        policy: NetworkPolicy = LOOPBACK_ALLOWED,
    ) -> list[int]:
        """Run the worker `rounds` times at the current fake time; how many each handled."""

        async def go() -> list[int]:
            async with self.worker(env, policy) as worker:
                return [await worker.run_once() for _ in range(rounds)]

        return asyncio.run(go())

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    try:
        yield made
    finally:
        made.close()


BODY = {
    "text": "The rule {{name}} was violated at: {{time}}. Description {{description}}.",
    "event_id": "{{event_id}}",
    "webhook": "{{webhook}}",
}


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


# -- outcomes ---------------------------------------------------------------------------


def test_a_2xx_is_delivered_with_the_definitions_request(world: World, receiver: Receiver) -> None:
    world.define(
        "notify",
        url=receiver.url("/hook"),
        headers={"Content-Type": "application/json", "X-Team": "platform"},
        body=BODY,
    )
    world.apply()
    intake = world.fire()
    assert intake.deliveries == 1

    assert world.run(rounds=2) == [1, 0]

    record = world.only_delivery(intake.event_id)
    assert (record.status, record.attempts, record.last_status) == ("delivered", 1, 200)
    (attempt,) = world.attempts(record.id)
    assert (attempt.outcome, attempt.status, attempt.response_excerpt) == ("delivered", 200, "ok")
    (request,) = receiver.requests()
    assert request.method == "POST"
    assert request.target == "/hook"
    assert request.header("Content-Type") == "application/json"
    assert request.header("X-Team") == "platform"
    assert request.header("User-Agent") == USER_AGENT
    assert request.header("webhook-id") == record.id
    assert request.header("webhook-timestamp") == str(int(world.clock()))
    assert request.header("webhook-signature") is None  # no signing secret, no signature
    event = world.store.event(intake.key)
    assert event is not None
    assert request.json() == {
        "text": f"The rule no-public-s3 was violated at: {event.time}. "
        "Description bucket logs is public.",
        "event_id": intake.event_id,
        "webhook": "notify",
    }


def test_a_500_is_retried_later_and_then_delivered_with_the_same_webhook_id(
    world: World, receiver: Receiver
) -> None:
    receiver.script("/hook", status(500, body=b"boom"), ok())
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()

    assert world.run() == [1]
    waiting = world.only_delivery(intake.event_id)
    assert (waiting.status, waiting.attempts, waiting.last_status) == ("pending", 1, 500)
    assert waiting.due_at is not None and waiting.due_at > world.clock()
    assert world.run() == [0]  # not due yet: nothing is sent before its time
    assert len(receiver.requests()) == 1

    world.advance_past(waiting)
    assert world.run() == [1]

    done = world.only_delivery(intake.event_id)
    assert (done.status, done.attempts, done.last_status) == ("delivered", 2, 200)
    assert [(a.number, a.outcome, a.status) for a in world.attempts(done.id)] == [
        (1, "retry", 500),
        (2, "delivered", 200),
    ]
    assert world.attempts(done.id)[0].response_excerpt == "boom"
    first, second = receiver.requests()
    assert first.header("webhook-id") == second.header("webhook-id") == done.id
    assert first.body == second.body


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_429_retry_after_is_honoured(world: World, receiver: Receiver, form: str) -> None:
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()
    now = world.clock()
    retry_after = "120" if form == "seconds" else formatdate(now + 120, usegmt=True)
    receiver.script("/hook", status(429, {"Retry-After": retry_after}), ok())

    assert world.run() == [1]

    waiting = world.only_delivery(intake.event_id)
    assert (waiting.status, waiting.last_status) == ("pending", 429)
    assert waiting.due_at is not None
    assert now + 120 <= waiting.due_at <= now + RETRY_AFTER_CAP
    (attempt,) = world.attempts(waiting.id)
    assert attempt.response_headers.get("retry-after") == retry_after
    world.clock.now = now + 119  # the default first backoff (about 5 s) is long past
    assert world.run() == [0]
    world.advance_past(waiting)
    assert world.run() == [1]
    assert world.only_delivery(intake.event_id).status == "delivered"


def test_a_timeout_is_retried_with_an_error_that_says_so(world: World, receiver: Receiver) -> None:
    receiver.script("/slow", hang(2.0), ok())
    world.define("notify", url=receiver.url("/slow"), body=BODY, timeout="500ms")
    world.apply()
    intake = world.fire()

    assert world.run() == [1]

    waiting = world.only_delivery(intake.event_id)
    assert (waiting.status, waiting.attempts, waiting.last_status) == ("pending", 1, None)
    assert waiting.last_error is not None and "timed out" in waiting.last_error
    (attempt,) = world.attempts(waiting.id)
    assert attempt.outcome == "retry" and attempt.status is None
    world.advance_past(waiting)
    assert world.run() == [1]
    assert world.only_delivery(intake.event_id).status == "delivered"


def test_connection_refused_is_retried_and_not_called_a_timeout(world: World) -> None:
    world.define("notify", url=f"http://127.0.0.1:{free_port()}/hook", body=BODY)
    world.apply()
    intake = world.fire()

    assert world.run() == [1]

    waiting = world.only_delivery(intake.event_id)
    assert (waiting.status, waiting.attempts, waiting.last_status) == ("pending", 1, None)
    assert waiting.due_at is not None and waiting.due_at > world.clock()
    error = waiting.last_error or ""
    # Nothing listens there: the attempt failed at once. "timed out after 15s" would
    # send an operator looking for a slow receiver instead of a down one.
    assert "timed out" not in error, error
    assert "connect" in error.lower(), error


def test_a_connection_closed_without_an_answer_is_retried(world: World, receiver: Receiver) -> None:
    receiver.script("/hook", reset(), ok())
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()

    assert world.run() == [1]

    waiting = world.only_delivery(intake.event_id)
    assert (waiting.status, waiting.attempts, waiting.last_status) == ("pending", 1, None)
    assert waiting.last_error
    assert "timed out" not in waiting.last_error, waiting.last_error  # it was reset, at once
    world.advance_past(waiting)
    assert world.run() == [1]
    assert world.only_delivery(intake.event_id).status == "delivered"
    ids = {r.header("webhook-id") for r in receiver.requests()}
    assert ids == {waiting.id}


def test_a_404_fails_at_once_and_is_never_retried(world: World, receiver: Receiver) -> None:
    receiver.script("/hook", status(404, body=b"no such hook"))
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()

    assert world.run() == [1]

    failed = world.only_delivery(intake.event_id)
    assert (failed.status, failed.attempts, failed.last_status) == ("failed", 1, 404)
    assert failed.due_at is None
    world.clock.sleep(30 * 86400)
    assert world.run() == [0]
    assert len(receiver.requests()) == 1
    (attempt,) = world.attempts(failed.id)
    assert (attempt.outcome, attempt.response_excerpt) == ("failed", "no such hook")


def test_a_failed_delivery_replays_with_the_same_webhook_id(
    world: World, receiver: Receiver
) -> None:
    receiver.script("/hook", status(404), ok())
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()
    assert world.run() == [1]
    failed = world.only_delivery(intake.event_id)
    assert failed.status == "failed"

    assert world.store.replay([failed.id], world.clock()) == [failed.id]
    assert world.run() == [1]

    assert world.only_delivery(intake.event_id).status == "delivered"
    assert [r.header("webhook-id") for r in receiver.requests()] == [failed.id, failed.id]


def test_a_410_fails_and_pauses_the_webhook_which_plan_shows_as_drift(
    world: World, receiver: Receiver
) -> None:
    receiver.script("/gone", status(410))
    world.define("gone", url=receiver.url("/gone"), body=BODY)
    world.define("other", url=receiver.url("/other"), body=BODY)
    world.apply()
    intake = world.fire()

    assert world.run() == [2]

    by_webhook = {d.webhook: d for d in world.deliveries(intake.event_id)}
    assert (by_webhook["gone"].status, by_webhook["gone"].last_status) == ("failed", 410)
    assert by_webhook["other"].status == "delivered"
    paused = {w.name: w.paused_reason for w in world.store.webhooks(ORG)}
    assert paused["other"] is None
    assert paused["gone"] is not None and "410" in paused["gone"]

    plan = plan_folder(world.store, world.folder)
    assert [(d.name, d.paused_reason) for d in plan.drift] == [("gone", paused["gone"])]
    assert [(c.action, c.name, c.resumes) for c in plan.changes] == [
        ("update", "gone", paused["gone"])
    ]
    (entry,) = [e for e in world.store.history(ORG, "gone") if e.record.action == "pause"]
    assert entry.record.actor == "dispatcher"

    # A paused webhook's new deliveries are held, said so at intake, never sent...
    later = world.fire(event_id="after-the-410")
    assert [h.webhook for h in later.held] == ["gone"]
    by_webhook = {d.webhook: d for d in world.deliveries(later.event_id)}
    assert by_webhook["gone"].status == "held"
    receiver.script("/gone", status(200))
    assert world.run() == [1]
    assert [r.path for r in receiver.requests()].count("/gone") == 1
    # ...until it is resumed: then what was held is sent.
    assert world.store.resume(ORG, "gone", "alice") == "resumed"
    world.clock.now = time.time() + 1
    assert world.run() == [1]
    by_webhook = {d.webhook: d for d in world.deliveries(later.event_id)}
    assert by_webhook["gone"].status == "delivered"


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_fails_and_its_location_is_never_requested(
    world: World, receiver: Receiver, code: int
) -> None:
    receiver.script("/hook", redirect(receiver.url("/elsewhere"), code))
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()

    assert world.run() == [1]

    failed = world.only_delivery(intake.event_id)
    assert (failed.status, failed.attempts, failed.last_status) == ("failed", 1, code)
    assert failed.last_error is not None and "redirect" in failed.last_error
    (attempt,) = world.attempts(failed.id)
    assert attempt.response_headers.get("location") == receiver.url("/elsewhere")
    assert [r.path for r in receiver.requests()] == ["/hook"]
    assert receiver.requests("/elsewhere") == []


def test_one_event_fans_out_to_each_matching_webhook_with_its_own_webhook_id(
    world: World, receiver: Receiver
) -> None:
    names = [f"hook-{i:02d}" for i in range(20)]
    for name in names:
        world.define(name, url=receiver.url(f"/fan/{name}"), body=BODY)
    world.define("other-event", url=receiver.url("/no"), event="reserved_instance_surplus")
    world.define("disabled", url=receiver.url("/no"), enabled=False)
    world.define("elsewhere", organization="globex", url=receiver.url("/no"))
    world.apply()
    intake = world.fire()
    assert intake.deliveries == 20

    assert world.run(rounds=2) == [20, 0]

    records = world.deliveries(intake.event_id)
    assert sorted(r.webhook for r in records) == names
    assert {r.status for r in records} == {"delivered"}
    requests = receiver.requests()
    assert sorted(r.path for r in requests) == [f"/fan/{name}" for name in names]
    ids = [r.header("webhook-id") for r in requests]
    assert len(set(ids)) == 20
    assert set(ids) == {r.id for r in records}
    for request in requests:
        sent_for = request.json()["webhook"]
        assert request.path == f"/fan/{sent_for}"
        assert request.header("webhook-id") == next(r.id for r in records if r.webhook == sent_for)


# -- rendering what arrives ------------------------------------------------------------------

HOSTILE = [
    pytest.param(
        'say "hi" \\ \\n \\" \'single\' \n new line \r\t tab',
        'back\\slash\\\\ "quoted" \u0001 \u001f \u007f \u2028 \u2029 end',
        id="quotes-backslashes-controls",
    ),
    pytest.param(
        "{{time}} {{description}} {{ name }}",
        "${env:SECRET} and ${env:PATH} {{webhook}}",
        id="placeholders-and-env-references",
    ),
    pytest.param(
        "ünïcödé ✓ 日本語 🚀 עברית",
        '</script><script>alert(1)</script> %s %(x)s {"json": true} \ufeff',
        id="unicode-and-markup",
    ),
]


@pytest.mark.parametrize(("name", "description"), HOSTILE)
def test_hostile_event_values_arrive_verbatim_in_valid_json(
    world: World, receiver: Receiver, name: str, description: str
) -> None:
    world.define(
        "notify",
        url=receiver.url("/hook"),
        headers={"Content-Type": "application/json", "Authorization": "Bearer ${env:ACME_SECRET}"},
        body={
            "name": "{{name}}",
            "description": "{{description}}",
            "both": "[{{name}}|{{description}}]",
            "nested": {"list": ["{{name}}", 1, True, None], "n": 2.5},
        },
    )
    world.apply()
    intake = world.fire(name=name, description=description)

    assert world.run(
        env={"ACME_SECRET": "s3cr3t-value", "SECRET": "s3cr3t-value", "PATH": "/usr/bin"}
    ) == [1]

    assert world.only_delivery(intake.event_id).status == "delivered"
    (request,) = receiver.requests()
    text = request.body.decode("utf-8")  # strict UTF-8
    sent = json.loads(text)  # strict JSON
    assert sent == {
        "name": name,
        "description": description,
        "both": f"[{name}|{description}]",
        "nested": {"list": [name, 1, True, None], "n": 2.5},
    }
    # An env reference in event data is data: never resolved.
    assert "s3cr3t-value" not in text
    assert "/usr/bin" not in text
    assert request.header("Authorization") == "Bearer s3cr3t-value"


@pytest.mark.parametrize("name", [".", "..", "../admin", "a/b", "a b?c#d%25e&f=g", "ünï", "%2E%2E"])
def test_an_event_value_in_the_url_path_stays_in_its_segment(
    world: World, receiver: Receiver, name: str
) -> None:
    world.define("notify", url=receiver.url("/hooks/{{name}}/in"), body=BODY)
    world.apply()
    intake = world.fire(name=name)

    assert world.run() == [1]

    assert world.only_delivery(intake.event_id).status == "delivered"
    (request,) = receiver.requests()
    segments = request.path.split("/")
    assert len(segments) == 4, request.path  # "", "hooks", <the value>, "in"
    assert (segments[0], segments[1], segments[3]) == ("", "hooks", "in"), request.path
    assert unquote(segments[2]) == name, request.path


def test_get_sends_a_percent_encoded_query_and_no_body(world: World, receiver: Receiver) -> None:
    name = "a b&c=d+e/f?g#h%i é ${env:TOKEN} {{time}}"
    world.define(
        "lookup",
        method="GET",
        url=receiver.url("/search?fixed=1"),
        headers={},
        body=None,
        query={"rule": "{{name}}", "org": "{{organization}}", "token": "${env:ACME_TOKEN}", "n": 3},
    )
    world.apply()
    intake = world.fire(name=name)

    assert world.run(env={"ACME_TOKEN": "t&k=n", "TOKEN": "t&k=n"}) == [1]

    assert world.only_delivery(intake.event_id).status == "delivered"
    (request,) = receiver.requests()
    assert request.method == "GET"
    assert request.path == "/search"
    assert request.body == b""
    assert request.header("Content-Length") in (None, "0")
    assert request.header("Content-Type") is None
    assert " " not in request.target and "#" not in request.target
    assert "+" not in request.query  # a literal + would arrive as a space
    pairs = request.query_pairs()
    assert pairs[0] == ("fixed", "1")  # the url's own query comes first
    assert sorted(pairs[1:]) == [("n", "3"), ("org", ORG), ("rule", name), ("token", "t&k=n")]


@pytest.mark.parametrize(
    "where",
    [
        {"url": "${env:ACME_HOOK_URL}"},
        {"headers": {"Authorization": "Bearer ${env:ACME_HOOK_TOKEN}"}},
        {"query": {"token": "${env:ACME_HOOK_TOKEN}"}},
        {"signing_secret": "${env:ACME_HOOK_SECRET}"},
    ],
    ids=["url", "header", "query", "signing_secret"],
)
def test_an_unset_env_reference_fails_clearly_and_sends_nothing(
    world: World, receiver: Receiver, where: dict[str, Any]
) -> None:
    fields: dict[str, Any] = {"url": receiver.url("/hook"), "body": BODY, **where}
    world.define("notify", **fields)
    world.apply()
    intake = world.fire()

    assert world.run(env={"UNRELATED": "x"}) == [1]

    failed = world.only_delivery(intake.event_id)
    assert failed.status == "failed"
    missing = next(
        n for n in ("ACME_HOOK_URL", "ACME_HOOK_TOKEN", "ACME_HOOK_SECRET") if n in str(where)
    )
    assert failed.last_error == f"environment variable {missing} is not set"
    world.clock.sleep(86400)
    assert world.run() == [0]
    assert receiver.requests() == []


# -- signatures and identity ----------------------------------------------------------------


def test_signatures_verify_at_the_receiver_with_standardwebhooks(
    world: World, receiver: Receiver
) -> None:
    old, new = new_secret(), new_secret()
    receiver.script("/hook", status(503), ok())
    world.define("single", url=receiver.url("/hook"), body=BODY, signing_secret="${env:ACME_NEW}")
    world.define(
        "rotating",
        url=receiver.url("/rotating"),
        body=BODY,
        signing_secret="${env:ACME_OLD} ${env:ACME_NEW}",
    )
    world.define(
        "bodiless",
        method="GET",
        url=receiver.url("/get"),
        headers={},
        body=None,
        query={"rule": "{{name}}"},
        signing_secret="${env:ACME_NEW}",
    )
    world.apply()
    intake = world.fire(name='rule "x"\n')
    env = {"ACME_OLD": old, "ACME_NEW": new}

    assert world.run(env=env) == [3]
    world.advance_past(next(d for d in world.deliveries(intake.event_id) if d.webhook == "single"))
    assert world.run(env=env) == [1]  # the retry, signed afresh

    assert {d.status for d in world.deliveries(intake.event_id)} == {"delivered"}
    ids = {d.webhook: d.id for d in world.deliveries(intake.event_id)}
    first, retried = receiver.requests("/hook")
    for request in (first, retried):
        assert Webhook(new).verify(request.body, request.header_map)["event_id"] == intake.event_id
        assert request.header("webhook-id") == ids["single"]
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(request.body, request.header_map)
    assert first.header("webhook-timestamp") != retried.header("webhook-timestamp")

    (rotating,) = receiver.requests("/rotating")
    assert len(rotating.header("webhook-signature").split(" ")) == 2  # type: ignore[union-attr]
    for secret in (old, new):
        assert Webhook(secret).verify(rotating.body, rotating.header_map)["webhook"] == "rotating"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(rotating.body, rotating.header_map)

    (bodiless,) = receiver.requests("/get")
    assert bodiless.body == b""
    Webhook(new).verify(b"", bodiless.header_map, json_parse=False)


def test_webhook_id_stays_the_same_through_a_timeout_a_503_and_success(
    world: World, receiver: Receiver
) -> None:
    receiver.script("/hook", hang(2.0), status(503), ok())
    world.define("notify", url=receiver.url("/hook"), body=BODY, timeout="500ms")
    world.apply()
    intake = world.fire()

    for _ in range(3):
        assert world.run() == [1]
        record = world.only_delivery(intake.event_id)
        if record.status == "pending":
            world.advance_past(record)

    record = world.only_delivery(intake.event_id)
    assert (record.status, record.attempts) == ("delivered", 3)
    assert [a.outcome for a in world.attempts(record.id)] == ["retry", "retry", "delivered"]
    requests = receiver.requests()
    assert [r.header("webhook-id") for r in requests] == [record.id] * 3
    assert len({r.body for r in requests}) == 1


# -- the definition's other promises ------------------------------------------------------


def test_retries_exhausted_fail_the_delivery_and_say_so(world: World, receiver: Receiver) -> None:
    receiver.script("/hook", status(500))
    world.define("notify", url=receiver.url("/hook"), body=BODY, retry={"schedule": ["1s"]})
    world.apply()
    intake = world.fire()

    assert world.run() == [1]
    world.advance_past(world.only_delivery(intake.event_id))
    assert world.run() == [1]

    failed = world.only_delivery(intake.event_id)
    assert (failed.status, failed.attempts, failed.last_status) == ("failed", 2, 500)
    assert failed.last_error == "HTTP 500; retries exhausted after 2 attempts"
    assert [d.id for d in world.store.deliveries(status="failed")] == [failed.id]
    world.clock.sleep(86400)
    assert world.run() == [0]
    assert len(receiver.requests()) == 2


def test_a_retry_goes_to_the_url_applied_since_the_first_attempt(
    world: World, receiver: Receiver
) -> None:
    receiver.script("/old", status(502))
    world.define("notify", url=receiver.url("/old"), body=BODY)
    world.apply()
    intake = world.fire()
    assert world.run() == [1]
    waiting = world.only_delivery(intake.event_id)

    world.define("notify", url=receiver.url("/new"), body=BODY)
    world.apply()
    world.advance_past(waiting)
    assert world.run() == [1]

    assert world.only_delivery(intake.event_id).status == "delivered"
    (old,) = receiver.requests("/old")
    (new,) = receiver.requests("/new")
    assert old.header("webhook-id") == new.header("webhook-id") == waiting.id


def test_a_webhook_disabled_before_its_delivery_is_sent_is_cancelled(
    world: World, receiver: Receiver
) -> None:
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()
    world.define("notify", url=receiver.url("/hook"), body=BODY, enabled=False)
    world.apply()

    assert world.run() == [1]

    cancelled = world.only_delivery(intake.event_id)
    assert (cancelled.status, cancelled.attempts) == ("cancelled", 0)
    assert cancelled.last_error == "cancelled: the webhook is disabled"
    assert receiver.requests() == []


def test_a_huge_answer_costs_one_excerpt(world: World, receiver: Receiver) -> None:
    receiver.script("/hook", ok(b"x" * 2_000_000))
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()

    assert world.run() == [1]

    record = world.only_delivery(intake.event_id)
    assert record.status == "delivered"
    (attempt,) = world.attempts(record.id)
    assert 0 < len(attempt.response_excerpt) <= 4096


def test_rate_limit_caps_requests_to_the_webhook(world: World, receiver: Receiver) -> None:
    """rate_limit: 1/s means at most one request to the webhook per second of the
    dispatcher's clock; the others wait (pending), they do not fail."""
    world.define("slack", url=receiver.url("/slack"), body=BODY, rate_limit="1/s")
    world.apply()
    events = [world.fire(event_id=f"evt-{i}").event_id for i in range(3)]

    world.run(rounds=3)  # the clock stands still

    assert len(receiver.requests()) == 1
    statuses = sorted(world.only_delivery(e).status for e in events)
    assert statuses == ["delivered", "pending", "pending"]
    for second in range(1, 10):
        world.clock.now += 1.0
        world.run()
        assert len(receiver.requests()) <= second + 1
        if all(world.only_delivery(e).status == "delivered" for e in events):
            break
    assert all(world.only_delivery(e).status == "delivered" for e in events)


# -- the network policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "127\u30020\u30020\u30021",  # ideographic full stops, which IDNA reads as dots
        "127\uff0e0\uff0e0\uff0e1",  # full-width full stops
        "127\uff610\uff610\uff611",  # half-width ideographic full stops
        "a@127.0.0.1",
    ],
)
def test_without_the_deployments_consent_nothing_reaches_loopback(
    world: World, receiver: Receiver, host: str
) -> None:
    # A user in a URL is a literal credential to validate: here it names nobody.
    allowed = {"allow_literal": ["url"]} if "@" in host else {}
    world.define("notify", url=f"http://{host}:{receiver.port}/hook", body=BODY, **allowed)
    world.apply()
    intake = world.fire()

    assert world.run(policy=NetworkPolicy()) == [1]

    failed = world.only_delivery(intake.event_id)
    assert failed.status == "failed"  # no retry will change the policy
    assert failed.last_error is not None
    assert failed.last_error.startswith(f"refused: {host.rpartition('@')[2]} ")
    assert "loopback" in failed.last_error and "--allow-cidr" in failed.last_error
    world.clock.sleep(86400)
    assert world.run(policy=NetworkPolicy()) == [0]
    assert receiver.requests() == []


@pytest.mark.parametrize(
    "host", ["127\u30020\u30020\u30021", "127\uff0e0\uff0e0\uff0e1", "127\uff610\uff610\uff611"]
)
def test_a_secret_url_resolved_at_send_time_is_judged_as_the_address_it_reaches(
    world: World, receiver: Receiver, host: str
) -> None:
    world.define("notify", url="${env:ACME_NOTIFY_URL}", body=BODY)
    world.apply()
    intake = world.fire()
    env = {"ACME_NOTIFY_URL": f"http://{host}:{receiver.port}/hook"}

    assert world.run(env=env, policy=NetworkPolicy()) == [1]

    failed = world.only_delivery(intake.event_id)
    assert (failed.status, failed.attempts) == ("failed", 0)
    assert failed.last_error == (
        f"refused: {host} means 127.0.0.1, a loopback address "
        "(allow with --allow-private-networks or --allow-cidr)"
    )
    assert [a.outcome for a in world.attempts(failed.id)] == ["failed"]
    assert receiver.requests() == []


def test_an_allowed_network_does_not_open_the_others(world: World, receiver: Receiver) -> None:
    world.define("notify", url=receiver.url("/hook"), body=BODY)
    world.apply()
    intake = world.fire()

    assert world.run(policy=NetworkPolicy.from_options(False, ["10.0.0.0/8"])) == [1]

    assert world.only_delivery(intake.event_id).status == "failed"
    assert receiver.requests() == []


def test_a_hanging_receiver_holds_its_cap_of_slots_and_every_other_webhook_is_served(
    world: World, receiver: Receiver
) -> None:
    """A receiver that accepts the connection and never answers, with a backlog queued
    before anyone else's: it holds its max_in_flight of the worker's slots, and the
    deliveries of another organization and of a healthy webhook of the same
    organization still arrive, through the slots left."""
    gate = threading.Event()  # the hanging receiver answers only once the test is done
    receiver.script("/dead", hold(gate))
    world.define("dead", url=receiver.url("/dead"), timeout="60s", max_in_flight=3)
    world.define("healthy", url=receiver.url("/healthy"), event="reserved_instance_surplus")
    world.define("other", "globex", url=receiver.url("/other"))
    world.apply()
    for n in range(50):
        world.fire(event_id=f"stuck-{n}")
    world.clock.now += 1
    for n in range(20):
        world.fire(event_id=f"surplus-{n}", event="reserved_instance_surplus")
        world.fire(event_id=f"g-{n}", organization="globex")

    async def scenario() -> tuple[int, int]:
        db = Database(world.store)
        sender = make_sender(10, LOOPBACK_ALLOWED)
        settings = WorkerSettings(batch=10, concurrency=10, poll_interval=0.01)
        worker = Worker(db, sender, clock=world.clock, policy=LOOPBACK_ALLOWED, settings=settings)
        stopping = threading.Event()
        running = asyncio.create_task(worker.run_forever(stopping.is_set, asyncio.Event()))
        try:
            for path in ("/healthy", "/other"):
                await asyncio.to_thread(receiver.wait_for, 20, path)
            held = len(receiver.requests("/dead"))
            in_flight = sum(
                1 for r in world.store.deliveries(webhook="dead", limit=100)
                if r.status == "in_flight"
            )  # fmt: skip
        finally:
            stopping.set()
            gate.set()
            await asyncio.wait_for(running, timeout=30)
            await sender.aclose()
            db.close()
        return held, in_flight

    held, in_flight = asyncio.run(scenario())
    assert (held, in_flight) == (3, 3)
    for organization, prefix in (("acme", "surplus"), ("globex", "g")):
        for n in range(20):
            (record,) = world.deliveries(f"{prefix}-{n}", organization)
            assert record.status == "delivered"
