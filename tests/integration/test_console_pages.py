"""The console's pages over HTTP: filters, keyset paging, replay, history's field
changes, the activity chart and the New webhook form, on SQLite."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpx import HTTPXMock

from reconciler.loader import load_definitions
from reconciler.store.base import AuditRecord, Write
from tests.support.console import Console, add_event, console_over, csrf_of, deliver
from tests.support.helpers_state import put_specs, snapshot, spec


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    with console_over(tmp_path / "state.db") as made:
        put_specs(
            made.store,
            [
                spec("slack"),
                spec("pager", event="reserved_instance_surplus"),
                spec("quiet", enabled=False),
                spec("ops", "globex"),
            ],
        )
        yield made


def _ids(html: str) -> list[str]:
    return re.findall(r'href="/ui/deliveries/([^"?/]+)"', html)


def _older(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">Older</a>', html)
    return found.group(1).replace("&amp;", "&") if found else None


def test_deliveries_page_through_with_a_cursor_and_keep_their_filters(
    console: Console,
) -> None:
    for n in range(120):
        console.clock.now += 1
        add_event(console, "acme", f"e{n:03}")  # one delivery each: slack
    add_event(console, "globex", "g1")
    client = console.signed_in("acme", role="auditor")
    seen: list[str] = []
    url: str | None = "/ui/deliveries?org=acme&status=pending"
    pages = 0
    while url:
        page = client.get(url)
        assert page.status_code == 200
        seen += _ids(page.text)
        url = _older(page.text)
        pages += 1
        if url:
            assert "status=pending" in url and "org=acme" in url and "after=" in url
    assert pages == 3
    everything = console.store.deliveries(organizations=["acme"], limit=1000)
    assert len(seen) == len(set(seen)) == 120
    assert set(seen) == {d.id for d in everything}
    created = {d.id: d.created_at for d in everything}
    assert [created[i] for i in seen] == sorted((created[i] for i in seen), reverse=True)
    assert _ids(client.get("/ui/deliveries?status=delivered").text) == []
    surplus = client.get("/ui/deliveries?event=reserved_instance_surplus").text
    assert _ids(surplus) == []
    window = client.get("/ui/deliveries?since=2027-01-15T08:00:10Z&until=2027-01-15T08:00:20Z").text
    assert len(_ids(window)) == 10
    assert _ids(client.get("/ui/deliveries?after=not-a-cursor").text)  # ignored, not a 500


def test_the_webhooks_page_filters_pages_and_shows_last_outcomes(
    console: Console, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url="https://hooks.example.com/slack", status_code=200)
    add_event(console, "acme", "e1")
    deliver(console)
    client = console.signed_in("acme", "globex")
    page = client.get("/ui/webhooks").text
    assert page.index(">pager<") < page.index(">slack<") < page.index(">ops<")  # by org, name
    row = page[page.index(">slack<") :].split("</tr>")[0]
    assert "delivered" in row and "100.0% of 1" in row
    only_acme = client.get("/ui/webhooks?org=acme").text
    assert ">ops<" not in only_acme and ">slack<" in only_acme
    surplus = client.get("/ui/webhooks?event=reserved_instance_surplus").text
    assert ">pager<" in surplus and ">slack<" not in surplus
    disabled = client.get("/ui/webhooks?state=disabled").text
    assert ">quiet<" in disabled and ">slack<" not in disabled
    put_specs(console.store, [spec(f"w{n:03}") for n in range(60)])
    first = client.get("/ui/webhooks?org=acme").text
    following = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first)
    assert following is not None
    second = client.get(following.group(1).replace("&amp;", "&")).text
    names = re.findall(r'/ui/webhooks/acme/([^"]+)"', first + second)
    assert len(names) == len(set(names)) == 63


def test_replay_as_admin_sends_again_and_is_refused_to_an_auditor(
    console: Console, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url="https://hooks.example.com/slack", status_code=400)
    httpx_mock.add_response(url="https://hooks.example.com/slack", status_code=200)
    add_event(console, "acme", "e1")
    deliver(console)
    (record,) = console.store.deliveries(organizations=["acme"])
    assert record.status == "failed"

    auditor = console.signed_in("acme", role="auditor")
    page = auditor.get(f"/ui/deliveries/{record.id}")
    assert "Replay" not in page.text and "HTTP 400" in page.text
    refused = auditor.post(
        f"/ui/deliveries/{record.id}/replay", data={"csrf_token": csrf_of(page.text)}
    )
    assert refused.status_code == 403 and "may not replay" in refused.text

    admin = console.signed_in("acme")
    page = admin.get(f"/ui/deliveries/{record.id}")
    assert '<button type="submit">Replay</button>' in page.text
    answer = admin.post(
        f"/ui/deliveries/{record.id}/replay", data={"csrf_token": csrf_of(page.text)}
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/ui/deliveries/{record.id}?replayed=1"
    queued = admin.get(answer.headers["location"]).text
    assert "Queued again" in queued and "pending" in queued
    again = admin.post(f"/ui/deliveries/{record.id}/replay", data={"csrf_token": csrf_of(queued)})
    assert again.status_code == 409 and "not replayable yet" in again.text  # pending
    deliver(console)
    after = admin.get(f"/ui/deliveries/{record.id}").text
    assert re.search(r'id="delivery-status">delivered', after)
    assert after.count('<th scope="row">') == 2  # two attempts
    other = console.signed_in("globex")
    assert (
        other.post(
            f"/ui/deliveries/{record.id}/replay",
            data={"csrf_token": csrf_of(other.get("/ui/webhooks").text)},
        ).status_code
        == 404
    )


def test_history_shows_each_change_field_by_field_masked_and_filtered(
    console: Console,
) -> None:
    before = spec("slack").canonical()
    after = spec(
        "slack",
        url="https://hooks.example.com/v2",
        headers={"Authorization": "Bearer abcdef0123456789xyz"},
    ).canonical()
    console.store.commit(
        [
            Write(
                "put",
                "acme",
                "slack",
                spec("slack", url="https://hooks.example.com/v2").canonical_json(),
            )
        ],
        [
            AuditRecord("update", "acme", "slack", before, after, "alice", "0a1b2c3d4e5f"),
            AuditRecord("create", "globex", "ops", None, spec("ops", "globex").canonical(), "bob"),
        ],
        expected_serial=console.store.state().serial,
    )
    client = console.signed_in("acme", "globex", role="auditor")
    page = client.get("/ui/history").text
    assert "abcdef0123456789xyz" not in page
    assert '<th scope="row">url</th>' in page
    assert "https://hooks.example.com/slack" in page and "https://hooks.example.com/v2" in page
    assert "0a1b2c3d4e5f" in page
    alice = client.get("/ui/history?actor=alice").text
    assert "by alice" in alice and "by bob" not in alice
    created = client.get("/ui/history?action=create").text
    assert "by bob" in created and "by alice" not in created
    assert '<th scope="row">url</th><td><code>(not set)</code></td>' in created  # by field
    assert "by alice" in client.get("/ui/history?webhook=slack").text
    assert "No entries match" in client.get("/ui/history?since=2999-01-01T00:00:00Z").text
    detail = client.get("/ui/webhooks/acme/slack").text
    assert "0a1b2c3d4e5f" in detail and "webhooks.d/acme/slack.yaml" in detail


def test_activity_draws_the_day_and_counts_closed_minutes_once(console: Console) -> None:
    add_event(console, "acme", "e1")
    add_event(console, "acme", "e2")
    ids = [d.id for d in console.store.deliveries(organizations=["acme"])]
    now = console.clock()
    db_path = console.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(db_path) as db:
        db.executemany(
            "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status, "
            "outcome) VALUES (?, 1, ?, ?, ?, ?)",
            [
                (ids[0], now - 3600, 120.0, 200, "delivered"),
                (ids[1], now - 1800, 900.0, 400, "failed"),
            ],
        )
    client = console.signed_in("acme")
    page = client.get("/ui/activity").text
    assert "<svg" in page and "delivered 1" in page and "failed 1" in page
    assert "p95 duration" in page
    # a closed minute is counted once: an attempt slipped into it later is not seen
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE attempts SET outcome = 'delivered'")
    assert "failed 1" in client.get("/ui/activity").text
    console.clock.now += 86_400
    later = console.signed_in("acme")  # the first session ran out meanwhile
    assert "delivered 0" in later.get("/ui/activity").text


# -- New webhook -------------------------------------------------------------------------

RELAXED = "{\n  text: 'nOps detected a violation of {{name}} at: {{time}}. {{description}}.'\n}"


def _check(client: object, form: dict[str, str]) -> dict[str, object]:
    page = client.get("/ui/new")  # type: ignore[attr-defined]
    answer = client.post(  # type: ignore[attr-defined]
        "/ui/new/check", data=form, headers={"X-CSRF-Token": csrf_of(page.text)}
    )
    assert answer.status_code == 200
    return answer.json()  # type: ignore[no-any-return]


def test_the_form_turns_relaxed_json_into_a_file_validate_accepts(
    console: Console, tmp_path: Path
) -> None:
    client = console.signed_in("acme")
    before = snapshot(console.store)
    form = {
        "organization": "acme",
        "name": "slack-new-violations",
        "event": "new_rule_violation",
        "method": "POST",
        "url": "${env:ACME_SLACK_URL}",
        "headers": "Content-Type: application/json",
        "body": RELAXED,
    }
    result = _check(client, form)
    assert result["problems"] == [], result
    assert result["path"] == "webhooks.d/acme/slack-new-violations.yaml"
    text = str(result["yaml"])
    assert "text: 'nOps detected a violation of {{name}}" in text
    assert "POST ${env:ACME_SLACK_URL}" in str(result["request"])
    assert '"text": "nOps detected a violation of sample-rule' in str(result["request"])
    target = tmp_path / "repo" / str(result["path"])
    target.parent.mkdir(parents=True)
    target.write_text(text, encoding="utf-8")
    loaded = load_definitions(tmp_path / "repo" / "webhooks.d")
    assert loaded.problems == [] and [d.spec.key for d in loaded.definitions] == [
        ("acme", "slack-new-violations")
    ]
    download = client.get(str(result["download"]))
    assert download.status_code == 200 and download.text == text
    assert "attachment" in download.headers["content-disposition"]
    page = client.get("/ui/new")
    no_js = client.post("/ui/new", data={**form, "csrf_token": csrf_of(page.text)})
    assert no_js.status_code == 200
    assert "slack-new-violations.yaml" in no_js.text and ">Download</a>" in no_js.text
    assert '<label for="yaml">YAML file</label>' in no_js.text
    assert snapshot(console.store) == before  # nothing written to the live state


def test_a_broken_body_is_located_within_the_body(console: Console) -> None:
    client = console.signed_in("acme")
    result = _check(
        client,
        {
            "organization": "acme",
            "name": "x",
            "url": "https://hooks.example.com/x",
            "body": "{\n  text: 'fine',\n  oops\n}",
        },
    )
    (problem,) = result["problems"]  # type: ignore[misc]
    assert (problem["field"], problem["line"], problem["in"]) == ("body", 4, "field")
    assert problem["text"].startswith("Body, line 4, column ")
    assert result["yaml"] is None
    page = client.get("/ui/new")
    no_js = client.post(
        "/ui/new",
        data={
            "organization": "acme",
            "name": "x",
            "url": "https://h.example.com/",
            "body": "{ text: 'a', }}",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert 'role="alert"' in no_js.text and "Body, line 1, column 15: " in no_js.text
    assert "of the body" not in no_js.text and 'id="path-line" hidden' in no_js.text


def test_the_form_refuses_what_validate_refuses(console: Console) -> None:
    client = console.signed_in("acme")
    literal = _check(
        client,
        {
            "organization": "acme",
            "name": "x",
            "url": "https://hooks.example.com/x",
            "headers": "Authorization: Bearer abcdefghijklmnop0123456789",
            "body": "{}",
        },
    )
    assert [p["field"] for p in literal["problems"]] == ["headers"]  # type: ignore[index, union-attr]
    assert "abcdefghijklmnop0123456789" not in str(literal)
    elsewhere = _check(
        client, {"organization": "globex", "name": "x", "url": "https://a.example.com/"}
    )
    assert "out of this token's scope" in str(elsewhere["problems"])


def test_a_rare_filter_searches_on_page_by_page(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.store import console as store_console

    monkeypatch.setattr(store_console, "SEARCH_ROWS", 40)
    for n in range(100):
        console.clock.now += 1
        add_event(console, "acme", f"e{n:03}")
    client = console.signed_in("acme")
    url: str | None = "/ui/deliveries?status=delivered"
    notes = []
    while url:
        page = client.get(url)
        assert page.status_code == 200 and _ids(page.text) == []
        notes.append("Searched 40 deliveries back" in page.text)
        url = _older(page.text)
    assert notes == [True, True, False]  # 100 deliveries, 40 a search: the last ends them
