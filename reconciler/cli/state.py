"""Commands over the live state: plan, apply, history, export, migrate."""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from reconciler import history_report, plan_report
from reconciler.apply import ApplyOptions, commit_check
from reconciler.apply import apply as apply_changes
from reconciler.cli.common import (
    DEFAULT_PATH,
    color,
    echo_json,
    format_option,
    load_or_fail,
    org_option,
    state_option,
)
from reconciler.errors import NoState, PlanFileError, ReconcilerError
from reconciler.export import export_tree
from reconciler.loader import LoadResult, definitions_root, load_definitions
from reconciler.moments import parse_moment
from reconciler.plan import DEFAULT_DELETE_SHARE, Plan, make_plan, with_sources
from reconciler.provenance import CommitCheck, check_commit, detect_actor, git_commit
from reconciler.store import Store, open_store
from reconciler.store.base import AUDIT_ACTIONS
from reconciler.validate_report import count

delete_share_option = click.option(
    "--delete-share",
    type=click.FloatRange(0, 1),
    default=DEFAULT_DELETE_SHARE,
    show_default=True,
    help="Deleting more than this share of an organization's webhooks needs --force.",
)


def definitions_scope(path: Path, organization: str | None) -> str | None:
    """The organization a plan covers: --org, or the organization folder given as PATH.

    A plan of one file, or of a folder below an organization's, would plan the
    deletion of every definition it does not see: refused.
    """
    if not path.exists():
        raise ReconcilerError(f"{path}: no such file or folder")
    if path.is_file():
        raise ReconcilerError(
            f"{path}: plan and apply take the definitions folder (or one organization's "
            "folder), not a single file"
        )
    root = definitions_root(path)
    if root == path:
        return organization
    parts = path.absolute().relative_to(root.absolute()).parts
    if len(parts) != 1:
        raise ReconcilerError(f"{path}: give the definitions folder or an organization's folder")
    if organization is not None and organization != parts[0]:
        raise ReconcilerError(f"--org {organization} contradicts the folder {path}")
    return parts[0]


def check_organization(organization: str | None, result: LoadResult, store: Store | None) -> None:
    """--org names an organization of the files or of the live state (None: there is
    no state yet): another is a typo, refused with the closest known one, rather
    than planned as "no changes"."""
    if organization is None:
        return
    known = set(result.organizations) | {d.spec.key[0] for d in result.definitions}
    if organization in known:
        return
    if store is not None:
        known |= {w.organization for w in store.webhooks()}
    if organization in known:
        return
    close = difflib.get_close_matches(organization, sorted(known), n=1, cutoff=0.6)
    if close:
        hint = f" (did you mean '{close[0]}'?)"
    elif known:
        hint = f" (known: {', '.join(sorted(known))})"
    else:
        hint = " (there is none yet)"
    raise ReconcilerError(
        f"--org {organization}: no such organization in the definitions or the live state{hint}"
    )


def state_exists(url: str) -> bool:
    """Whether the live state at `url` is there (opening it without making it)."""
    try:
        open_store(url).close()
    except NoState:
        return False
    return True


def _plan_from_files(result: LoadResult, store: Store, organization: str | None) -> Plan:
    plan = make_plan(
        (d.spec for d in result.definitions),
        store.webhooks(organization),
        store.state(),
        organization=organization,
        shared_env=result.shared_env if organization is None else None,
        live_shared_env=store.shared_env() if organization is None else None,
    )
    return with_sources(plan, {d.spec.key: d.path for d in result.definitions})


