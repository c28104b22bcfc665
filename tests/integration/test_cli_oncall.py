"""The on-call's commands, through the CLI (CliRunner): held deliveries at intake and
resume, `fire --webhook`, `deliveries retry`, and the deliveries' filters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from reconciler.cli import cli
from reconciler.store.queue import EventKey
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import put_specs, spec, sqlite_url

GONE = "paused by the dispatcher after HTTP 410 on msg_x"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    try:
        put_specs(
            store,
            [
                spec("slack-alerts"),
                spec("pager"),
                spec("off", enabled=False),
                spec("surplus", event="reserved_instance_surplus"),
                spec("slack-alerts", "globex"),
            ],
        )
    finally:
        store.close()
    return path


@pytest.fixture
def store(state: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(state)
    yield opened
    opened.close()


def run(state: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--state", sqlite_url(state)])


def fire(state: Path, *args: str) -> Result:
    return run(state, "fire", "new_rule_violation", "--org", "acme", "--name", "r1", *args)


def statuses(store: SqliteStore, **filters: Any) -> dict[str, str]:
    return {r.webhook: r.status for r in store.deliveries(**filters)}


# -- 1. held while paused -------------------------------------------------------------


def test_fire_says_which_webhook_is_held_and_why(state: Path, store: SqliteStore) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")

    text = fire(state, "--id", "e1")
    data = fire(state, "--id", "e2", "--format", "json")

    assert text.exit_code == 0, text.output
    assert "event acme/e1: 1 delivery queued, 1 held" in text.output
    (line,) = [ln for ln in text.output.splitlines() if ln.startswith("held")]
    assert line.startswith("held  acme/pager: held: the webhook is paused since ")
    assert GONE in line
    answer = json.loads(data.output)
    assert answer["deliveries"] == 2
    assert [h["webhook"] for h in answer["held"]] == ["pager"]
    assert "note" not in answer
    assert statuses(store, organization="acme", event=None, status="held") == {"pager": "held"}


def test_resume_releases_what_was_held_and_says_how_many(state: Path, store: SqliteStore) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")
    fire(state, "--id", "e1")
    fire(state, "--id", "e2")

    done = run(state, "webhooks", "resume", "acme/pager", "--actor", "alice")

    assert done.exit_code == 0, done.output
    assert "Released 2 held deliveries, due at once" in done.output
    assert store.deliveries(status="held") == []
    assert {r.status for r in store.deliveries(webhook="pager")} == {"pending"}


def test_held_deliveries_are_listed_by_their_status(state: Path, store: SqliteStore) -> None:
    store.pause("acme", "pager", GONE, actor="dispatcher")
    fire(state, "--id", "e1")
    listed = run(state, "deliveries", "list", "--status", "held")
    assert listed.exit_code == 0, listed.output
    (line,) = listed.output.splitlines()
    assert "held" in line and "acme/pager" in line


# -- 3. fire --webhook ----------------------------------------------------------------


def test_fire_webhook_reaches_that_webhook_alone(state: Path, store: SqliteStore) -> None:
    done = fire(state, "--id", "e1", "--webhook", "pager")
    assert done.exit_code == 0, done.output
    assert "event acme/e1: 1 delivery queued" in done.output
    assert list(statuses(store)) == ["pager"]


def test_fire_webhook_unknown_name_is_an_error_with_did_you_mean(
    state: Path, store: SqliteStore
) -> None:
    done = fire(state, "--id", "e1", "--webhook", "slack-alert")
    assert done.exit_code == 1
    assert done.output.strip() == (
        "error: --webhook: no webhook slack-alert in organization acme "
        "(did you mean 'slack-alerts'?)"
    )
    assert store.deliveries() == []
    assert store.event(EventKey("acme", "e1")) is None


def test_fire_webhook_of_another_event_type_is_a_clear_error(
    state: Path, store: SqliteStore
) -> None:
    done = fire(state, "--id", "e1", "--webhook", "surplus")
    assert done.exit_code == 1
    assert "acme/surplus fires on reserved_instance_surplus, not on new_rule_violation" in (
        done.output
    )
    assert store.deliveries() == []


def test_fire_webhook_disabled_is_a_clear_error(state: Path) -> None:
    done = fire(state, "--id", "e1", "--webhook", "off")
    assert done.exit_code == 1
    assert "acme/off is disabled (enabled: false)" in done.output


def test_fire_webhook_of_another_organization_is_not_found(state: Path) -> None:
    done = run(
        state, "fire", "new_rule_violation", "--org", "globex", "--name", "r", "--webhook", "pager"
    )
    assert done.exit_code == 1
    assert "no webhook pager in organization globex" in done.output


def test_fire_webhook_dry_run_previews_that_webhook_alone(state: Path) -> None:
    done = fire(state, "--dry-run", "--webhook", "pager", "--format", "json")
    assert done.exit_code == 0, done.output
    assert [r["webhook"] for r in json.loads(done.output)] == ["pager"]
