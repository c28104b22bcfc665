"""Endpoint health: the stores' per-webhook aggregates against the rows they come from,
the view built from them, and `reconciler webhooks status`, on SQLite and PostgreSQL.

Times are injected (`NOW`); the window is the hour (NOW - 3600, NOW].
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.health import WINDOW, breaker_states, endpoint_health
from reconciler.health_report import WIDTH, report_text
from reconciler.store import health_sql
from reconciler.store.queue import AttemptResult, Claim, EventRecord, WebhookAggregates
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import put_specs, spec

NOW = 1_800_000_000.0
SINCE = NOW - WINDOW
SECRET_ERROR = "transport error: https://bot:hunter2secret@hooks.example.com/x?token=abc123"


def event(event_id: str, organization: str = "acme") -> EventRecord:
    return EventRecord(
        event_id, "new_rule_violation", organization, "r", "", "2026-11-29T21:22:42Z"
    )


def open_any(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Any, str]:
    if kind == "sqlite":
        path = tmp_path / "state.db"
        return SqliteStore(path), f"sqlite:///{path}"
    from reconciler.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    return PostgresStore(url), url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    store, url = open_any(request.param, tmp_path, request)
    try:
        put_specs(
            store,
            [
                spec("a", max_in_flight=100),  # every delivery is claimed at once
                spec("b", max_in_flight=100),
                spec("c", enabled=False),
                spec("a", "globex"),
            ],
        )
        yield store, url
    finally:
        store.close()


@pytest.fixture
def store(state: tuple[Any, str]) -> Any:
    return state[0]


def claims_of(store: Any, count: int, at: float) -> dict[str, list[Claim]]:
    """Claim everything due at `at`, by organization/webhook."""
    found: dict[str, list[Claim]] = {}
    for claim in store.claim("w", count, at, 90.0):
        found.setdefault(f"{claim.organization}/{claim.webhook}", []).append(claim)
    for claims in found.values():
        claims.sort(key=lambda c: c.event.id)
    return found


def finish(store: Any, claim: Claim, outcome: str, started: float, ms: float, **more: Any) -> None:
    result = AttemptResult(claim.delivery_id, claim.attempt, started, ms, outcome, **more)  # type: ignore[arg-type]
    assert store.finish([result], "w", started + 1) == 1


def by_key(rows: list[WebhookAggregates]) -> dict[str, WebhookAggregates]:
    return {f"{r.organization}/{r.webhook}": r for r in rows}


@pytest.fixture
def traffic(store: Any) -> Any:
    """acme/a: 20 attempts in the window (durations 10..200 ms; 18 delivered, one
    retry due later, one failed with a URL in its error) and two before it, one of
    them exactly at the window's start; acme/b: one delivered, 21 in flight; both:
    two deliveries due since NOW - 50."""
    store.add_events([event(f"e{i:02}") for i in range(22)], NOW - 7200)
    claimed = claims_of(store, 100, NOW - 7200)
    a, b = claimed["acme/a"], claimed["acme/b"]
    for i in range(18):
        finish(store, a[i], "delivered", SINCE + 1 + i, (i + 1) * 10.0)
    finish(store, a[18], "retry", SINCE + 19, 190.0, status=503, next_due=NOW + 600)
    finish(store, a[19], "failed", SINCE + 20, 200.0, error=SECRET_ERROR)
    finish(store, a[20], "delivered", SINCE, 99_999.0)  # at the boundary: outside
    finish(store, a[21], "failed", NOW - 4000, 5.0, status=500)
    finish(store, b[0], "delivered", NOW - 10, 42.0)
    store.add_events([event("late-1"), event("late-2")], NOW - 50)
    return store


def test_the_aggregates_match_the_rows(traffic: Any) -> None:
    rows = by_key(traffic.webhook_health(None, NOW, SINCE))

    assert list(rows) == ["acme/a", "acme/b", "acme/c", "globex/a"]
    a = rows["acme/a"]
    assert (a.enabled, a.paused_reason) == (True, None)
    assert (a.in_flight, a.pending_due, a.pending_later) == (0, 2, 1)
    assert a.oldest_due_at == NOW - 50
    # 20 attempts in (NOW - 3600, NOW]: the one at NOW - 3600 and the one before are out.
    assert (a.attempts, a.delivered) == (20, 18)
    assert a.p95_ms == 190.0  # nearest rank: the 19th of 20 (the 99,999 ms one is out)
    assert a.last_success_at == SINCE + 18 + 1  # the 18th delivered, recorded 1 s after
    assert a.last_failure_at == SINCE + 20
    assert a.last_failure_error == SECRET_ERROR  # as stored; the view masks it
    b = rows["acme/b"]
    assert (b.in_flight, b.pending_due, b.pending_later) == (21, 2, 0)
    assert (b.attempts, b.delivered, b.p95_ms) == (1, 1, 42.0)
    assert (b.last_success_at, b.last_failure_at) == (NOW - 9, None)
    c = rows["acme/c"]
    assert (c.enabled, c.attempts, c.p95_ms, c.last_success_at) == (False, 0, None, None)
    assert (c.pending_due, c.in_flight, c.oldest_due_at) == (0, 0, None)


def test_the_window_moves_with_now(traffic: Any) -> None:
    later = NOW + 10
    a = by_key(traffic.webhook_health(None, later, later - WINDOW))["acme/a"]
    # The attempts at SINCE + 1 .. SINCE + 10 have left the window.
    assert (a.attempts, a.delivered) == (10, 8)
    assert a.p95_ms == 200.0  # of 110..200 ms, nearest rank ceil(9.5): the 10th


def test_only_the_organizations_asked_are_read(traffic: Any) -> None:
    assert [r.organization for r in traffic.webhook_health(["globex"], NOW, SINCE)] == ["globex"]
    assert [r.webhook for r in traffic.webhook_queue(["globex"], NOW)] == ["a"]
    assert traffic.webhook_health([], NOW, SINCE) == []


def test_a_failure_before_the_window_is_shown_while_its_retry_waits(store: Any) -> None:
    store.add_events([event("old")], NOW - 7200)
    claim = claims_of(store, 10, NOW - 7200)["acme/a"][0]
    finish(store, claim, "retry", NOW - 7200, 30.0, status=502, next_due=NOW + 3600)

    a = by_key(store.webhook_health(None, NOW, SINCE))["acme/a"]

    assert (a.attempts, a.p95_ms) == (0, None)
    assert (a.last_failure_at, a.last_failure_status) == (NOW - 7200, 502)
    assert (a.pending_due, a.pending_later, a.oldest_due_at) == (0, 1, None)


def test_a_delivery_failed_for_good_long_ago_is_the_last_failure(store: Any) -> None:
    store.add_events([event("e1"), event("e2")], NOW - 90_000)
    a1, a2 = claims_of(store, 10, NOW - 90_000)["acme/a"]
    finish(store, a1, "failed", NOW - 90_000, 30.0, status=404)
    finish(store, a2, "delivered", NOW - 80_000, 30.0)

    a = by_key(store.webhook_health(None, NOW, SINCE))["acme/a"]

    assert (a.last_failure_at, a.last_failure_status) == (NOW - 90_000, 404)
    assert a.last_success_at == NOW - 80_000 + 1


def test_the_view_masks_reasons_and_reads_the_breaker_from_one_place(traffic: Any) -> None:
    report = endpoint_health(traffic, ["acme"], NOW)

    a = {w.webhook: w for w in report.webhooks}["a"]
    assert a.success_rate == 0.9
    assert a.breaker == "closed"
    assert a.oldest_due_age == 50.0
    assert a.last_failure_reason is not None
    assert "hunter2secret" not in a.last_failure_reason
    assert "abc123" not in a.last_failure_reason
    assert "hooks.example.com" in a.last_failure_reason
    data = report.as_json()
    assert data["as_of"] == "2027-01-15T08:00:00Z"
    row = data["webhooks"][0]
    assert row["last_failure_at"] == "2027-01-15T07:00:20Z"
    assert row["oldest_due_at"] == "2027-01-15T07:59:10Z"
    assert row["backlog"] == 3
    assert {w["state"] for w in data["webhooks"]} == {"enabled", "disabled"}
    assert "hunter2secret" not in json.dumps(data)
    assert breaker_states(traffic, [("acme", "a")]) == {("acme", "a"): "closed"}


def test_a_paused_webhook_says_so_and_why(store: Any) -> None:
    store.pause("acme", "b", "paused by the dispatcher after HTTP 410 on msg_1", "dispatcher")
    report = endpoint_health(store, ["acme"], NOW)
    b = {w.webhook: w for w in report.webhooks}["b"]
    assert b.state == "paused"
    assert "paused: paused by the dispatcher after HTTP 410" in report_text(report)


def test_the_text_table_fits_100_columns(traffic: Any) -> None:
    text = report_text(endpoint_health(traffic, None, NOW))
    lines = text.splitlines()
    assert lines[0] == ("as of 2027-01-15T08:00:00Z; OK (success rate) and P95 over the last 1h")
    assert lines[1].split() == [
        "WEBHOOK", "STATE", "BREAKER", "FLIGHT", "DUE", "LATER", "OLDEST", "OK", "P95",
        "LAST", "OK",
    ]  # fmt: skip
    assert lines[2].split() == [
        "acme/a", "enabled", "closed", "0", "2", "1", "50s", "90.0%", "190ms", "59m", "ago",
    ]  # fmt: skip
    assert lines[3].startswith("    last failure 59m ago (2027-01-15T07:00:20Z): transport error")
    assert all(len(line) <= WIDTH for line in lines)
    assert "hunter2secret" not in text


def test_the_query_reads_deliveries_and_attempts_by_index_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    put_specs(store, [spec("a"), spec("b")])
    store.add_events([event(f"e{i}") for i in range(300)], NOW - 7200)
    for claim in store.claim("w", 1000, NOW - 7200, 90.0)[:500]:
        finish(store, claim, "delivered", NOW - 7200, 10.0)
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("ANALYZE")  # statistics that make a status look unselective
    for template in (health_sql.HEALTH, health_sql.QUEUE):
        for filtered in (True, False):
            query = health_sql.query(template, "sqlite", filtered)
            args = health_sql.params("sqlite", ["acme"] if filtered else None, NOW, SINCE)
            plan = [row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + query, args)]
            # d, f, x: deliveries; a: attempts. A SCAN of them reads every row.
            assert not [line for line in plan if re.match(r"SCAN (d|f|x|a)\b", line)], plan
    db.close()


# -- the command ----------------------------------------------------------------------


def test_the_command_shows_text_and_json(state: tuple[Any, str]) -> None:
    store, url = state
    now = time.time()
    store.add_events([event("e1"), event("e2"), event("g1", "globex")], now - 120)
    claims = claims_of(store, 10, now - 120)
    finish(store, claims["acme/a"][0], "delivered", now - 100, 25.0)
    finish(store, claims["acme/a"][1], "retry", now - 90, 75.0, error=SECRET_ERROR, next_due=now)
    finish(store, claims["globex/a"][0], "delivered", now - 60, 5.0)
    runner = CliRunner()

    text = runner.invoke(cli, ["webhooks", "status", "--state", url, "--org", "acme"])
    data = runner.invoke(
        cli, ["webhooks", "status", "--state", url, "--org", "acme", "--format", "json"]
    )

    assert text.exit_code == 0, text.output
    rows = {line.split()[0]: line.split() for line in text.output.splitlines()[2:]}
    assert rows["acme/a"][1:3] == ["enabled", "closed"]
    assert rows["acme/c"][1:3] == ["disabled", "closed"]
    assert "globex" not in text.output
    assert "50.0%" in text.output
    assert "hunter2secret" not in text.output
    assert data.exit_code == 0, data.output
    report = json.loads(data.output)
    assert report["window_seconds"] == WINDOW
    assert [w["webhook"] for w in report["webhooks"]] == ["a", "b", "c"]
    a = report["webhooks"][0]
    assert (a["attempts"], a["success_rate"], a["p95_ms"], a["breaker"]) == (2, 0.5, 75.0, "closed")
    assert a["backlog"] == a["pending_due"] + a["pending_later"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", a["last_success_at"])
    assert "hooks.example.com" in a["last_failure_reason"]
    assert "hunter2secret" not in data.output and "abc123" not in data.output


def test_the_command_on_a_state_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["webhooks", "status", "--state", f"sqlite:///{tmp_path / 'none.db'}"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("error: no state at")
    assert "Traceback" not in result.output
