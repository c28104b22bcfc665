"""What an attempt sent, kept beside its response: shown by `deliveries show` and the
API, secrets never in the state (over the HTTP client and CliRunner, on a real
SQLite file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from pytest_httpx import HTTPXMock

from reconciler.cli import cli
from reconciler.store.sqlite import SqliteStore
from tests.integration.test_api import Api, call
from tests.integration.test_api import clock as clock
from tests.support.helpers_state import FakeClock, put_specs, spec, sqlite_url

TOKEN = "s3cr3t-token-value-0123"
KEY = "hook-key-9f8e7d6c"
ENV = {"ACME_TOKEN": TOKEN, "ACME_HOOK_KEY": KEY}
SENT_URL = f"https://hooks.example.com/secret?key={KEY}"


def test_an_attempt_keeps_the_request_as_sent_without_its_secrets(
    tmp_path: Path, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    put_specs(
        store,
        [
            spec(
                "s",
                url="https://hooks.example.com/secret?key=${env:ACME_HOOK_KEY}",
                headers={"Authorization": "Bearer ${env:ACME_TOKEN}", "X-Team": "ops"},
                body={"text": "rule {{name}}"},
            )
        ],
    )
    httpx_mock.add_response(url=SENT_URL, status_code=503, text="try later")

    async def scenario(api: Api) -> dict[str, Any]:
        await api.post_event(id="e1")
        await api.deliver()
        (record,) = await api.dispatcher.deliveries(organizations=None)
        return (await api.http.get(f"/v1/deliveries/{record.id}")).json()

    try:
        shown = call(store, clock, scenario, env=ENV)
    finally:
        store.close()

    # the receiver got the real values...
    (sent,) = httpx_mock.get_requests()
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    # ...the state keeps the request with references in their place
    (attempt,) = shown["attempts_log"]
    request = attempt["request"]
    assert request["method"] == "POST"
    assert request["url"] == "https://hooks.example.com/secret?key=${env:ACME_HOOK_KEY}"
    assert request["headers"]["Authorization"] == "Bearer ${env:ACME_TOKEN}"
    assert request["headers"]["X-Team"] == "ops"
    assert request["headers"]["webhook-id"] == shown["id"]
    assert json.loads(request["body"]) == {"text": "rule no-public-s3"}
    assert attempt["response_excerpt"] == "try later"
    # not one byte of a secret in the database's files
    for file in tmp_path.glob("state.db*"):
        data = file.read_bytes()
        assert TOKEN.encode() not in data and KEY.encode() not in data, file.name

    text = CliRunner().invoke(cli, ["deliveries", "show", shown["id"], "--state", sqlite_url(path)])
    assert text.exit_code == 0, text.output
    assert "       request:  POST https://hooks.example.com/secret?key=${env:ACME_HOOK_KEY}" in (
        text.output
    )
    assert "                 Authorization: Bearer ${env:ACME_TOKEN}" in text.output
    assert TOKEN not in text.output


def test_a_literal_credential_header_is_masked_before_it_is_kept(
    tmp_path: Path, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    put_specs(store, [spec("s", headers={"Authorization": "Basic bGl0ZXJhbDpzZWNyZXQ="})])
    httpx_mock.add_response(status_code=200)

    async def scenario(api: Api) -> httpx.Response:
        await api.post_event(id="e1")
        await api.deliver()
        (record,) = await api.dispatcher.deliveries(organizations=None)
        return await api.http.get(f"/v1/deliveries/{record.id}")

    try:
        shown = call(store, clock, scenario).json()
    finally:
        store.close()
    (attempt,) = shown["attempts_log"]
    assert attempt["request"]["headers"]["Authorization"] != "Basic bGl0ZXJhbDpzZWNyZXQ="
    assert "bGl0ZXJhbDpzZWNyZXQ=" not in json.dumps(shown)
    # (the definition itself holds it here, put without validate; a literal credential
    # needs allow_literal, and plans and history mask it)


def test_a_receiver_that_echoes_the_request_leaves_no_secret_in_the_state(
    tmp_path: Path, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    """What the receiver answers is kept too (excerpt, headers): a receiver that
    echoes the request's Authorization header and URL back has the secret values put
    back as their references before anything is written."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    put_specs(
        store,
        [
            spec(
                "s",
                url="https://hooks.example.com/secret?key=${env:ACME_HOOK_KEY}",
                headers={"Authorization": "Bearer ${env:ACME_TOKEN}"},
            )
        ],
    )
    echoed = f'{{"you_sent": "Bearer {TOKEN}", "url": "{SENT_URL}"}}'
    httpx_mock.add_response(
        url=SENT_URL,
        status_code=400,
        text=echoed,
        headers={"Location": SENT_URL, "Content-Type": "application/json"},
    )

    async def scenario(api: Api) -> dict[str, Any]:
        await api.post_event(id="e1")
        await api.deliver()
        (record,) = await api.dispatcher.deliveries(organizations=None)
        return (await api.http.get(f"/v1/deliveries/{record.id}")).json()

    try:
        shown = call(store, clock, scenario, env=ENV)
    finally:
        store.close()
    (attempt,) = shown["attempts_log"]
    assert attempt["response_excerpt"] == (
        '{"you_sent": "Bearer ${env:ACME_TOKEN}", '
        '"url": "https://hooks.example.com/secret?key=${env:ACME_HOOK_KEY}"}'
    )
    assert attempt["response_headers"]["location"] == (
        "https://hooks.example.com/secret?key=${env:ACME_HOOK_KEY}"
    )
    for file in tmp_path.glob("state.db*"):
        data = file.read_bytes()
        assert TOKEN.encode() not in data and KEY.encode() not in data, file.name
