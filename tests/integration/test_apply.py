"""apply: scenarios through the library (with a fake Approver), through the CLI
in real processes, and in a real terminal (pexpect)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from reconciler.apply import ApplyOptions, ApplyOutcome, apply
from reconciler.errors import ApprovalRefused, LockTimeout, PlanRefused, StaleState
from reconciler.plan import Plan
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    EXAMPLES,
    RECONCILER,
    SUBPROCESS_TIMEOUT,
    FakeApprover,
    assert_no_traceback,
    cli_env,
    definition,
    live_specs,
    load_specs,
    make_state,
    plan_folder,
    run_cli,
    set_live_spec,
    snapshot,
    spec,
    sqlite_url,
    write_definition,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / "webhooks.d"
    made.mkdir()
    return made


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(db)
    yield opened
    opened.close()


class Applier:
    """Runs reconciler.apply.apply on a folder, as the CLI does, and keeps what it showed."""

    def __init__(self, store: SqliteStore, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self.shown: list[tuple[Plan, list[str]]] = []
        self.made = 0

    def __call__(
        self,
        approver: FakeApprover | None = None,
        *,
        organization: str | None = None,
        folder: Path | None = None,
        **options: Any,
    ) -> ApplyOutcome:
        options.setdefault("actor", "alice")
        options.setdefault("auto_approve", True)

        def make() -> Plan:
            self.made += 1
            return plan_folder(self.store, folder or self.folder, organization)

        return apply(
            self.store,
            make,
            ApplyOptions(**options),
            approver or FakeApprover(),
            lambda plan, refusals: self.shown.append((plan, refusals)),
        )


@pytest.fixture
def applier(store: SqliteStore, folder: Path) -> Applier:
    return Applier(store, folder)


def write(folder: Path, organization: str, name: str, **fields: Any) -> Path:
    return write_definition(folder, organization, definition(name, **fields))


def three_in_acme(folder: Path) -> None:
    for name in ("alpha", "beta", "gamma"):
        write(folder, "acme", name)


def actions(store: SqliteStore) -> list[tuple[str, str, str]]:
    return [(e.record.action, e.record.organization, e.record.name) for e in store.history()]


# -- create, edit, rename, delete ------------------------------------------------------


def test_create(applier: Applier, store: SqliteStore, folder: Path) -> None:
    three_in_acme(folder)
    write(folder, "globex", "delta", method="GET", body=None, query={"limit": 10})
    outcome = applier()
    assert outcome.applied
    assert outcome.serial == 1
    assert store.state().serial == 1
    assert live_specs(store) == {s.key: s.canonical() for s in load_specs(folder)}
    assert actions(store) == [
        ("create", "globex", "delta"),
        ("create", "acme", "gamma"),
        ("create", "acme", "beta"),
        ("create", "acme", "alpha"),
    ]
    entry = next(iter(store.history()))
    assert entry.record.actor == "alice"
    assert entry.record.plan_checksum == outcome.plan.checksum()
    assert entry.record.before is None
    assert (
        entry.record.after
        == spec("delta", "globex", method="GET", body=None, query={"limit": "10"}).canonical()
    )
    # applying again changes nothing
    again = applier()
    assert not again.applied
    assert again.serial == 1
    assert store.state().serial == 1
    assert len(actions(store)) == 4


def test_edit_endpoint_headers_and_body_then_apply(
    applier: Applier, store: SqliteStore, folder: Path
) -> None:
    three_in_acme(folder)
    applier()
    write(
        folder,
        "acme",
        "beta",
        url="https://new.example.com/beta?team={{organization}}",
        headers={"Content-Type": "application/json", "X-Team": "cost"},
        body='{ text: "Rule {{name}} at {{time}}", "count": 2 }',
    )
    outcome = applier()
    assert outcome.applied
    assert [(c.action, c.name) for c in outcome.plan.changes] == [("update", "beta")]
    assert [f.dotted for f in outcome.plan.changes[0].fields] == [
        "body.count",
        "body.text",
        "headers.X-Team",
        "url",
    ]
    live = live_specs(store)[("acme", "beta")]
    assert live["url"] == "https://new.example.com/beta?team={{organization}}"
    assert live["headers"] == {"Content-Type": "application/json", "X-Team": "cost"}
    assert live["body"] == {"text": "Rule {{name}} at {{time}}", "count": 2}
    (update, *_) = store.history()
    assert update.record.action == "update"
    assert update.record.before == spec("beta").canonical()
    assert update.record.after == live
    assert update.serial == 2


def test_rename(applier: Applier, store: SqliteStore, folder: Path) -> None:
    three_in_acme(folder)
    applier()
    (folder / "acme" / "beta.yaml").unlink()
    write(folder, "acme", "beta-renamed")
    with pytest.raises(PlanRefused, match="--allow-delete"):
        applier()
    outcome = applier(allow_delete=True)
    assert [(c.action, c.name) for c in outcome.plan.changes] == [
        ("delete", "beta"),
        ("create", "beta-renamed"),
    ]
    assert sorted(name for _, name in live_specs(store)) == ["alpha", "beta-renamed", "gamma"]
    assert actions(store)[:2] == [("create", "acme", "beta-renamed"), ("delete", "acme", "beta")]


def test_a_delete_is_blocked_without_allow_delete(
    applier: Applier, store: SqliteStore, folder: Path
) -> None:
    three_in_acme(folder)
    applier()
    (folder / "acme" / "gamma.yaml").unlink()
    before = snapshot(store)
    with pytest.raises(PlanRefused, match="--allow-delete"):
        applier()
    assert snapshot(store) == before
    # the plan was shown, with the reason, before the refusal
    plan, refusals = applier.shown[-1]
    assert [c.action for c in plan.changes] == ["delete"]
    assert any("--allow-delete" in r for r in refusals)

    outcome = applier(allow_delete=True)
    assert outcome.applied
    assert ("acme", "gamma") not in live_specs(store)
    (delete, *_) = store.history()
    assert delete.record.action == "delete"
    assert delete.record.before == spec("gamma").canonical()
    assert delete.record.after is None


def test_a_protected_webhook_is_never_deleted_until_protect_false_is_applied(
    applier: Applier, store: SqliteStore, folder: Path
) -> None:
    three_in_acme(folder)
    write(folder, "acme", "vault", protect=True)
    applier()
    protected_file = folder / "acme" / "vault.yaml"
    protected_file.unlink()
    before = snapshot(store)
    for flags in ({}, {"allow_delete": True}, {"allow_delete": True, "force": True}):
        with pytest.raises(PlanRefused, match="acme/vault is protected"):
            applier(**flags)
        assert snapshot(store) == before

    # restore the file with protect: false, apply that, and only then delete
    write(folder, "acme", "vault", protect=False)
    lifted = applier()
    assert [(c.action, c.name) for c in lifted.plan.changes] == [("update", "vault")]
    assert "protect" not in live_specs(store)[("acme", "vault")]
    protected_file.unlink()
    outcome = applier(allow_delete=True)
    assert [(c.action, c.name) for c in outcome.plan.changes] == [("delete", "vault")]
    assert ("acme", "vault") not in live_specs(store)


def test_mass_delete_needs_force(applier: Applier, store: SqliteStore, folder: Path) -> None:
    for i in range(5):
        write(folder, "acme", f"hook-{i}")
    write(folder, "globex", "solo")
    applier()
    for i in range(3):
        (folder / "acme" / f"hook-{i}.yaml").unlink()
    (folder / "globex" / "solo.yaml").unlink()
    before = snapshot(store)
    with pytest.raises(PlanRefused) as refused:
        applier(allow_delete=True)
    assert snapshot(store) == before
    _, refusals = applier.shown[-1]
    assert refusals == [
        "the plan deletes 3 of 5 webhooks of organization 'acme', more than 30%: "
        "re-run with --force if that is intended",
        "the plan deletes every webhook of organization 'globex' (1): "
        "re-run with --force if that is intended",
    ]
    assert "--force" in str(refused.value)

    outcome = applier(allow_delete=True, force=True)
    assert outcome.plan.counts() == {"delete": 4}
    assert sorted(live_specs(store)) == [("acme", "hook-3"), ("acme", "hook-4")]


def test_deleting_a_few_needs_no_force(applier: Applier, store: SqliteStore, folder: Path) -> None:
    for i in range(5):
        write(folder, "acme", f"hook-{i}")
    applier()
    (folder / "acme" / "hook-0.yaml").unlink()
    assert applier(allow_delete=True).applied
    assert len(live_specs(store)) == 4


@pytest.mark.parametrize("which", ["empty", "missing", "only-other-files"])
def test_an_empty_or_missing_folder_never_deletes_without_force(
    applier: Applier, store: SqliteStore, folder: Path, tmp_path: Path, which: str
) -> None:
    three_in_acme(folder)
    applier()
    before = snapshot(store)
    target = tmp_path / which
    if which == "empty":
        target.mkdir()
    elif which == "only-other-files":
        target.mkdir()
        (target / "README.md").write_text("# webhooks\n")
    with pytest.raises(PlanRefused, match="no definitions were found"):
        applier(folder=target, allow_delete=True)
    assert snapshot(store) == before
    if which == "empty":
        outcome = applier(folder=target, allow_delete=True, force=True)
        assert outcome.plan.counts() == {"delete": 3}
        assert live_specs(store) == {}


def test_org_scope_applies_only_that_organization(
    applier: Applier, store: SqliteStore, folder: Path
) -> None:
    three_in_acme(folder)
    write(folder, "globex", "delta")
    applier()
    write(folder, "acme", "alpha", url="https://n.example.com/")
    write(folder, "globex", "delta", url="https://n.example.com/")
    outcome = applier(organization="globex")
    assert [(c.organization, c.name) for c in outcome.plan.changes] == [("globex", "delta")]
    assert live_specs(store)[("acme", "alpha")]["url"] == "https://hooks.example.com/alpha"


# -- drift and pauses ------------------------------------------------------------------


def test_apply_restores_a_drifted_spec_and_audits_it(
    applier: Applier, store: SqliteStore, folder: Path, db: Path
) -> None:
    three_in_acme(folder)
    applier()
    set_live_spec(db, "acme", "beta", spec("beta", url="https://evil.example.com/").canonical())
    outcome = applier()
    assert [d.name for d in outcome.plan.drift] == ["beta"]
    assert live_specs(store)[("acme", "beta")] == spec("beta").canonical()
    assert not any(w.drifted for w in store.webhooks())
    (entry, *_) = store.history()
    assert entry.record.action == "update"
    assert entry.record.note is not None
    assert "drift" in entry.record.note
    assert entry.record.before is not None
    assert entry.record.before["url"] == "https://evil.example.com/"


def test_apply_resumes_a_paused_webhook(applier: Applier, store: SqliteStore, folder: Path) -> None:
    three_in_acme(folder)
    applier()
    store.pause("acme", "alpha", "HTTP 410 Gone", actor="dispatcher")
    outcome = applier()
    assert [(c.action, c.name, c.resumes) for c in outcome.plan.changes] == [
        ("update", "alpha", "HTTP 410 Gone")
    ]
    assert all(w.paused_reason is None for w in store.webhooks())
    (entry, pause, *_) = store.history()
    assert pause.record.action == "pause"
    assert entry.record.note is not None
    assert "resumed" in entry.record.note
    assert "HTTP 410 Gone" in entry.record.note


# -- approval --------------------------------------------------------------------------


def test_off_a_terminal_without_auto_approve_nothing_changes(
    applier: Applier, store: SqliteStore, folder: Path
) -> None:
    three_in_acme(folder)
    approver = FakeApprover(interactive=False)
    before = snapshot(store)
    with pytest.raises(ApprovalRefused, match="--auto-approve"):
        applier(approver, auto_approve=False)
    assert snapshot(store) == before
    assert approver.asked == []


@pytest.mark.parametrize("answer", [True, False])
def test_on_a_terminal_it_asks_first(
    applier: Applier, store: SqliteStore, folder: Path, answer: bool
) -> None:
    three_in_acme(folder)
    approver = FakeApprover(interactive=True, approve_answer=answer)
    before = snapshot(store)
    if answer:
        assert applier(approver, auto_approve=False).applied
        assert len(store.webhooks()) == 3
    else:
        with pytest.raises(ApprovalRefused, match="nothing was changed"):
            applier(approver, auto_approve=False)
        assert snapshot(store) == before
    assert approver.asked == ["approve"]


def test_auto_approve_on_a_terminal_does_not_ask(applier: Applier, folder: Path) -> None:
    three_in_acme(folder)
    approver = FakeApprover(interactive=True)
    assert applier(approver, auto_approve=True).applied
    assert approver.asked == []


def test_nothing_to_apply_asks_nothing(applier: Applier, store: SqliteStore, folder: Path) -> None:
    three_in_acme(folder)
    applier()
    before = snapshot(store)
    approver = FakeApprover(interactive=True)
    outcome = applier(approver, auto_approve=False)
    assert not outcome.applied
    assert outcome.serial == before.state.serial
    assert snapshot(store) == before
    assert approver.asked == []


@pytest.mark.parametrize("confirmed", [True, False])
def test_on_a_terminal_a_typed_confirmation_allows_deletes(
    applier: Applier, store: SqliteStore, folder: Path, confirmed: bool
) -> None:
    three_in_acme(folder)
    applier()
    (folder / "acme" / "gamma.yaml").unlink()
    before = snapshot(store)
    approver = FakeApprover(interactive=True, delete_answer=confirmed)
    if confirmed:
        assert applier(approver, auto_approve=False).applied
        assert ("acme", "gamma") not in live_specs(store)
        assert approver.asked == ["confirm_deletes", "approve"]
    else:
        with pytest.raises(ApprovalRefused, match="deletes were not confirmed"):
            applier(approver, auto_approve=False)
        assert snapshot(store) == before
        assert approver.asked == ["confirm_deletes"]


@pytest.mark.parametrize("guard", ["protected", "mass-delete"])
def test_no_typed_confirmation_is_asked_for_a_plan_refused_anyway(
    applier: Applier, store: SqliteStore, folder: Path, guard: str
) -> None:
    # Typing 'delete' only replaces --allow-delete; when another guard refuses
    # the plan, the person should not be asked to confirm deletes first.
    three_in_acme(folder)
    write(folder, "acme", "vault", protect=guard == "protected")
    applier()
    (folder / "acme" / "vault.yaml").unlink()
    if guard == "mass-delete":
        (folder / "acme" / "alpha.yaml").unlink()
        (folder / "acme" / "beta.yaml").unlink()
    before = snapshot(store)
    approver = FakeApprover(interactive=True)
    with pytest.raises(PlanRefused):
        applier(approver, auto_approve=False)
    assert snapshot(store) == before
    assert approver.asked == []


# -- the lock and the one transaction --------------------------------------------------


def test_the_plan_is_made_while_the_lock_is_held(
    store: SqliteStore, folder: Path, db: Path
) -> None:
    three_in_acme(folder)
    other = SqliteStore(db)
    held: list[bool] = []

    def make() -> Plan:
        try:
            with other.lock("probe", 0):
                held.append(False)
        except LockTimeout as exc:
            held.append("alice (apply)" in str(exc))
        return plan_folder(store, folder)

    try:
        apply(
            store,
            make,
            ApplyOptions(actor="alice", auto_approve=True),
            FakeApprover(),
            lambda *_: None,
        )
    finally:
        other.close()
    assert held == [True]


def test_apply_fails_when_another_apply_holds_the_lock(
    applier: Applier, store: SqliteStore, folder: Path, db: Path
) -> None:
    three_in_acme(folder)
    other = SqliteStore(db)
    try:
        with other.lock("bob (apply)", 0), pytest.raises(LockTimeout, match="bob"):
            applier(lock_timeout=0)
    finally:
        other.close()
    assert applier.made == 0
    assert store.webhooks() == []


def test_a_change_between_plan_and_commit_makes_the_apply_stale(
    applier: Applier, store: SqliteStore, folder: Path, db: Path
) -> None:
    three_in_acme(folder)
    applier()
    write(folder, "acme", "alpha", url="https://n.example.com/")
    dispatcher = SqliteStore(db)

    class PausingApprover(FakeApprover):
        def approve(self, plan: Plan) -> bool:
            # while the person reads the plan, the dispatcher pauses a webhook
            dispatcher.pause("acme", "beta", "HTTP 410", actor="dispatcher")
            return True

    try:
        before_paused = snapshot(store)
        with pytest.raises(StaleState):
            applier(PausingApprover(interactive=True), auto_approve=False)
    finally:
        dispatcher.close()
    after = snapshot(store)
    assert after.state.serial == before_paused.state.serial + 1  # the pause only
    assert live_specs(store)[("acme", "alpha")]["url"] == "https://hooks.example.com/alpha"


def test_the_audit_log_masks_literal_credentials_but_the_live_spec_keeps_them(
    applier: Applier, store: SqliteStore, folder: Path
) -> None:
    write(
        folder,
        "acme",
        "legacy",
        headers={"Authorization": "Bearer abc123"},
        allow_literal=["headers.Authorization"],
    )
    applier()
    assert live_specs(store)[("acme", "legacy")]["headers"] == {"Authorization": "Bearer abc123"}
    (entry,) = store.history()
    assert entry.record.after is not None
    assert entry.record.after["headers"] == {"Authorization": "****"}


# == through the CLI, in real processes ==================================================


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A working directory with webhooks.d (the repository's examples) and a state URL."""
    shutil.copytree(EXAMPLES, tmp_path / "webhooks.d")
    return tmp_path