@click.command()
@click.argument("path", type=click.Path(path_type=Path), default=DEFAULT_PATH)
@state_option
@org_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    help="text (coloured on a terminal; NO_COLOR turns colour off), json, or markdown "
    "for a pull-request comment.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Save the plan for apply --plan (the plan workflow saves the pull request's, "
    "which the apply workflow applies after the merge).",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 with no changes, 1 on error, 2 when there are changes.",
)
@delete_share_option
def plan(
    path: Path,
    state: str,
    organization: str | None,
    fmt: str,
    out: Path | None,
    detailed_exitcode: bool,
    delete_share: float,
) -> None:
    """Show what apply would change: + create, ~ update, - delete, and drift.

    Compares the definitions under PATH (default: webhooks.d), and the shared
    list of variables (without --org), with the live state. Secret references
    are shown as written; credentials are masked.
    Deletes are marked unrecoverable, and the guards apply would enforce are
    listed.

    \b
    Example:
      reconciler plan --format markdown --out plan.json --detailed-exitcode
    """
    organization = definitions_scope(path, organization)
    result = _load_for_plan(path, fmt)
    store = open_store(state)
    try:
        check_organization(organization, result, store)
        the_plan = _plan_from_files(result, store, organization)
        the_plan.commit_check = commit_check(store, the_plan, _commit_check(path, git_commit(path)))
    finally:
        store.close()
    refusals = the_plan.refusals(allow_delete=False, force=False, delete_share=delete_share)
    rollback = the_plan.commit_check.refusal() if the_plan.has_changes else None
    if rollback is not None:
        refusals.insert(0, rollback)
    if fmt == "text":
        click.echo(plan_report.text(the_plan, refusals, color=True), color=color())
    else:
        click.echo(plan_report.REPORTERS[fmt](the_plan, refusals))
    if out is not None:
        try:
            out.write_text(json.dumps(the_plan.as_json(full=True), indent=2) + "\n", "utf-8")
        except OSError as exc:
            raise ReconcilerError(f"{out}: cannot write the plan: {exc.strerror}") from None
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(2)


def _load_for_plan(path: Path, fmt: str) -> LoadResult:
    """The definitions; when invalid, the problems also go to stdout in the format
    asked for (JSON, or a pull-request comment), since nothing else will."""
    result = load_definitions(path)
    if not result.ok and fmt != "text":
        click.echo(plan_report.INVALID_REPORTERS[fmt](result.problems))
    return load_or_fail(path, loaded=result)


class _TerminalApprover:
    def __init__(self) -> None:
        self.interactive = sys.stdin.isatty()

    def confirm_deletes(self, the_plan: Plan) -> bool:
        count = len(the_plan.deletes())
        answer = click.prompt(
            f"This deletes {count} webhook{'s' if count != 1 else ''}, which cannot be "
            "recovered. Type 'delete' to allow it",
            default="",
            show_default=False,
        )
        return bool(answer.strip() == "delete")

    def approve(self, the_plan: Plan) -> bool:
        answer = click.prompt(
            "Apply these changes? Only 'yes' is accepted", default="", show_default=False
        )
        return bool(answer.strip() == "yes")


