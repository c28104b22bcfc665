"""Worker: what is sent: headers, signatures, the body, the live definition at send time,
secrets kept out of logs."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pytest_httpx import HTTPXMock
from standardwebhooks import Webhook

from reconciler.store.base import Write
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    FakeClock,
    spec,
)
from tests.unit.worker.helpers import (
    EVENT_TIME,
    NEW_SECRET,
    SECRET,
    START,
    live,
    once,
    queue,
    shown,
)

# -- what is sent -------------------------------------------------------------------


def test_headers_sent_definition_webhook_id_timestamp_and_a_verifiable_signature(
    store: SqliteStore, httpx_mock: HTTPXMock
) -> None:
    clock = FakeClock(float(int(time.time())))  # the reference library checks freshness
    live(
        store,
        spec(
            "a",
            headers={
                "Content-Type": "application/json",
                "X-Custom": "yes",
                "Authorization": "Bearer ${env:ACME_TOKEN}",
            },
            signing_secret="${env:ACME_SIGNING}",
        ),
    )
    delivery = queue(store, clock)
    httpx_mock.add_response()
    once(store, clock, env={"ACME_TOKEN": "t0ken", "ACME_SIGNING": SECRET})

    (request,) = httpx_mock.get_requests()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-custom"] == "yes"
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["webhook-id"] == delivery
    assert request.headers["webhook-timestamp"] == str(int(clock.now))
    assert request.headers["webhook-signature"].startswith("v1,")
    payload = Webhook(SECRET).verify(request.content, dict(request.headers))
    assert payload["text"].startswith("The rule no-public-s3")


def test_during_a_rotation_both_secrets_sign(store: SqliteStore, httpx_mock: HTTPXMock) -> None:
    clock = FakeClock(float(int(time.time())))
    live(store, spec("a", signing_secret="${env:ACME_OLD_SECRET} ${env:ACME_NEW_SECRET}"))
    queue(store, clock)
    httpx_mock.add_response()
    once(store, clock, env={"ACME_OLD_SECRET": SECRET, "ACME_NEW_SECRET": NEW_SECRET})
    (request,) = httpx_mock.get_requests()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, NEW_SECRET):
        Webhook(secret).verify(request.content, dict(request.headers))


def test_no_signing_secret_no_signature(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_response()
    once(store, clock)
    (request,) = httpx_mock.get_requests()
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == delivery
    assert request.headers["webhook-timestamp"] == str(int(START))


@pytest.mark.parametrize(
    ("fields", "variable"),
    [
        ({"url": "${env:ACME_URL}"}, "ACME_URL"),
        ({"url": "https://hooks.example.com/${env:ACME_PATH}"}, "ACME_PATH"),
        ({"headers": {"Authorization": "Bearer ${env:ACME_TOKEN}"}}, "ACME_TOKEN"),
        ({"query": {"key": "${env:ACME_KEY}"}}, "ACME_KEY"),
        ({"signing_secret": "${env:ACME_SIGNING}"}, "ACME_SIGNING"),
    ],
)
def test_an_unset_environment_variable_fails_the_delivery_and_sends_nothing(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    fields: dict[str, Any],
    variable: str,
) -> None:
    live(store, spec("a", **fields))
    delivery = queue(store, clock)
    assert once(store, clock, env={"UNRELATED": "x"}) == 1

    assert httpx_mock.get_requests() == []
    record, attempts = shown(store, delivery)
    assert record.status == "failed"
    assert record.attempts == 0  # nothing went out
    assert record.last_error == f"environment variable {variable} is not set"
    assert [(a.outcome, a.status) for a in attempts] == [("failed", None)]
    clock.now += 100_000
    assert once(store, clock, env={"UNRELATED": "x"}) == 0  # failed, not retried


def test_a_signing_secret_that_is_not_base64_fails_without_showing_it(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: the worker catches SigningSecretError only around collecting the
    # secrets; signature_header() decodes them later, outside that try, so the
    # error escapes run_once and takes the batch (and the worker loop) down.
    live(store, spec("a", signing_secret="${env:ACME_SIGNING}"))
    delivery = queue(store, clock)
    once(store, clock, env={"ACME_SIGNING": "whsec_not*base64!!"})
    assert httpx_mock.get_requests() == []
    record, _ = shown(store, delivery)
    assert record.status == "failed"
    assert "whsec_<base64>" in (record.last_error or "")
    assert "not*base64" not in (record.last_error or "")


@pytest.mark.parametrize(
    ("fields", "env", "words"),
    [
        ({"url": "${env:ACME_URL}"}, {"ACME_URL": "ftp://files.example.com/x"}, "url"),
        ({"url": "${env:ACME_URL}"}, {"ACME_URL": "https://hooks.example.com/a b"}, "url"),
        (
            {"headers": {"Authorization": "${env:ACME_TOKEN}"}},
            {"ACME_TOKEN": "t0ken\r\nX-Injected: 1"},
            "line break",
        ),
    ],
)
def test_an_unusable_resolved_value_fails_the_delivery_and_sends_nothing(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    fields: dict[str, Any],
    env: dict[str, str],
    words: str,
) -> None:
    live(store, spec("a", **fields))
    delivery = queue(store, clock)
    once(store, clock, env=env)
    assert httpx_mock.get_requests() == []
    record, _ = shown(store, delivery)
    assert (record.status, record.attempts) == ("failed", 0)
    assert words in (record.last_error or "")
    for value in env.values():
        assert value not in (record.last_error or "")


def test_a_webhook_deleted_after_queueing_is_cancelled_and_nothing_is_sent(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    store.commit([Write("delete", "acme", "a")], [], store.state().serial)

    once(store, clock)

    assert httpx_mock.get_requests() == []
    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts) == ("cancelled", 0)
    assert "deleted" in (record.last_error or "")
    assert attempts == []


def test_a_webhook_disabled_after_queueing_is_cancelled_and_nothing_is_sent(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    live(store, spec("a", enabled=False))

    assert once(store, clock) == 1

    assert httpx_mock.get_requests() == []
    record, _ = shown(store, delivery)
    assert (record.status, record.attempts) == ("cancelled", 0)
    assert "disabled" in (record.last_error or "")


@pytest.mark.httpx_mock(assert_all_requests_were_expected=False)
def test_a_webhook_moved_to_another_event_type_after_queueing_is_not_sent_this_event(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: the worker checks that the live webhook still exists and is enabled,
    # but not that it still listens to this event type: after an apply moves it
    # to reserved_instance_surplus, a queued new_rule_violation is still sent,
    # rendered with the surplus template. Expected: cancelled, as when disabled.
    live(store, spec("a"))
    delivery = queue(store, clock)
    live(store, spec("a", event="reserved_instance_surplus"))

    once(store, clock)

    assert httpx_mock.get_requests() == []
    assert shown(store, delivery)[0].status == "cancelled"


def test_a_change_applied_after_queueing_is_what_is_sent(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(store, spec("a"))
    delivery = queue(store, clock)
    live(
        store,
        spec(
            "a",
            url="https://new.example.com/hook",
            headers={"Content-Type": "application/json", "X-Version": "2"},
            body={"v": 2, "rule": "{{name}}"},
        ),
    )
    httpx_mock.add_response(url="https://new.example.com/hook")

    once(store, clock)

    (request,) = httpx_mock.get_requests()
    assert str(request.url) == "https://new.example.com/hook"
    assert request.headers["x-version"] == "2"
    assert json.loads(request.content) == {"v": 2, "rule": "no-public-s3"}
    assert shown(store, delivery)[0].status == "delivered"


HOSTILE = [
    'say "hi"',
    "back\\slash \\u0000 \\n",
    "new\nline\r\n\ttab",
    "{{time}} {{name}} {{event_id}}",
    "${env:SECRET} and ${env:ACME_TOKEN}",
    "</script><script>alert(1)</script>",
    "é 🚀 \u2028 \u0001 \u001f \u007f",
    '{"text": "injected"}',
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_event_values_give_valid_json_with_the_value_verbatim(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, value: str
) -> None:
    live(
        store,
        spec(
            "a",
            headers={"Content-Type": "application/json", "Authorization": "${env:ACME_TOKEN}"},
            body={
                "text": "{{name}}",
                "details": {"description": "{{description}}"},
                "list": ["{{name}}", 1, True, None],
                "both": "rule {{name}}: {{description}}",
            },
        ),
    )
    queue(store, clock, name=value, description=value)
    httpx_mock.add_response()
    once(store, clock, env={"SECRET": "leaked-secret", "ACME_TOKEN": "leaked-token"})

    (request,) = httpx_mock.get_requests()
    body = json.loads(request.content)
    assert body == {
        "text": value,
        "details": {"description": value},
        "list": [value, 1, True, None],
        "both": f"rule {value}: {value}",
    }
    assert b"leaked-secret" not in request.content
    assert b"leaked-token" not in request.content
    assert EVENT_TIME.encode() not in request.content  # {{time}} in a value stays text


def test_a_relaxed_json_body_is_sent_as_strict_json(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(
        store,
        spec("a", body="{ text: 'The rule {{name}} was violated at: {{time}}. {{description}}' }"),
    )
    queue(store, clock, description='It\'s "bad"')
    httpx_mock.add_response()
    once(store, clock)
    (request,) = httpx_mock.get_requests()
    assert json.loads(request.content) == {
        "text": f'The rule no-public-s3 was violated at: {EVENT_TIME}. It\'s "bad"'
    }


def test_get_sends_the_query_percent_encoded_and_no_body(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    live(
        store,
        spec(
            "a",
            method="GET",
            body=None,
            headers={},
            url="https://hooks.example.com/{{organization}}/{{name}}",
            query={"rule": "{{name}}", "at": "{{time}}", "key": "${env:ACME_KEY}"},
        ),
    )
    name = "a b&c=d/../é?#"
    queue(store, clock, name=name)
    httpx_mock.add_response()
    once(store, clock, env={"ACME_KEY": "k&v"})

    (request,) = httpx_mock.get_requests()
    assert request.method == "GET"
    assert request.content == b""
    assert "content-type" not in request.headers
    raw_query = request.url.query.decode("ascii")
    assert " " not in raw_query
    assert "#" not in raw_query
    assert parse_qs(raw_query) == {"rule": [name], "at": [EVENT_TIME], "key": ["k&v"]}
    # the value stays inside its path segment, encoded
    path = request.url.raw_path.partition(b"?")[0]
    assert path.startswith(b"/acme/")
    assert path.count(b"/") == 2
    assert b".." not in path
    assert request.url.path == f"/acme/{name}"
    assert request.url.host == "hooks.example.com"


def test_a_get_is_signed_over_an_empty_body(store: SqliteStore, httpx_mock: HTTPXMock) -> None:
    clock = FakeClock(float(int(time.time())))
    live(
        store,
        spec("a", method="GET", body=None, headers={}, signing_secret="${env:ACME_SIGNING}"),
    )
    queue(store, clock)
    httpx_mock.add_response()
    once(store, clock, env={"ACME_SIGNING": SECRET})
    (request,) = httpx_mock.get_requests()
    Webhook(SECRET).verify(b"", dict(request.headers), json_parse=False)


def test_a_secret_url_never_reaches_the_log_or_the_delivery_record(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slack = "https://hooks.slack.com/services/T0/B0/SECRET"
    live(store, spec("a", url="${env:ACME_SLACK_URL}"))
    delivery = queue(store, clock)
    httpx_mock.add_exception(httpx.ConnectError(f"cannot connect to {slack}"))
    with caplog.at_level(logging.DEBUG):
        once(store, clock, env={"ACME_SLACK_URL": slack})
    record, attempts = shown(store, delivery)
    assert record.status == "pending"
    assert "SECRET" not in (record.last_error or "")
    assert all("SECRET" not in (a.error or "") for a in attempts)
    assert caplog.records  # each attempt is logged...
    assert "SECRET" not in caplog.text  # ...without the secret


@pytest.mark.parametrize(
    "value", ["http://[SECHOST4]/x", "http://[SECHOST4/x", "http://SECHOST4\uff03x/y"]
)
def test_a_malformed_secret_url_fails_as_a_rendering_error_that_never_shows_it(
    store: SqliteStore,
    clock: FakeClock,
    httpx_mock: HTTPXMock,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    live(store, spec("a", url="${env:ACME_HOOK_URL}"))
    delivery = queue(store, clock)
    with caplog.at_level(logging.DEBUG):
        assert once(store, clock, env={"ACME_HOOK_URL": value}) == 1

    assert httpx_mock.get_requests() == []
    record, attempts = shown(store, delivery)
    assert (record.status, record.attempts) == ("failed", 0)  # permanent; nothing sent
    assert record.last_error == (
        "the resolved url is not usable: it is not a valid URL (its host is malformed)"
    )
    assert [(a.outcome, a.error) for a in attempts] == [("failed", record.last_error)]
    assert caplog.records  # the attempt is logged...
    assert "SECHOST4" not in caplog.text  # ...without the secret, and without a traceback
    assert not any(r.exc_info for r in caplog.records)
