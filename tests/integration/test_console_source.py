"""Where a webhook lives in git: apply records the file each definition was read from
in the audit log (from the files, and from a saved plan), and the console's webhook
page shows it; a webhook no such apply wrote shows the conventional path, said to be so."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from reconciler.store.sqlite import SqliteStore
from tests.support.console import console_over
from tests.support.helpers_state import cli_env, definition, put_specs, run_cli, spec


def _write(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def _sources(db: Path, name: str) -> list[str | None]:
    store = SqliteStore(db)
    try:
        return [e.record.source for e in store.history("acme", name, None)]
    finally:
        store.close()


def test_apply_records_the_file_each_definition_came_from(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    env = cli_env(RECONCILER_STATE=f"sqlite:///{db}")
    custom = tmp_path / "webhooks.d" / "acme" / "team-alerts.yaml"
    _write(custom, definition("slack"))
    first = run_cli(["apply", "--auto-approve", "--actor", "a"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    assert _sources(db, "slack") == ["webhooks.d/acme/team-alerts.yaml"]

    # Moved and changed, applied from the plan saved for review: the new file.
    custom.unlink()
    moved = tmp_path / "webhooks.d" / "acme" / "slack" / "main.yaml"
    _write(moved, definition("slack", description="now in a folder of its own"))
    saved = run_cli(["plan", "--out", "plan.json"], tmp_path, env)
    assert saved.returncode == 0, saved.stderr
    (change,) = json.loads((tmp_path / "plan.json").read_text())["changes"]
    assert change["source"] == "webhooks.d/acme/slack/main.yaml"
    second = run_cli(
        ["apply", "--plan", "plan.json", "--auto-approve", "--actor", "a"], tmp_path, env
    )
    assert second.returncode == 0, second.stderr
    assert _sources(db, "slack") == [
        "webhooks.d/acme/slack/main.yaml",
        "webhooks.d/acme/team-alerts.yaml",
    ]

    # A delete names no file.
    moved.unlink()
    third = run_cli(
        ["apply", "--auto-approve", "--allow-delete", "--force", "--actor", "a"], tmp_path, env
    )
    assert third.returncode == 0, third.stderr
    assert _sources(db, "slack")[0] is None


def test_the_console_shows_the_recorded_file_or_says_the_path_is_the_conventional_one(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    env = cli_env(RECONCILER_STATE=f"sqlite:///{db}")
    _write(tmp_path / "webhooks.d" / "acme" / "team-alerts.yaml", definition("slack"))
    applied = run_cli(["apply", "--auto-approve", "--actor", "a"], tmp_path, env)
    assert applied.returncode == 0, applied.stderr
    with console_over(db) as console:
        put_specs(console.store, [spec("slack"), spec("direct")])  # "direct": no apply
        client = console.signed_in("acme", role="auditor")
        page = client.get("/ui/webhooks/acme/slack").text
        assert "<code>webhooks.d/acme/team-alerts.yaml</code>" in page
        assert "conventional path" not in page
        direct = client.get("/ui/webhooks/acme/direct").text
        assert "<code>webhooks.d/acme/direct.yaml</code> (the conventional path" in direct
