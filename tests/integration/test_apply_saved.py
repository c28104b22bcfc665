"""A saved plan says which changes were reviewed, nothing more: apply derives every
guard from the live state it holds the lock on, refuses a plan the live state no
longer matches, and catches an edit to any field of the file. On both stores."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from reconciler.apply import ApplyOptions, ApplyOutcome, apply
from reconciler.cli import cli
from reconciler.errors import PlanFileError, PlanRefused, StaleState
from reconciler.model import canonical_json
from reconciler.plan import LiveView, Plan, document_checksum
from reconciler.store import Store, open_store
from tests.support.helpers_state import (
    FakeApprover,
    definition,
    live_specs,
    plan_folder,
    snapshot,
    sqlite_url,
    write_definition,
)


@dataclasses.dataclass
class State:
    """A live state on one backend, with a way to change it behind apply's back."""

    url: str
    kind: str
    path: Path | None = None

    def open(self) -> Store:
        return open_store(self.url, create=True)

    def out_of_band(self, sql: str, *args: Any) -> None:
        """Run SQL on the state directly, as a hand edit would: the serial stays."""
        if self.kind == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path)
            try:
                with conn:
                    changed = conn.execute(sql, args).rowcount
            finally:
                conn.close()
        else:
            import psycopg

            from reconciler.store.postgres import split_url

            conninfo, schema, _ = split_url(self.url)
            with psycopg.connect(conninfo, options=f"-c search_path={schema}") as conn:
                changed = conn.execute(sql.replace("?", "%s"), args).rowcount
        assert changed == 1

    def set_spec(self, organization: str, name: str, spec: dict[str, Any]) -> None:
        text = canonical_json(spec)
        self.out_of_band(
            "UPDATE webhooks SET spec = ?, applied_spec = ? WHERE organization = ? AND name = ?",
            text,
            text,
            organization,
            name,
        )

    def delete(self, organization: str, name: str) -> None:
        self.out_of_band(
            "DELETE FROM webhooks WHERE organization = ? AND name = ?", organization, name
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> State:
    if request.param == "sqlite":
        path = tmp_path / "state" / "state.db"
        return State(sqlite_url(path), "sqlite", path)
    return State(request.getfixturevalue("postgres_url"), "postgres")


@pytest.fixture
def store(state: State) -> Iterator[Store]:
    opened = state.open()
    yield opened
    opened.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / "webhooks.d"
    made.mkdir()
    return made


def write(folder: Path, organization: str, name: str, **fields: Any) -> Path:
    return write_definition(folder, organization, definition(name, **fields))


def remove(folder: Path, organization: str, *names: str) -> None:
    for name in names:
        (folder / organization / f"{name}.yaml").unlink()


def apply_files(store: Store, folder: Path, **options: Any) -> ApplyOutcome:
    """apply from the files, as `reconciler apply` does."""
    options.setdefault("actor", "alice")
    options.setdefault("auto_approve", True)
    return apply(
        store,
        lambda: plan_folder(store, folder),
        ApplyOptions(**options),
        FakeApprover(),
        lambda *_: None,
    )


def apply_saved(store: Store, data: dict[str, Any], **options: Any) -> ApplyOutcome:
    """apply a saved plan, as `reconciler apply --plan FILE` does (through JSON text)."""
    options.setdefault("actor", "mallory")
    options.setdefault("auto_approve", True)
    loaded = Plan.from_json(json.loads(json.dumps(data)))
    return apply(
        store, lambda: loaded, ApplyOptions(**options), FakeApprover(), lambda *_: None, saved=True
    )


def saved(plan: Plan) -> dict[str, Any]:
    """What `plan --out` writes."""
    return json.loads(json.dumps(plan.as_json(full=True)))


def resealed(plan: Plan, **changed: Any) -> dict[str, Any]:
    """A saved plan with fields changed and its checksum computed again by the code
    itself, as anyone can: `Plan.as_json` seals whatever the plan holds."""
    return saved(dataclasses.replace(plan, **changed))


def without_protect(plan: Plan, name: str) -> list[Any]:
    return [
        dataclasses.replace(c, before={k: v for k, v in c.before.items() if k != "protect"})
        if c.name == name and c.before is not None
        else c
        for c in plan.changes
    ]


def four_in_acme(folder: Path, store: Store, **vault: Any) -> None:
    for name in ("alpha", "beta", "gamma"):
        write(folder, "acme", name)
    write(folder, "acme", "vault", **vault)
    apply_files(store, folder)


# -- guards come from the live state, not from the file -----------------------------------


def test_live_counts_edited_and_resealed_do_not_lift_the_mass_delete_guard(
    store: Store, folder: Path
) -> None:
    # BUG: live_counts set to 1000 made 3 of 4 deletes look like 0.3%: apply deleted
    # them with --allow-delete and no --force.
    four_in_acme(folder, store)
    remove(folder, "acme", "alpha", "beta", "gamma")
    plan = plan_folder(store, folder)
    before = snapshot(store)
    forged = resealed(plan, live_counts={"acme": 1000})
    with pytest.raises(PlanRefused, match="deletes 3 of 4 webhooks of organization 'acme'"):
        apply_saved(store, forged, allow_delete=True)
    assert snapshot(store) == before
    # the same plan, unedited, is refused the same way: the file has no say
    with pytest.raises(PlanRefused, match="deletes 3 of 4 webhooks"):
        apply_saved(store, saved(plan), allow_delete=True)
    assert snapshot(store) == before
    assert apply_saved(store, forged, allow_delete=True, force=True).applied
    assert set(live_specs(store)) == {("acme", "vault")}


def test_desired_empty_edited_and_resealed_does_not_lift_the_empty_folder_guard(
    store: Store, folder: Path, tmp_path: Path
) -> None:
    four_in_acme(folder, store)
    empty = tmp_path / "empty.d"
    empty.mkdir()
    plan = plan_folder(store, empty)
    assert plan.desired_empty
    before = snapshot(store)
    forged = resealed(plan, desired_empty=False, live_counts={"acme": 1000})
    with pytest.raises(PlanRefused, match="no definitions were found"):
        apply_saved(store, forged, allow_delete=True)
    assert snapshot(store) == before


def test_protect_removed_from_before_and_resealed_never_deletes_a_protected_webhook(
    store: Store, folder: Path
) -> None:
    # BUG: with protect taken out of the delete's before, and the checksum computed
    # again, apply deleted a protected webhook.
    four_in_acme(folder, store, protect=True)
    remove(folder, "acme", "vault")
    plan = plan_folder(store, folder)
    before = snapshot(store)
    forged = resealed(plan, changes=without_protect(plan, "vault"))
    (change,) = [c for c in forged["changes"] if c["name"] == "vault"]
    assert "protect" not in change["before"] and change["protected"] is False
    for force in (False, True):
        with pytest.raises(StaleState, match=r"acme/vault was edited \(protect\)"):
            apply_saved(store, forged, allow_delete=True, force=force)
    assert snapshot(store) == before
    assert ("acme", "vault") in live_specs(store)


def test_protect_removed_with_an_old_style_checksum_is_an_edited_plan(
    store: Store, folder: Path
) -> None:
    four_in_acme(folder, store, protect=True)
    remove(folder, "acme", "vault")
    data = saved(plan_folder(store, folder))
    (change,) = data["changes"]
    del change["before"]["protect"]
    change["protected"] = False
    body = json.dumps(
        [
            data["lineage"],
            data["serial"],
            [
                [
                    c["action"],
                    c["organization"],
                    c["name"],
                    c.get("before"),
                    c.get("after"),
                    c.get("resumes"),
                ]
                for c in data["changes"]
            ],
        ],
        sort_keys=True,
    )
    data["checksum"] = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
    before = snapshot(store)
    with pytest.raises(PlanFileError, match="does not match its checksum: it was edited"):
        apply_saved(store, data, allow_delete=True, force=True)
    assert snapshot(store) == before


def test_the_guards_read_protect_from_the_live_state(store: Store, folder: Path) -> None:
    four_in_acme(folder, store, protect=True)
    remove(folder, "acme", "vault")
    plan = plan_folder(store, folder)
    unprotected = dataclasses.replace(plan, changes=without_protect(plan, "vault"))
    assert not unprotected.deletes()[0].protected  # what the plan says
    live = LiveView.of(store.webhooks(), None)
    reasons = unprotected.refusals(allow_delete=True, force=True, live=live)
    assert reasons == [
        "acme/vault is protected and never deleted: restore the definition, apply it with "
        "protect: false, then delete it"
    ]


def test_without_a_saved_plan_a_plan_that_misreports_protect_is_refused(
    store: Store, folder: Path
) -> None:
    # Whatever `make` hands apply, it is checked against the live state under the lock.
    four_in_acme(folder, store, protect=True)
    remove(folder, "acme", "vault")
    before = snapshot(store)

    def make() -> Plan:
        plan = plan_folder(store, folder)
        return dataclasses.replace(
            plan, changes=without_protect(plan, "vault"), live=LiveView(None, {})
        )

    with pytest.raises(StaleState, match=r"acme/vault was edited \(protect\)"):
        apply(
            store,
            make,
            ApplyOptions(actor="alice", auto_approve=True, allow_delete=True, force=True),
            FakeApprover(),
            lambda *_: None,
        )
    assert snapshot(store) == before


def test_without_a_saved_plan_an_inflated_live_count_does_not_lift_the_guard(
    store: Store, folder: Path
) -> None:
    four_in_acme(folder, store)
    remove(folder, "acme", "alpha", "beta")
    before = snapshot(store)
    shown: list[list[str]] = []

    def make() -> Plan:
        plan = plan_folder(store, folder)
        return dataclasses.replace(plan, live_counts={"acme": 1000}, live=LiveView(None, {}))

    with pytest.raises(PlanRefused, match="deletes 2 of 4 webhooks of organization 'acme'"):
        apply(
            store,
            make,
            ApplyOptions(actor="alice", auto_approve=True, allow_delete=True),
            FakeApprover(),
            lambda _plan, refusals: shown.append(refusals),
        )
    assert len(shown) == 1 and "deletes 2 of 4" in shown[0][0]
    assert snapshot(store) == before


# -- the live state changed after the plan ------------------------------------------------


def _plan_touching_every_kind(store: Store, folder: Path) -> Plan:
    """acme: alpha updated, beta deleted, gamma kept, delta created."""
    four_in_acme(folder, store)
    write(folder, "acme", "alpha", url="https://n.example.com/alpha")
    remove(folder, "acme", "beta")
    write(folder, "acme", "delta")
    return plan_folder(store, folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("edit-updated", r"acme/alpha was edited \(description\)"),
        ("protect-deleted", r"acme/beta was edited \(protect\)"),
        ("delete-updated", r"acme/alpha was deleted"),
        ("delete-deleted", r"acme/beta was deleted"),
        ("create-created", r"acme/delta was created"),
    ],
)
def test_a_saved_plan_the_live_state_no_longer_matches_is_refused_naming_the_webhook(
    state: State, store: Store, folder: Path, edit: str, message: str
) -> None:
    plan = _plan_touching_every_kind(store, folder)
    data = saved(plan)
    live = live_specs(store)
    if edit == "edit-updated":
        state.set_spec("acme", "alpha", {**live[("acme", "alpha")], "description": "by hand"})
    elif edit == "protect-deleted":
        state.set_spec("acme", "beta", {**live[("acme", "beta")], "protect": True})
    elif edit == "delete-updated":
        state.delete("acme", "alpha")
    elif edit == "delete-deleted":
        state.delete("acme", "beta")
    else:
        state.out_of_band(
            "INSERT INTO webhooks (organization, name, spec, applied_spec, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            "acme",
            "delta",
            '{"name":"delta"}',
            '{"name":"delta"}',
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
        )
    assert store.state().serial == plan.serial  # a hand edit leaves the serial alone
    before = snapshot(store)
    with pytest.raises(StaleState, match=message) as refused:
        apply_saved(store, data, allow_delete=True, force=True)
    assert str(refused.value).startswith("the live state changed since the saved plan was made: ")
    assert str(refused.value).endswith("; plan again")
    assert snapshot(store) == before