@click.command()
@click.argument("path", type=click.Path(path_type=Path), default=DEFAULT_PATH)
@state_option
@org_option
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Apply a plan saved by plan --out; refused when it was edited or the live state "
    "changed since.",
)
@click.option("--auto-approve", is_flag=True, help="Do not ask before changing anything.")
@click.option("--allow-delete", is_flag=True, help="Allow deletes (they are unrecoverable).")
@click.option(
    "--force", is_flag=True, help="Allow deleting all, or a large share, of an organization."
)
@delete_share_option
@click.option(
    "--lock-timeout",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for another apply to finish.",
)
@click.option(
    "--allow-rollback",
    is_flag=True,
    help="Allow applying definitions at a commit older than, or unrelated to, the one the "
    "live state was last applied from (the audit log notes it).",
)
@click.option("--actor", help="Who applies, for the audit log (default: CI's or git's user).")
@format_option
def apply(
    path: Path,
    state: str,
    organization: str | None,
    plan_file: Path | None,
    auto_approve: bool,
    allow_delete: bool,
    force: bool,
    delete_share: float,
    lock_timeout: float,
    allow_rollback: bool,
    actor: str | None,
    fmt: str,
) -> None:
    """Apply the definitions (or a saved plan) to the live state.

    Plans first and shows the plan, then applies every change in one
    transaction under a lock. Deletes need --allow-delete (or typing 'delete'
    on a terminal); protected webhooks are never deleted; deleting all of an
    organization or more than --delete-share of it needs --force. Every guard is
    checked against the live state under the lock, a saved plan's too. On a
    terminal it asks before changing anything unless --auto-approve; elsewhere it
    needs --auto-approve. The first apply makes the state when none is there
    (with --plan, the state must be there).

    The definitions' git commit is compared with the one the live state was
    last applied from (its newest audit entry naming a commit, in the scope):
    a commit older than it, or on a history that does not contain it, is
    refused unless --allow-rollback, so re-running an old pipeline never
    reverts newer changes. When git cannot tell (the live commit is not in
    this clone, e.g. a shallow one), apply warns and goes on. A tree with
    uncommitted changes compares by its HEAD.

    --format json prints {"applied", "serial", "actor", "plan"} (the plan as
    plan --format json gives it) on stdout, and the plan's text on stderr.

    \b
    Example:
      reconciler apply --auto-approve --allow-delete --actor alice
    """
    who = detect_actor(actor)
    commit = git_commit(path)
    options = ApplyOptions(
        actor=who,
        git_commit=commit,
        commit_check=_commit_check(path, commit),
        allow_rollback=allow_rollback,
        allow_delete=allow_delete,
        force=force,
        delete_share=delete_share,
        auto_approve=auto_approve,
        lock_timeout=lock_timeout,
    )
    if plan_file is not None:
        saved = _read_plan_file(plan_file)
        make: Callable[[], Plan] = lambda: saved  # noqa: E731
    else:
        organization = definitions_scope(path, organization)
        result = load_or_fail(path)  # files are read once, before the lock is taken
        if organization is not None and not state_exists(state):
            # A typo in --org must not make the state it then refuses to apply to.
            check_organization(organization, result, None)
    # The first apply starts the state; a saved plan was made against one that exists.
    store = open_store(state, create=plan_file is None)
    try:
        if plan_file is None:
            check_organization(organization, result, store)
            make = lambda: _plan_from_files(result, store, organization)  # noqa: E731

        def show(the_plan: Plan, refusals: list[str]) -> None:
            shown = plan_report.text(the_plan, refusals, color=True)
            click.echo(shown, color=color(), err=fmt == "json")

        outcome = apply_changes(
            store, make, options, _TerminalApprover(), show, saved=plan_file is not None
        )
    finally:
        store.close()
    if fmt == "json":
        echo_json(
            {
                "applied": outcome.applied,
                "serial": outcome.serial,
                "actor": who,
                "plan": outcome.plan.as_json(),
            }
        )
    elif outcome.applied:
        counts = outcome.plan.counts()
        shared = outcome.plan.shared_env
        changed = len(shared.lines()) if shared else 0
        shared_text = f", {count(changed, 'shared variable')} changed" if shared else ""
        click.echo(
            f"Applied: {counts['create']} created, {counts['update']} updated, "
            f"{counts['delete']} deleted{shared_text} (state serial {outcome.serial}, "
            f"actor {who})."
        )
    else:
        click.echo("Nothing to apply.")


def _commit_check(path: Path, commit: str | None) -> Callable[[Any], CommitCheck]:
    """Compares the definitions at `path` (at `commit`) with a live state's last commit."""
    return lambda live: check_commit(path, str(path), commit, live)