def state_of(project: Path) -> str:
    return sqlite_url(project / ".state" / "state.db")


def cli(project: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli([*args], project, cli_env(RECONCILER_STATE=state_of(project)), stdin=stdin)


def open_state(project: Path) -> SqliteStore:
    return SqliteStore(project / ".state" / "state.db")


def state_snapshot(project: Path) -> Any:
    store = open_state(project)
    try:
        return snapshot(store)
    finally:
        store.close()


def test_cli_apply_then_nothing_to_apply(project: Path) -> None:
    first = cli(project, "apply", "--auto-approve", "--actor", "alice")
    assert first.returncode == 0, first.stderr
    assert (
        "Applied: 5 created, 0 updated, 0 deleted, 1 shared variable changed "
        "(state serial 1, actor alice)." in first.stdout
    )
    again = cli(project, "apply", "--auto-approve", "--actor", "alice")
    assert again.returncode == 0, again.stderr
    assert "Nothing to apply." in again.stdout


def test_cli_off_a_terminal_without_auto_approve_refuses(project: Path) -> None:
    result = cli(project, "apply", "--actor", "alice", stdin="yes\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: not on a terminal and --auto-approve not given; nothing was changed"
    )
    assert state_snapshot(project).webhooks == []


def test_cli_a_stale_saved_plan_is_refused(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    folder = project / "webhooks.d"
    write(folder, "acme", "new-one")
    saved = project / "plan.json"
    assert cli(project, "plan", "--out", str(saved)).returncode == 0
    # someone else applies another change first (and the planned one with it)
    write(folder, "acme", "another")
    assert cli(project, "apply", "--auto-approve", "--actor", "b").returncode == 0
    before = state_snapshot(project)

    result = cli(project, "apply", "--plan", str(saved), "--auto-approve", "--actor", "c")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the live state changed since the saved plan was made: acme/new-one was "
        "created; plan again"
    )
    assert state_snapshot(project) == before


def test_cli_a_saved_plan_is_refused_after_any_other_apply(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    folder = project / "webhooks.d"
    write(folder, "acme", "new-one")
    saved = project / "plan.json"
    assert cli(project, "plan", "--out", str(saved)).returncode == 0
    # someone else applies a change the plan does not touch
    (folder / "acme" / "new-one.yaml").unlink()
    write(folder, "acme", "another")
    assert cli(project, "apply", "--auto-approve", "--actor", "b").returncode == 0
    before = state_snapshot(project)

    result = cli(project, "apply", "--plan", str(saved), "--auto-approve", "--actor", "c")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the live state changed since the plan was made (serial 1, now 2); plan again"
    )
    assert state_snapshot(project) == before


def test_cli_a_saved_plan_of_another_state_is_refused(project: Path, tmp_path: Path) -> None:
    make_state(state_of(project))
    saved = project / "plan.json"
    assert cli(project, "plan", "--out", str(saved)).returncode == 0
    other = make_state(sqlite_url(tmp_path / "other.db"))
    result = run_cli(["apply", "--plan", str(saved), "--auto-approve", "--state", other], project)
    assert result.returncode == 1
    assert "lineage differs" in result.stderr


def test_cli_a_fresh_saved_plan_applies_exactly(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    folder = project / "webhooks.d"
    write(folder, "acme", "slack-ri-surplus", url="https://n.example.com/surplus")
    write(folder, "acme", "planned")
    saved = project / "plan.json"
    assert cli(project, "plan", "--out", str(saved)).returncode == 0
    checksum = json.loads(saved.read_text())["checksum"]
    # edits after the plan was saved are not part of it
    write(folder, "acme", "not-planned")
    write(folder, "acme", "planned", url="https://changed-after.example.com/")

    result = cli(project, "apply", "--plan", str(saved), "--auto-approve", "--actor", "c")
    assert result.returncode == 0, result.stderr
    assert "Applied: 1 created, 1 updated, 0 deleted (state serial 2, actor c)." in result.stdout
    store = open_state(project)
    try:
        live = live_specs(store)
        entries = list(store.history())
    finally:
        store.close()
    assert ("acme", "not-planned") not in live
    assert live[("acme", "planned")]["url"] == "https://hooks.example.com/planned"
    assert live[("acme", "slack-ri-surplus")]["url"] == "https://n.example.com/surplus"
    assert [e.record.plan_checksum for e in entries[:2]] == [checksum, checksum]


def test_cli_a_tampered_saved_plan_is_refused(project: Path) -> None:
    make_state(state_of(project))
    saved = project / "plan.json"
    assert cli(project, "plan", "--out", str(saved)).returncode == 0
    data = json.loads(saved.read_text())
    data["changes"][0]["after"]["url"] = "https://attacker.example.com/"
    saved.write_text(json.dumps(data))
    result = cli(project, "apply", "--plan", str(saved), "--auto-approve")
    assert result.returncode == 1
    assert "checksum" in result.stderr
    assert state_snapshot(project).webhooks == []


def test_cli_plan_shows_drift_and_apply_restores_it(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    store = open_state(project)
    try:
        live = live_specs(store)[("globex", "finops-signed")]
    finally:
        store.close()
    set_live_spec(
        project / ".state" / "state.db",
        "globex",
        "finops-signed",
        {**live, "url": "https://evil.example.com/hook"},
    )
    planned = cli(project, "plan")
    assert planned.returncode == 0
    assert "Drift (live state changed outside apply" in planned.stdout
    assert "! globex/finops-signed" in planned.stdout
    assert (
        'url: "https://finops.globex.example/hooks/reserved-instances" -> '
        '"https://evil.example.com/hook" (last applied -> live)'
    ) in planned.stdout
    assert "1 drifted" in planned.stdout
    as_json = json.loads(cli(project, "plan", "--format", "json").stdout)
    assert as_json["summary"]["drift"] == 1

    applied = cli(project, "apply", "--auto-approve", "--actor", "fixer")
    assert applied.returncode == 0, applied.stderr
    store = open_state(project)
    try:
        assert live_specs(store)[("globex", "finops-signed")] == live
        (entry, *_) = store.history()
    finally:
        store.close()
    assert (entry.record.action, entry.record.actor) == ("update", "fixer")
    assert entry.record.note is not None
    assert "drift" in entry.record.note
    assert "Drift" not in cli(project, "plan").stdout


def test_cli_a_paused_webhook_shows_as_drift_and_apply_resumes_it(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    store = open_state(project)
    try:
        store.pause("acme", "status-board-get", "HTTP 410 from the receiver", actor="dispatcher")
    finally:
        store.close()
    planned = cli(project, "plan")
    assert "! acme/status-board-get" in planned.stdout
    assert "paused: HTTP 410 from the receiver" in planned.stdout
    assert "~ status-board-get  (resumes it; paused: HTTP 410 from the receiver)" in planned.stdout
    applied = cli(project, "apply", "--auto-approve", "--actor", "a")
    assert applied.returncode == 0, applied.stderr
    store = open_state(project)
    try:
        assert all(w.paused_reason is None for w in store.webhooks())
    finally:
        store.close()


def test_cli_invalid_definitions_change_nothing(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    before = state_snapshot(project)
    (project / "webhooks.d" / "acme" / "broken.yaml").write_text("name: broken\nevent: nope\n")
    result = cli(project, "apply", "--auto-approve", "--allow-delete", "--force")
    assert result.returncode == 1
    assert "broken.yaml:" in result.stderr
    assert state_snapshot(project) == before


def test_cli_empty_and_missing_folders_never_delete_without_force(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    before = state_snapshot(project)
    (project / "empty.d").mkdir()
    result = cli(project, "apply", "empty.d", "--auto-approve", "--allow-delete")
    assert result.returncode == 1
    assert "no definitions were found" in result.stdout  # among the refusals listed
    assert result.stderr.startswith("error: ")
    assert state_snapshot(project) == before
    missing = cli(project, "apply", "no-such.d", "--auto-approve", "--allow-delete")
    assert missing.returncode == 1
    assert missing.stderr == "error: no-such.d: no such file or folder\n"
    assert state_snapshot(project) == before


# -- exit codes ----------------------------------------------------------------------------


INVALID = "name: Bad Name\nevent: new_rule_violation\nmethod: POST\n"


@pytest.fixture
def exits_project(project: Path) -> Path:
    invalid = project / "invalid.d" / "acme"
    invalid.mkdir(parents=True)
    (invalid / "bad.yaml").write_text(INVALID)
    empty = project / "empty.d"
    empty.mkdir()
    return project


@pytest.mark.parametrize(
    ("applied_first", "args", "code"),
    [
        (False, ["validate"], 0),
        (False, ["validate", "invalid.d"], 1),
        (False, ["validate", "no-such.d"], 1),
        (False, ["validate", "--bogus"], 2),
        (False, ["validate", "--format", "xml"], 2),
        (False, ["plan"], 0),
        (False, ["plan", "invalid.d"], 1),
        (False, ["plan", "--state", "mysql://db/x"], 1),
        (False, ["plan", "--format", "yaml"], 2),
        (False, ["plan", "--delete-share", "2"], 2),
        (False, ["plan", "--detailed-exitcode"], 2),
        (True, ["plan", "--detailed-exitcode"], 0),
        (False, ["plan", "--detailed-exitcode", "invalid.d"], 1),
        (True, ["plan", "--detailed-exitcode", "empty.d"], 2),
        (False, ["apply", "--auto-approve"], 0),
        (True, ["apply", "--auto-approve"], 0),
        (False, ["apply", "--auto-approve", "invalid.d"], 1),
        (True, ["apply", "--auto-approve", "empty.d"], 1),
        (False, ["apply"], 1),
        (False, ["apply", "--plan", "no-such.json", "--auto-approve"], 1),
        (False, ["apply", "--lock-timeout", "-1"], 2),
        (False, ["apply", "--auto-approve", "one", "two"], 2),
        (True, ["history"], 0),
        (True, ["history", "--limit", "0"], 2),
        (True, ["export", "out.d"], 0),
        (False, ["no-such-command"], 2),
    ],
)
def test_exit_codes(exits_project: Path, applied_first: bool, args: list[str], code: int) -> None:
    if applied_first:
        assert cli(exits_project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    else:
        make_state(state_of(exits_project))  # there, and empty
    result = cli(exits_project, *args)
    assert result.returncode == code, result.stdout + result.stderr
    if code != 0:
        assert (result.stdout + result.stderr).strip(), "a failure says why"


def test_a_state_path_below_a_file_is_one_line_not_a_traceback(project: Path) -> None:
    (project / "afile").write_text("x")
    result = subprocess.run(
        [*RECONCILER, "plan", "--state", sqlite_url(project / "afile" / "state.db")],
        cwd=project,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")


# -- two processes --------------------------------------------------------------------------


HOLD_LOCK = """
import sys
from reconciler.store import open_store
store = open_store(sys.argv[1], create=True)  # as apply opens it
with store.lock("holder-x", 0):
    print("locked", flush=True)
    sys.stdin.readline()
store.close()
print("released", flush=True)
"""


def test_a_second_apply_fails_while_another_process_holds_the_lock(project: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, state_of(project)],
        cwd=project,
        env=cli_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "locked\n"
        blocked = cli(project, "apply", "--auto-approve", "--lock-timeout", "0", "--actor", "b")
        assert blocked.returncode == 1
        (line,) = blocked.stderr.strip().splitlines()
        assert line.startswith("error: the state is locked by holder-x (pid ")
        assert state_snapshot(project).webhooks == []

        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert holder.wait(timeout=SUBPROCESS_TIMEOUT) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
    after = cli(project, "apply", "--auto-approve", "--lock-timeout", "0", "--actor", "b")
    assert after.returncode == 0, after.stderr
    assert len(state_snapshot(project).webhooks) == 5


KILLED_IN_COMMIT = """
import os, signal, sys
from pathlib import Path
from reconciler.store.sqlite import SqliteStore

SEEN = Path(sys.argv[1])

def die(self, db, audit, serial, now):
    # the webhook rows of this transaction are written by now: record it, then die
    rows = db.execute("SELECT name FROM webhooks ORDER BY name").fetchall()
    SEEN.write_text(" ".join(name for (name,) in rows))
    os.kill(os.getpid(), signal.SIGKILL)

SqliteStore._append_audit = die
sys.argv = ["reconciler", *sys.argv[2:]]
from reconciler.cli import main
main()
"""


def test_an_apply_killed_mid_transaction_changes_nothing(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    folder = project / "webhooks.d"
    write(folder, "acme", "brand-new")
    write(folder, "acme", "slack-ri-surplus", url="https://n.example.com/surplus")
    (folder / "acme" / "slack-ri-deficit.yaml").unlink()
    before = state_snapshot(project)
    seen = project / "seen-in-transaction.txt"

    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_IN_COMMIT,
            str(seen),
            "apply",
            "--auto-approve",
            "--allow-delete",
            "--actor",
            "doomed",
        ],
        cwd=project,
        env=cli_env(RECONCILER_STATE=state_of(project)),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # inside the transaction, the writes had been made ...
    in_transaction = seen.read_text().split()
    assert "brand-new" in in_transaction
    assert "slack-ri-deficit" not in in_transaction
    # ... and none of them survived the kill
    assert state_snapshot(project) == before

    again = cli(project, "apply", "--auto-approve", "--allow-delete", "--lock-timeout", "0")
    assert again.returncode == 0, again.stderr
    assert "Applied: 1 created, 1 updated, 1 deleted (state serial 2" in again.stdout
    after = state_snapshot(project)
    names = [w.name for w in after.webhooks]
    assert "brand-new" in names
    assert "slack-ri-deficit" not in names
    assert [e.serial for e in after.history[:3]] == [2, 2, 2]


# -- a real terminal ----------------------------------------------------------------------------


def spawn(project: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        RECONCILER[0],
        [*RECONCILER[1:], "apply", "--actor", "tty-user", *args],
        cwd=str(project),
        env=cli_env(RECONCILER_STATE=state_of(project), NO_COLOR="1", TERM="dumb"),
        encoding="utf-8",
        timeout=30,
    )


def finish(child: pexpect.spawn) -> tuple[int, str]:
    child.expect(pexpect.EOF)
    output = child.before
    child.close()
    assert_no_traceback(output)
    return child.exitstatus, output


APPROVE = "Apply these changes\\? Only 'yes' is accepted"
CONFIRM_DELETE = "Type 'delete' to allow it"


def test_terminal_yes_applies(project: Path) -> None:
    child = spawn(project)
    child.expect("Plan: 5 to create")
    child.expect(APPROVE)
    child.sendline("yes")
    status, output = finish(child)
    assert status == 0, output
    assert "Applied: 5 created" in output
    assert len(state_snapshot(project).webhooks) == 5


@pytest.mark.parametrize("answer", ["no", "y", ""])
def test_terminal_anything_but_yes_changes_nothing(project: Path, answer: str) -> None:
    child = spawn(project)
    child.expect(APPROVE)
    child.sendline(answer)
    status, output = finish(child)
    assert status == 1
    assert "apply cancelled; nothing was changed" in output
    assert state_snapshot(project).webhooks == []


def test_terminal_typed_delete_confirms_deletes(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    (project / "webhooks.d" / "acme" / "slack-ri-deficit.yaml").unlink()
    child = spawn(project)
    child.expect("cannot be recovered; its delivery history is kept until retention removes it")
    child.expect("This deletes 1 webhook, which cannot be recovered. " + CONFIRM_DELETE)
    child.sendline("delete")
    child.expect(APPROVE)
    child.sendline("yes")
    status, output = finish(child)
    assert status == 0, output
    assert "Applied: 0 created, 0 updated, 1 deleted" in output
    names = [w.name for w in state_snapshot(project).webhooks]
    assert "slack-ri-deficit" not in names
    assert len(names) == 4


@pytest.mark.parametrize("answer", ["yes", "Delete", "no"])
def test_terminal_anything_but_delete_keeps_the_webhook(project: Path, answer: str) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    (project / "webhooks.d" / "acme" / "slack-ri-deficit.yaml").unlink()
    before = state_snapshot(project)
    child = spawn(project, "--auto-approve")
    child.expect(CONFIRM_DELETE)
    child.sendline(answer)
    status, output = finish(child)
    assert status == 1
    assert "deletes were not confirmed; nothing was changed" in output
    assert state_snapshot(project) == before


def test_terminal_allow_delete_asks_no_typed_confirmation(project: Path) -> None:
    assert cli(project, "apply", "--auto-approve", "--actor", "a").returncode == 0
    (project / "webhooks.d" / "acme" / "slack-ri-deficit.yaml").unlink()
    child = spawn(project, "--allow-delete")
    index = child.expect([APPROVE, CONFIRM_DELETE])
    assert index == 0
    child.sendline("yes")
    status, output = finish(child)
    assert status == 0, output
    assert len(state_snapshot(project).webhooks) == 4