def test_a_webhook_changed_by_another_apply_is_named(store: Store, folder: Path) -> None:
    plan = _plan_touching_every_kind(store, folder)
    data = saved(plan)
    apply_files(store, folder, allow_delete=True)  # someone applies the same files first
    before = snapshot(store)
    with pytest.raises(StaleState) as refused:
        apply_saved(store, data, allow_delete=True)
    assert str(refused.value) == (
        "the live state changed since the saved plan was made: acme/alpha was edited (url); "
        "acme/beta was deleted; acme/delta was created; plan again"
    )
    assert snapshot(store) == before


def test_a_saved_plan_still_matching_the_live_state_applies(store: Store, folder: Path) -> None:
    plan = _plan_touching_every_kind(store, folder)
    outcome = apply_saved(store, saved(plan), allow_delete=True)
    assert outcome.applied
    assert set(live_specs(store)) == {("acme", n) for n in ("alpha", "gamma", "vault", "delta")}
    assert {e.record.plan_checksum for e in store.history() if e.record.actor == "mallory"} == {
        plan.checksum()
    }


# -- the checksum covers every field of the file ------------------------------------------


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path, value


def _other(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return "x"
    if isinstance(value, dict):
        return {"x": 1}
    assert isinstance(value, list)
    return ["x"]


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        data = data[step]
    data[path[-1]] = value


@pytest.fixture
def varied(store: Store, folder: Path, state: State) -> dict[str, Any]:
    """A saved plan with every kind of change, drift, a pause and a credential."""
    four_in_acme(folder, store, protect=True)
    write(folder, "globex", "z")
    apply_files(store, folder)
    live = live_specs(store)
    state.set_spec("acme", "gamma", {**live[("acme", "gamma")], "description": "by hand"})
    store.pause("acme", "beta", "HTTP 410", actor="dispatcher")
    write(
        folder, "acme", "alpha", headers={"Authorization": "Bearer ${env:ACME_TOKEN}"}, timeout="5s"
    )
    remove(folder, "acme", "vault")
    write(folder, "acme", "delta", body='{ text: "relaxed {{name}}" }')
    return saved(plan_folder(store, folder))


def test_the_varied_plan_has_every_kind_of_field(varied: dict[str, Any]) -> None:
    assert {c["action"] for c in varied["changes"]} == {"create", "update", "delete"}
    assert (
        varied["drift"]
        and varied["live_counts"]
        and any(c.get("fields") for c in varied["changes"])
    )
    assert Plan.from_json(json.loads(json.dumps(varied))).checksum() == varied["checksum"]


def test_an_edit_to_any_field_of_the_file_is_caught(varied: dict[str, Any]) -> None:
    leaves = [(path, value) for path, value in _leaves(varied) if path != ("checksum",)]
    assert len(leaves) > 100
    objects = {()}
    for path, value in leaves:
        edited = json.loads(json.dumps(varied))
        _set(edited, path, _other(value))
        with pytest.raises(PlanFileError):
            Plan.from_json(edited)
        objects.update(path[:i] for i in range(1, len(path)))
    # a field added to any object of the file is an edit too
    for path in objects:
        added = json.loads(json.dumps(varied))
        parent = added
        for step in path:
            parent = parent[step]
        if isinstance(parent, dict):
            parent["added_field"] = True
            with pytest.raises(PlanFileError):
                Plan.from_json(added)


@pytest.mark.parametrize("key", ["live_counts", "desired_empty", "drift", "created_at", "summary"])
def test_a_field_removed_from_the_file_is_caught(varied: dict[str, Any], key: str) -> None:
    del varied[key]
    with pytest.raises(PlanFileError):
        Plan.from_json(varied)


def test_an_edited_plan_resealed_with_fields_that_disagree_is_caught(
    varied: dict[str, Any],
) -> None:
    # Recomputing the checksum is easy; the fields must still agree with each other.
    for edit in (
        lambda d: _set(d, ("summary", "delete"), 0),
        lambda d: (
            _set(d, ("changes", 0, "protected"), False)
            if d["changes"][0]["action"] == "delete"
            else _set(d, ("summary", "create"), 9)
        ),
    ):
        data = json.loads(json.dumps(varied))
        edit(data)
        data["checksum"] = document_checksum(data)
        with pytest.raises(PlanFileError, match="fields do not agree"):
            Plan.from_json(data)


@pytest.mark.parametrize("action", ["create", "delete"])
def test_a_change_with_the_wrong_sides_is_refused(varied: dict[str, Any], action: str) -> None:
    change = next(c for c in varied["changes"] if c["action"] == action)
    if action == "create":
        change["before"] = change["after"]
    else:
        change["after"] = change["before"]
    varied["checksum"] = document_checksum(varied)
    with pytest.raises(PlanFileError, match="it was edited"):
        Plan.from_json(varied)


def test_a_change_outside_the_plans_organization_is_refused(store: Store, folder: Path) -> None:
    four_in_acme(folder, store)
    write(folder, "acme", "alpha", url="https://n.example.com/alpha")
    plan = plan_folder(store, folder, organization="acme")
    data = saved(plan)
    data["changes"][0]["organization"] = "globex"
    data["changes"][0]["after"]["organization"] = "globex"
    data["changes"][0]["before"]["organization"] = "globex"
    data["checksum"] = document_checksum(data)
    with pytest.raises(PlanFileError, match="outside its organization acme"):
        Plan.from_json(data)


# == through the CLI ========================================================================


@pytest.fixture
def run(state: State, folder: Path) -> Callable[..., Any]:
    def invoke(*args: str) -> Any:
        result = CliRunner().invoke(
            cli, [*args, "--state", state.url], catch_exceptions=False, env={"NO_COLOR": "1"}
        )
        assert "Traceback" not in result.output
        return result

    return invoke


def _cli_four_in_acme(run: Callable[..., Any], folder: Path, **vault: Any) -> None:
    for name in ("alpha", "beta", "gamma"):
        write(folder, "acme", name)
    write(folder, "acme", "vault", **vault)
    result = run("apply", str(folder), "--auto-approve", "--actor", "alice")
    assert result.exit_code == 0, result.output


def _live(state: State) -> dict[tuple[str, str], Any]:
    opened = state.open()
    try:
        return live_specs(opened)
    finally:
        opened.close()


def _last_line(result: Any) -> str:
    return str(result.output.strip().splitlines()[-1])


def test_cli_live_counts_edited_in_a_saved_plan(
    run: Callable[..., Any], state: State, folder: Path, tmp_path: Path
) -> None:
    _cli_four_in_acme(run, folder)
    remove(folder, "acme", "alpha", "beta", "gamma")
    out = tmp_path / "plan.json"
    assert run("plan", str(folder), "--out", str(out)).exit_code == 0
    data = json.loads(out.read_text())
    live_before = _live(state)

    data["live_counts"] = {"acme": 1000}
    out.write_text(json.dumps(data))
    edited = run("apply", "--plan", str(out), "--auto-approve", "--allow-delete")
    assert edited.exit_code == 1
    assert _last_line(edited) == "error: saved plan does not match its checksum: it was edited"

    data["checksum"] = document_checksum(data)  # as a forger would
    out.write_text(json.dumps(data))
    forged = run("apply", "--plan", str(out), "--auto-approve", "--allow-delete")
    assert forged.exit_code == 1
    assert _last_line(forged) == (
        "error: the plan deletes 3 of 4 webhooks of organization 'acme', more than 30%: "
        "re-run with --force if that is intended"
    )
    assert _live(state) == live_before


def test_cli_protect_removed_from_a_saved_plan(
    run: Callable[..., Any], state: State, folder: Path, tmp_path: Path
) -> None:
    _cli_four_in_acme(run, folder, protect=True)
    remove(folder, "acme", "vault")
    out = tmp_path / "plan.json"
    assert run("plan", str(folder), "--out", str(out)).exit_code == 0
    data = json.loads(out.read_text())
    (change,) = data["changes"]
    del change["before"]["protect"]
    change["protected"] = False
    data["checksum"] = document_checksum(data)
    out.write_text(json.dumps(data))
    live_before = _live(state)
    result = run("apply", "--plan", str(out), "--auto-approve", "--allow-delete", "--force")
    assert result.exit_code == 1
    assert _last_line(result) == (
        "error: the live state changed since the saved plan was made: acme/vault was edited "
        "(protect); plan again"
    )
    assert _live(state) == live_before


def test_cli_a_webhook_protected_out_of_band_after_the_plan(
    run: Callable[..., Any], state: State, folder: Path, tmp_path: Path
) -> None:
    _cli_four_in_acme(run, folder)
    remove(folder, "acme", "vault")
    out = tmp_path / "plan.json"
    assert run("plan", str(folder), "--out", str(out)).exit_code == 0
    live = _live(state)
    state.set_spec("acme", "vault", {**live[("acme", "vault")], "protect": True})
    live_before = _live(state)
    result = run("apply", "--plan", str(out), "--auto-approve", "--allow-delete", "--force")
    assert result.exit_code == 1
    assert _last_line(result) == (
        "error: the live state changed since the saved plan was made: acme/vault was edited "
        "(protect); plan again"
    )
    assert _live(state) == live_before
    # planned again, the protection shows and holds
    again = run("apply", str(folder), "--auto-approve", "--allow-delete", "--force")
    assert again.exit_code == 1
    assert "PROTECTED: will not be deleted" in again.output
    assert _last_line(again).startswith("error: acme/vault is protected and never deleted")
    assert _live(state) == live_before


def test_cli_any_edit_to_a_saved_plan_is_refused(
    run: Callable[..., Any], state: State, folder: Path, tmp_path: Path
) -> None:
    _cli_four_in_acme(run, folder)
    write(folder, "acme", "alpha", url="https://n.example.com/alpha")
    out = tmp_path / "plan.json"
    assert run("plan", str(folder), "--out", str(out)).exit_code == 0
    text = out.read_text()
    live_before = _live(state)
    for field, value in [
        ("created_at", "2000-01-01T00:00:00+00:00"),
        ("desired_empty", True),
        ("summary", {"create": 0, "update": 1, "delete": 0, "unchanged": 2, "drift": 0}),
        ("drift", [{"organization": "acme", "name": "x", "paused_reason": None, "fields": []}]),
    ]:
        data = json.loads(text)
        data[field] = value
        out.write_text(json.dumps(data))
        result = run("apply", "--plan", str(out), "--auto-approve")
        assert result.exit_code == 1, field
        assert _last_line(result) == "error: saved plan does not match its checksum: it was edited"
    assert _live(state) == live_before
    out.write_text(text)
    assert run("apply", "--plan", str(out), "--auto-approve").exit_code == 0