def _read_plan_file(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanFileError(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise PlanFileError(f"{path}: not a saved plan (not JSON)") from None
    if not isinstance(data, dict):
        raise PlanFileError(f"{path}: not a saved plan")
    return Plan.from_json(data)


@click.command()
@click.argument("name", required=False)
@state_option
@org_option
@click.option("--limit", type=click.IntRange(1), help="Show at most this many entries.")
@click.option(
    "--since",
    help="Only entries recorded at or after this: an age (30m, 2h, 3d, 1w) or an ISO 8601 time.",
)
@click.option("--until", help="Only entries recorded before this (as --since).")
@click.option("--actor", help="Only this actor's entries (exactly as shown, e.g. alice).")
@click.option(
    "--action",
    type=click.Choice(AUDIT_ACTIONS),
    help="Only entries of this action.",
)
@format_option
def history(
    name: str | None,
    state: str,
    organization: str | None,
    limit: int | None,
    since: str | None,
    until: str | None,
    actor: str | None,
    action: str | None,
    fmt: str,
) -> None:
    """Show the audit log: who changed which webhook, when, from which commit.

    Newest first. Secret references are shown as written; a literal credential
    (one allowed by allow_literal, or one stored before the rule refused it) is
    masked, in the stored rows and again when shown. --since, --until, --actor
    and --action narrow it (--limit counts what is left). A NAME the audit
    log does not know (in --org, when given) is an error, exit 1.

    \b
    Example:
      reconciler history slack-new-rule-violation --org acme
      reconciler history --org acme --since 1d --action pause
    """
    now = time.time()
    bounds: dict[str, float | None] = {}
    for option, text in (("since", since), ("until", until)):
        try:
            bounds[option] = parse_moment(text, now) if text is not None else None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=f"--{option}") from None
    narrowed = any(v is not None for v in (since, until, actor, action))
    store = open_store(state)
    try:
        entries = history_report.selected(
            store.history(organization, name, None if narrowed else limit),
            actor=actor,
            action=action,
            limit=limit,
            **bounds,
        )
    finally:
        store.close()
    if name is not None and not entries:
        where = f" of organization {organization}" if organization else ""
        raise ReconcilerError(f"no webhook {name}{where} in the audit log at {store.url}")
    if fmt == "json":
        echo_json([history_report.entry_json(e) for e in entries])
        return
    if not entries:
        click.echo("No history.")
    for entry in entries:
        click.echo(history_report.entry_text(entry))


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@state_option
@org_option
@click.option(
    "--force",
    is_flag=True,
    help="Write into a FOLDER that is not empty, making it match the live state: "
    "files are rewritten where they are, those of webhooks not in the state removed.",
)
@format_option
def export(folder: Path, state: str, organization: str | None, force: bool, fmt: str) -> None:
    """Write the live state as definition files, one per webhook.

    Files go to FOLDER/<organization>/<name>.yaml, and the shared list of
    variables to FOLDER/shared-env.yaml (without --org); planning FOLDER against
    the same state shows no change. Values are written as stored, unmasked (a
    literal that allow_literal lets through too), since the files are definitions
    to commit. Organizations and names read from the state are checked as names
    in definition files are, and every path must stay inside FOLDER: a row that
    fails is named, and nothing is written.

    A FOLDER that is not empty is refused (exit 1, nothing written) unless
    --force. With --force FOLDER is made to match the live state (within --org):
    a webhook whose definition file is already there is rewritten at that path,
    whatever its file name (its comments and layout are not kept: the file is
    written from the state); a new one goes to <organization>/<name>.yaml; the
    definition files of webhooks the state does not hold are removed, and
    listed. A YAML file that holds no definition stops it, nothing written.
    Files that are not YAML are left alone.

    --format json: {"folder", "webhooks": [paths], "shared_env": path or null,
    "removed": [paths]}, paths relative to FOLDER.

    \b
    Example:
      reconciler export recovered.d && reconciler plan recovered.d
      reconciler export webhooks.d --force && git diff webhooks.d
    """
    store = open_store(state)
    try:
        shared = store.shared_env() if organization is None else None
        result = export_tree(
            store.webhooks(organization), folder, shared, force=force, organization=organization
        )
    finally:
        store.close()
    if fmt == "json":
        echo_json(result.as_json(folder))
        return
    also = " and the shared list of variables" if result.shared else ""
    click.echo(f"Exported {len(result.webhooks)} webhooks{also} to {folder}.")
    for path in result.removed:
        click.echo(f"removed {path} (its webhook is not in the live state)")


@click.command()
@state_option
@format_option
def migrate(state: str, fmt: str) -> None:
    """Bring the state's database schema up to date, and list its migrations.

    Every command migrates when it opens the state; this does it explicitly,
    e.g. before starting several dispatchers. Where there is no state yet it makes
    a new, empty one: with apply, the only command that does; every other
    command refuses a state that is not there. Concurrent runs are safe: one
    migrates, the others wait. --format json: {"state", "migrations"}.

    \b
    Example:
      RECONCILER_STATE=postgresql://reconciler@db/reconciler reconciler migrate
    """
    store = open_store(state, create=True)
    try:
        names = store.migrations()
    finally:
        store.close()
    if fmt == "json":
        echo_json({"state": store.url, "migrations": names})
        return
    for name in names:
        click.echo(f"applied  {name}")
    click.echo(f"{store.url}: schema up to date ({count(len(names), 'migration')}).")
