"""make_plan, the Plan value (guards, checksum, saved form) and its reporters."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from reconciler import plan_report
from reconciler.diff import MISSING, FieldChange
from reconciler.errors import PlanFileError
from reconciler.model import WebhookSpec
from reconciler.plan import FORMAT_VERSION, Change, Plan, make_plan
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    RECONCILER,
    assert_no_traceback,
    cli_env,
    definition,
    make_state,
    put_specs,
    run_cli,
    set_live_spec,
    spec,
    sqlite_url,
    write_definition,
)

ANSI = re.compile(r"\x1b\[")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(db)
    yield opened
    opened.close()


def plan_for(
    store: SqliteStore, desired: list[WebhookSpec], organization: str | None = None
) -> Plan:
    return make_plan(
        desired, store.webhooks(organization), store.state(), organization=organization
    )


def keyed(plan: Plan) -> list[tuple[str, str, str]]:
    return [(c.action, c.organization, c.name) for c in plan.changes]


# -- what the plan contains ----------------------------------------------------------


def test_creates_against_an_empty_state(store: SqliteStore) -> None:
    desired = [spec("b", "globex"), spec("b"), spec("a")]
    plan = plan_for(store, desired)
    assert keyed(plan) == [
        ("create", "acme", "a"),
        ("create", "acme", "b"),
        ("create", "globex", "b"),
    ]
    first = plan.changes[0]
    assert first.before is None
    assert first.after == spec("a").canonical()
    assert plan.unchanged == 0
    assert plan.drift == []
    assert plan.has_changes
    assert plan.counts() == {"create": 3}
    assert plan.serial == 0
    assert plan.lineage == store.state().lineage


def test_an_update_lists_each_field_old_to_new(store: SqliteStore) -> None:
    put_specs(store, [spec("a")])
    edited = spec(
        "a",
        url="https://new.example.com/a",
        headers={"Content-Type": "text/plain", "X-Trace": "on"},
        body={"text": "Rule {{name}} at {{time}}", "severity": "high"},
    )
    plan = plan_for(store, [edited])
    assert keyed(plan) == [("update", "acme", "a")]
    (change,) = plan.changes
    assert change.before == spec("a").canonical()
    assert change.after == edited.canonical()
    assert list(change.fields) == [
        FieldChange(("body", "severity"), MISSING, "high"),
        FieldChange(
            ("body", "text"),
            "The rule {{name}} was violated at: {{time}}.",
            "Rule {{name}} at {{time}}",
        ),
        FieldChange(("headers", "Content-Type"), "application/json", "text/plain"),
        FieldChange(("headers", "X-Trace"), MISSING, "on"),
        FieldChange(("url",), "https://hooks.example.com/a", "https://new.example.com/a"),
    ]
    assert [f.dotted for f in change.fields] == [
        "body.severity",
        "body.text",
        "headers.Content-Type",
        "headers.X-Trace",
        "url",
    ]
    assert plan.unchanged == 0


def test_a_removed_field_shows_as_unset(store: SqliteStore) -> None:
    put_specs(store, [spec("a", description="old words")])
    (change,) = plan_for(store, [spec("a")]).changes
    assert list(change.fields) == [FieldChange(("description",), "old words", MISSING)]
    assert plan_report.field_line(change.fields[0]) == 'description: "old words" -> (unset)'


def test_a_cap_on_requests_in_flight_shows_old_to_new(store: SqliteStore) -> None:
    put_specs(store, [spec("a")])
    (change,) = plan_for(store, [spec("a", max_in_flight=3)]).changes
    assert list(change.fields) == [FieldChange(("max_in_flight",), MISSING, 3)]
    assert plan_report.field_line(change.fields[0]) == "max_in_flight: (unset) -> 3"
    put_specs(store, [spec("a", max_in_flight=3)])
    (change,) = plan_for(store, [spec("a", max_in_flight=20)]).changes
    assert plan_report.field_line(change.fields[0]) == "max_in_flight: 3 -> 20"


def test_a_rename_is_one_delete_and_one_create(store: SqliteStore) -> None:
    put_specs(store, [spec("old-name"), spec("other")])
    plan = plan_for(store, [spec("new-name"), spec("other")])
    assert keyed(plan) == [("create", "acme", "new-name"), ("delete", "acme", "old-name")]
    assert plan.unchanged == 1
    delete = plan.deletes()[0]
    assert delete.before == spec("old-name").canonical()
    assert delete.after is None


def test_unchanged_webhooks_are_counted_not_listed(store: SqliteStore) -> None:
    specs = [spec("a"), spec("b"), spec("c", "globex")]
    put_specs(store, specs)
    plan = plan_for(store, specs)
    assert plan.changes == []
    assert not plan.has_changes
    assert plan.unchanged == 3
    assert plan.refusals(allow_delete=False, force=False) == []


def test_org_scope_leaves_other_organizations_alone(store: SqliteStore) -> None:
    put_specs(store, [spec("a"), spec("x", "globex"), spec("y", "globex")])
    desired = [spec("a", url="https://n.example.com/"), spec("b")]  # no globex files
    plan = plan_for(store, desired, organization="acme")
    assert keyed(plan) == [("update", "acme", "a"), ("create", "acme", "b")]
    assert plan.organization == "acme"
    assert plan.live_counts == {"acme": 1}
    assert not plan.desired_empty

    unscoped = plan_for(store, desired)
    assert ("delete", "globex", "x") in keyed(unscoped)


def test_org_scope_with_no_definitions_of_that_organization(store: SqliteStore) -> None:
    put_specs(store, [spec("x", "globex")])
    plan = plan_for(store, [spec("a")], organization="globex")
    assert keyed(plan) == [("delete", "globex", "x")]
    assert plan.desired_empty
    assert any("--force" in r for r in plan.refusals(allow_delete=True, force=False))


# -- drift -------------------------------------------------------------------------------


def test_a_spec_changed_outside_apply_is_drift(store: SqliteStore, db: Path) -> None:
    put_specs(store, [spec("a"), spec("b")])
    hand_edited = {**spec("a").canonical(), "url": "https://evil.example.com/"}
    set_live_spec(db, "acme", "a", hand_edited)

    plan = plan_for(store, [spec("a"), spec("b")])
    (drift,) = plan.drift
    assert (drift.organization, drift.name, drift.paused_reason) == ("acme", "a", None)
    assert list(drift.fields) == [
        FieldChange(("url",), "https://hooks.example.com/a", "https://evil.example.com/")
    ]
    # apply restores the definition: an update from the live spec to the desired one
    assert keyed(plan) == [("update", "acme", "a")]
    (change,) = plan.changes
    assert change.before == hand_edited
    assert change.after == spec("a").canonical()
    assert plan.unchanged == 1


def test_drift_is_reported_even_when_the_file_now_matches_the_live_spec(
    store: SqliteStore, db: Path
) -> None:
    put_specs(store, [spec("a")])
    set_live_spec(db, "acme", "a", spec("a", url="https://n.example.com/").canonical())
    plan = plan_for(store, [spec("a", url="https://n.example.com/")])
    assert len(plan.drift) == 1
    # an apply still writes it, so that the applied spec is the desired one again
    assert keyed(plan) == [("update", "acme", "a")]
    assert plan.changes[0].fields == ()


def test_a_paused_webhook_is_drift_and_apply_resumes_it(store: SqliteStore) -> None:
    put_specs(store, [spec("a")])
    store.pause("acme", "a", "HTTP 410 Gone", actor="dispatcher")
    plan = plan_for(store, [spec("a")])
    (drift,) = plan.drift
    assert drift.paused_reason == "HTTP 410 Gone"
    assert drift.fields == ()
    (change,) = plan.changes
    assert (change.action, change.resumes, change.fields) == ("update", "HTTP 410 Gone", ())
    assert plan.unchanged == 0
    assert "resumes it; paused: HTTP 410 Gone" in plan_report.text(plan, [])


def test_a_drifted_webhook_whose_file_was_removed_is_deleted(store: SqliteStore, db: Path) -> None:
    put_specs(store, [spec("a"), spec("b")])
    store.pause("acme", "a", "HTTP 410", actor="dispatcher")
    plan = plan_for(store, [spec("b")])
    assert keyed(plan) == [("delete", "acme", "a")]
    assert [d.name for d in plan.drift] == ["a"]


# -- refusals ----------------------------------------------------------------------------


def test_a_delete_needs_allow_delete(store: SqliteStore) -> None:
    put_specs(store, [spec(n) for n in "abc"])
    plan = plan_for(store, [spec("a"), spec("b")])
    (reason,) = plan.refusals(allow_delete=False, force=False)
    assert "deletes 1 webhook" in reason
    assert "--allow-delete" in reason
    assert plan.refusals(allow_delete=True, force=False) == []


def test_a_protected_webhook_is_never_deleted(store: SqliteStore) -> None:
    put_specs(store, [spec("a", protect=True), spec("b"), spec("c"), spec("d")])
    # the file is gone, so nothing in the desired set says "protect" any more:
    # the protection kept in the live state still holds
    plan = plan_for(store, [spec("b"), spec("c"), spec("d")])
    (delete,) = plan.deletes()
    assert delete.protected
    for allow_delete in (False, True):
        for force in (False, True):
            reasons = plan.refusals(allow_delete=allow_delete, force=force)
            assert any("acme/a is protected" in r for r in reasons), reasons
    assert "PROTECTED" in plan_report.text(plan, [])


def test_protect_false_applied_first_lifts_the_protection(store: SqliteStore) -> None:
    put_specs(store, [spec("a", protect=False), spec("b"), spec("c"), spec("d")])
    plan = plan_for(store, [spec("b"), spec("c"), spec("d")])
    assert not plan.deletes()[0].protected
    assert plan.refusals(allow_delete=True, force=False) == []


def test_deleting_every_webhook_of_an_organization_needs_force(store: SqliteStore) -> None:
    put_specs(store, [spec("a"), spec("b"), spec("x", "globex")])
    plan = plan_for(store, [spec("x", "globex")])
    reasons = plan.refusals(allow_delete=True, force=False)
    assert reasons == [
        "the plan deletes every webhook of organization 'acme' (2): "
        "re-run with --force if that is intended"
    ]
    assert plan.refusals(allow_delete=True, force=True) == []


def test_deleting_the_only_webhook_of_an_organization_needs_force(store: SqliteStore) -> None:
    put_specs(store, [spec("a"), spec("x", "globex")])
    plan = plan_for(store, [spec("a")])
    assert any(
        "every webhook of organization 'globex'" in r
        for r in plan.refusals(allow_delete=True, force=False)
    )


@pytest.mark.parametrize(
    ("live", "deleted", "share", "needs_force"),
    [
        (4, 1, 0.3, False),  # 25%
        (4, 2, 0.3, True),  # 50%
        (10, 3, 0.3, False),  # 30% is not more than 30%
        (10, 4, 0.3, True),
        (3, 2, 0.3, False),  # fewer than 4 webhooks: only "all of them" counts
        (4, 2, 0.5, False),
        (4, 3, 0.5, True),
        (5, 1, 0.1, True),
    ],
)
def test_deleting_more_than_the_share_needs_force(
    store: SqliteStore, live: int, deleted: int, share: float, needs_force: bool
) -> None:
    specs = [spec(f"hook-{i}") for i in range(live)]
    put_specs(store, specs)
    plan = plan_for(store, specs[deleted:])
    assert len(plan.deletes()) == deleted
    reasons = plan.refusals(allow_delete=True, force=False, delete_share=share)
    if needs_force:
        (reason,) = reasons
        assert f"deletes {deleted} of {live} webhooks of organization 'acme'" in reason
        assert "--force" in reason
    else:
        assert reasons == []
    assert plan.refusals(allow_delete=True, force=True, delete_share=share) == []


def test_an_empty_desired_set_needs_force(store: SqliteStore) -> None:
    put_specs(store, [spec(f"hook-{i}") for i in range(10)])
    plan = plan_for(store, [])
    assert plan.desired_empty
    assert len(plan.deletes()) == 10
    reasons = plan.refusals(allow_delete=True, force=False)
    assert len(reasons) == 1
    assert "no definitions were found" in reasons[0]
    assert "--force" in reasons[0]
    assert plan.refusals(allow_delete=True, force=True) == []


def test_an_empty_desired_set_against_an_empty_state_is_no_change(store: SqliteStore) -> None:
    plan = plan_for(store, [])
    assert not plan.has_changes
    assert plan.refusals(allow_delete=False, force=False) == []


# -- checksum ------------------------------------------------------------------------------


def test_the_checksum_is_stable(store: SqliteStore) -> None:
    put_specs(store, [spec("a"), spec("b")])
    desired = [spec("a", url="https://n.example.com/"), spec("c")]
    first = plan_for(store, desired)
    again = plan_for(store, list(reversed(desired)))
    again.created_at = first.created_at
    assert first.checksum() == again.checksum()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.checksum())
    # every field of the saved form is covered, the time it was made too
    again.created_at = "2000-01-01T00:00:00+00:00"
    assert first.checksum() != again.checksum()


def test_the_checksum_changes_with_the_plan(store: SqliteStore) -> None:
    put_specs(store, [spec("a"), spec("b")])
    base = plan_for(store, [spec("a", url="https://n.example.com/"), spec("b")]).checksum()
    other_value = plan_for(store, [spec("a", url="https://m.example.com/"), spec("b")])
    other_change = plan_for(store, [spec("a", url="https://n.example.com/")])
    nothing = plan_for(store, [spec("a"), spec("b")])
    checksums = {base, other_value.checksum(), other_change.checksum(), nothing.checksum()}
    assert len(checksums) == 4


# -- the saved form ------------------------------------------------------------------------


@pytest.fixture
def varied_plan(store: SqliteStore, db: Path) -> Plan:
    put_specs(
        store,
        [
            spec("updated"),
            spec("deleted"),
            spec("paused"),
            spec("drifted"),
            spec("kept-1"),
            spec("kept-2"),
            spec("kept-3"),
            spec("kept-4"),
            spec("z", "globex"),
        ],
    )
    store.pause("acme", "paused", "HTTP 410", actor="dispatcher")
    set_live_spec(db, "acme", "drifted", spec("drifted", description="by hand").canonical())
    desired = [
        spec("updated", headers={"Authorization": "Bearer abc123"}),
        spec("paused"),
        spec("drifted"),
        spec("created", body='{ text: "relaxed {{name}}" }'),
        *[spec(f"kept-{i}") for i in range(1, 5)],
        spec("z", "globex"),
    ]
    return plan_for(store, desired)


def _saved(plan: Plan) -> dict[str, Any]:
    """As `plan --out` writes it and `apply --plan` reads it: through JSON text."""
    return json.loads(json.dumps(plan.as_json(full=True), indent=2))


def test_a_full_plan_round_trips_through_json(varied_plan: Plan) -> None:
    loaded = Plan.from_json(_saved(varied_plan))
    assert loaded.checksum() == varied_plan.checksum()
    assert (loaded.lineage, loaded.serial) == (varied_plan.lineage, varied_plan.serial)
    assert loaded.created_at == varied_plan.created_at
    assert loaded.organization == varied_plan.organization
    assert loaded.live_counts == varied_plan.live_counts
    assert loaded.desired_empty == varied_plan.desired_empty
    assert loaded.unchanged == varied_plan.unchanged
    assert [
        (c.action, c.organization, c.name, c.before, c.after, c.resumes) for c in loaded.changes
    ] == [
        (c.action, c.organization, c.name, c.before, c.after, c.resumes)
        for c in varied_plan.changes
    ]
    # a plan read from a file carries no live state: its guards need the live one
    assert loaded.live is None
    with pytest.raises(ValueError, match="live state"):
        loaded.refusals(allow_delete=True, force=True)
    for allow_delete in (False, True):
        for force in (False, True):
            assert loaded.refusals(
                allow_delete=allow_delete, force=force, live=varied_plan.live
            ) == (varied_plan.refusals(allow_delete=allow_delete, force=force))
    # the full form holds the real values, as apply needs them
    updated = next(c for c in loaded.changes if c.name == "updated")
    assert updated.after is not None
    assert updated.after["headers"] == {"Authorization": "Bearer abc123"}


def test_a_saved_plan_keeps_its_field_changes_and_drift(varied_plan: Plan) -> None:
    # What `apply --plan FILE` shows before asking, and what the audit log notes
    # ("restored the definition over drift"), come from these.
    loaded = Plan.from_json(_saved(varied_plan))
    assert loaded.changes == varied_plan.changes
    assert loaded.drift == varied_plan.drift


def test_a_tampered_plan_is_refused(varied_plan: Plan) -> None:
    data = _saved(varied_plan)
    created = next(c for c in data["changes"] if c["action"] == "create")
    created["after"]["url"] = "https://attacker.example.com/"
    with pytest.raises(PlanFileError, match="checksum"):
        Plan.from_json(data)


def test_a_plan_with_a_wrong_checksum_is_refused(varied_plan: Plan) -> None:
    data = _saved(varied_plan)
    data["checksum"] = "sha256:" + "0" * 64
    with pytest.raises(PlanFileError, match="checksum"):
        Plan.from_json(data)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_a_plan_with_another_format_version_is_refused(varied_plan: Plan, version: Any) -> None:
    data = _saved(varied_plan)
    data["format_version"] = version
    with pytest.raises(PlanFileError, match="format_version"):
        Plan.from_json(data)


def test_a_masked_plan_cannot_be_applied(varied_plan: Plan) -> None:
    data = json.loads(json.dumps(varied_plan.as_json()))
    with pytest.raises(PlanFileError, match="not saved with --out"):
        Plan.from_json(data)


@pytest.mark.parametrize("missing", ["changes", "lineage", "serial", "summary", "created_at"])
def test_an_incomplete_plan_is_refused(varied_plan: Plan, missing: str) -> None:
    data = _saved(varied_plan)
    del data[missing]
    with pytest.raises(PlanFileError, match="incomplete"):
        Plan.from_json(data)


# -- reporters -----------------------------------------------------------------------------


SECRET = "abc123"


@pytest.fixture
def secret_plan(store: SqliteStore) -> Plan:
    """Creates, updates and a delete, each holding a literal bearer token somewhere."""
    put_specs(
        store,
        [
            spec("changed", headers={"Authorization": f"Bearer {SECRET}"}),
            spec("added-header"),
            spec("gone", headers={"Authorization": f"Bearer {SECRET}"}),
            spec("k1"),
            spec("k2"),
            spec("k3"),
            spec("k4"),
            spec("k5"),
        ],
    )
    desired = [
        spec("new", headers={"Authorization": f"Bearer {SECRET}", "X-Key": "${env:ACME_KEY}"}),
        spec("changed", headers={"Authorization": "Bearer ${env:ACME_TOKEN}"}),
        spec("added-header", headers={"Authorization": f"Bearer {SECRET}"}),
        spec("referenced", headers={"Authorization": "Bearer ${env:ACME_TOKEN}"}),
        *[spec(f"k{i}") for i in range(1, 6)],
    ]
    return plan_for(store, desired)


def _all_reports(plan: Plan) -> dict[str, str]:
    refusals = plan.refusals(allow_delete=False, force=False)
    return {
        "text": plan_report.text(plan, refusals),
        "text-colour": plan_report.text(plan, refusals, color=True),
        "json": plan_report.as_json(plan, refusals),
        "markdown": plan_report.markdown(plan, refusals),
    }


@pytest.mark.parametrize("fmt", ["text", "text-colour", "json", "markdown"])
def test_reports_never_show_a_literal_credential(secret_plan: Plan, fmt: str) -> None:
    report = _all_reports(secret_plan)[fmt]
    assert SECRET not in report
    assert "****" in report


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_reports_show_references_as_written(secret_plan: Plan, fmt: str) -> None:
    report = _all_reports(secret_plan)[fmt]
    assert "Bearer ${env:ACME_TOKEN}" in report
    assert "${env:ACME_KEY}" in report


def test_text_shows_a_masked_header_change_without_values(store: SqliteStore) -> None:
    put_specs(store, [spec("a", headers={"Authorization": f"Bearer {SECRET}"})])
    plan = plan_for(store, [spec("a", headers={"Authorization": "Bearer xyz789"})])
    text = plan_report.text(plan, [])
    assert 'headers.Authorization: "****" (changed)' in text
    assert SECRET not in text
    assert "xyz789" not in text


def test_text_shows_signs_fields_and_summary(secret_plan: Plan) -> None:
    text = plan_report.text(secret_plan, [])
    lines = text.splitlines()
    assert lines[0] == "Organization acme"
    assert "  + new" in lines
    assert "  ~ changed" in lines
    assert (
        "  - gone  (the definition is gone for good and cannot be recovered; "
        "its delivery history is kept until retention removes it)"
    ) in lines
    assert '      headers.Authorization: "****" -> "Bearer ${env:ACME_TOKEN}"' in lines
    assert lines[-1] == "Plan: 2 to create, 2 to update, 1 to delete, 5 unchanged."


def test_deletes_are_marked_unrecoverable_in_every_format(secret_plan: Plan) -> None:
    reports = _all_reports(secret_plan)
    # What a delete does, exactly: the definition goes, the delivery log stays.
    said = (
        "the definition is gone for good and cannot be recovered; "
        "its delivery history is kept until retention removes it"
    )
    assert said in reports["text"]
    assert said in reports["markdown"]
    assert "deletes are unrecoverable" in reports["markdown"]
    (delete,) = [c for c in json.loads(reports["json"])["changes"] if c["action"] == "delete"]
    assert delete["unrecoverable"] is True
    assert delete["protected"] is False


def test_text_lists_refusals(secret_plan: Plan) -> None:
    text = plan_report.text(secret_plan, secret_plan.refusals(allow_delete=False, force=False))
    assert "Apply will refuse this plan unless:" in text
    assert "--allow-delete" in text


def test_markdown_starts_with_the_hidden_marker(secret_plan: Plan) -> None:
    markdown = plan_report.markdown(secret_plan, [])
    assert markdown.startswith("<!-- reconciler-plan -->\n")
    assert "```diff" in markdown
    assert "**Plan: 2 to create, 2 to update, 1 to delete, 5 unchanged.**" in markdown
    assert secret_plan.checksum()[:19] in markdown


def test_markdown_names_the_organization_scope(store: SqliteStore) -> None:
    plan = plan_for(store, [spec("a")], organization="acme")
    assert "### reconciler plan (organization `acme`)" in plan_report.markdown(plan, [])


def test_json_has_format_version_summary_and_refusals(secret_plan: Plan) -> None:
    refusals = secret_plan.refusals(allow_delete=False, force=False)
    data = json.loads(plan_report.as_json(secret_plan, refusals))
    assert data["format_version"] == FORMAT_VERSION == 1
    assert data["full"] is False
    assert data["summary"] == {"create": 2, "update": 2, "delete": 1, "unchanged": 5, "drift": 0}
    assert data["refusals"] == refusals
    assert data["checksum"] == secret_plan.checksum()
    assert data["serial"] == secret_plan.serial
    assert data["lineage"] == secret_plan.lineage
    changed = next(c for c in data["changes"] if c["name"] == "changed")
    shown = ("path", "old", "new", "added", "removed")
    assert [{k: f[k] for k in shown} for f in changed["fields"]] == [
        {
            "path": "headers.Authorization",
            "old": "****",
            "new": "Bearer ${env:ACME_TOKEN}",
            "added": False,
            "removed": False,
        }
    ]


def test_json_counts_drift(store: SqliteStore) -> None:
    put_specs(store, [spec("a")])
    store.pause("acme", "a", "HTTP 410", actor="dispatcher")
    data = json.loads(plan_report.as_json(plan_for(store, [spec("a")]), []))
    assert data["summary"]["drift"] == 1
    assert data["drift"] == [
        {"organization": "acme", "name": "a", "paused_reason": "HTTP 410", "fields": []}
    ]


def test_text_without_colour_has_no_escapes(secret_plan: Plan) -> None:
    assert not ANSI.search(plan_report.text(secret_plan, ["a reason"], color=False))
    assert ANSI.search(plan_report.text(secret_plan, ["a reason"], color=True))


def test_no_change_text(store: SqliteStore) -> None:
    text = plan_report.text(plan_for(store, []), [])
    assert "No changes: the live state matches the definitions." in text


# -- through the CLI: colour only on a terminal, and never with NO_COLOR --------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a"))
    write_definition(folder, "acme", definition("b", method="GET", body=None, headers=None))
    make_state(sqlite_url(tmp_path / "s.db"))  # new and empty: plan compares with nothing
    return tmp_path


def test_plan_to_a_pipe_has_no_colour(project: Path) -> None:
    result = run_cli(["plan", "--state", sqlite_url(project / "s.db")], project)
    assert result.returncode == 0, result.stderr
    assert "+ a" in result.stdout
    assert not ANSI.search(result.stdout + result.stderr)


def _plan_in_a_terminal(project: Path, **env: str) -> str:
    child = pexpect.spawn(
        RECONCILER[0],
        [*RECONCILER[1:], "plan", "--state", sqlite_url(project / "s.db")],
        cwd=str(project),
        env=cli_env(**env),
        encoding="utf-8",
        timeout=30,
    )
    child.expect(pexpect.EOF)
    child.close()
    output = child.before
    assert child.exitstatus == 0, output
    assert_no_traceback(output)
    return output


def test_plan_in_a_terminal_is_coloured(project: Path) -> None:
    output = _plan_in_a_terminal(project, TERM="xterm")
    assert ANSI.search(output)
    assert "Plan: 2 to create" in output


def test_no_color_turns_colour_off_in_a_terminal(project: Path) -> None:
    output = _plan_in_a_terminal(project, TERM="xterm", NO_COLOR="1")
    assert not ANSI.search(output)
    assert "Plan: 2 to create" in output


def test_plan_out_saves_a_full_plan(project: Path) -> None:
    out = project / "plan.json"
    result = run_cli(["plan", "--state", sqlite_url(project / "s.db"), "--out", str(out)], project)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["full"] is True
    plan = Plan.from_json(data)
    assert [(c.action, c.name) for c in plan.changes] == [("create", "a"), ("create", "b")]
    assert isinstance(plan.changes[0], Change)


def test_plan_out_to_a_missing_folder_is_one_error_line(project: Path) -> None:
    # run_cli fails the test on a traceback (today: FileNotFoundError from write_text)
    result = run_cli(
        ["plan", "--state", sqlite_url(project / "s.db"), "--out", "no-such-dir/plan.json"],
        project,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "no-such-dir/plan.json" in result.stderr
