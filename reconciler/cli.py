"""The command line: a thin adapter over the library.

Each command parses options, calls one library function and prints its result.
Expected failures (ReconcilerError) become one line on stderr and exit 1; click
turns usage errors into exit 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from reconciler import (
    __version__,
    history_report,
    plan_report,
    preview,
    scaffold,
    validate_report,
)
from reconciler.apply import ApplyOptions, commit_check
from reconciler.apply import apply as apply_changes
from reconciler.errors import DefinitionsInvalid, PlanFileError, ReconcilerError
from reconciler.export import export as export_state
from reconciler.loader import LoadResult, definitions_root, load_definitions, load_paths
from reconciler.model import NAME_PATTERN, NAME_RULE, Event
from reconciler.plan import DEFAULT_DELETE_SHARE, Plan, make_plan
from reconciler.provenance import CommitCheck, check_commit, detect_actor, git_commit
from reconciler.schema import webhook_schema_text
from reconciler.store import DEFAULT_STATE, Store, open_store

DEFAULT_PATH = "webhooks.d"
FORMATS = click.Choice(["text", "json"])


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReconcilerError as exc:
            message = str(exc)
            if message:
                click.echo(f"error: {message}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reconciler")
def cli() -> None:
    """GitOps for outgoing webhooks.

    Webhook definitions live as YAML files in webhooks.d/; reconciler validates
    them, plans the difference against the live state and applies it.

    \b
    Example:
      reconciler validate webhooks.d
    """


def main() -> None:
    cli(prog_name="reconciler")


def load_or_fail(path: Path, *, fmt: str = "text", check_env: bool = False) -> LoadResult:
    """Load definitions, printing every problem; raise when any is an error."""
    result = load_definitions(path, check_env=check_env)
    for problem in result.problems:
        click.echo(str(problem), err=True)
    if not result.ok:
        raise DefinitionsInvalid("")
    return result


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(validate_report.REPORTERS)),
    default="text",
    help="text, json, or github: one GitHub Actions annotation per problem "
    "(::error file=...,line=...,col=...::message), nothing else.",
)
@click.option(
    "--check-env",
    is_flag=True,
    help="Also fail when a ${env:NAME} reference is not set, or when a signing_secret "
    "variable does not hold whsec_ and base64.",
)
def validate(paths: tuple[Path, ...], fmt: str, check_env: bool) -> None:
    """Check definitions against the schema and every rule.

    PATHS are definitions folders or files (default: webhooks.d), checked
    together: a name used twice among them is an error. A definition may read
    only its organization's ${env:} variables (acme: ACME_*; the longest
    organization prefix owns a name) and those of webhooks.d/shared-env.yaml,
    which is checked too. Every problem of every file is printed as
    path:line:col: message. Exit 0 when all is valid, 1 when anything is not.
    The pre-commit hook runs it on the whole webhooks.d folder, so a name
    repeated in a file the commit leaves alone is caught too.

    \b
    Example:
      reconciler validate webhooks.d --check-env
      reconciler validate webhooks.d/acme/slack.yaml webhooks.d/acme/pager.yaml
      reconciler validate --format github   # in a GitHub Actions step
    """
    paths = paths or (Path(DEFAULT_PATH),)
    for path in paths:
        if not path.exists():
            raise ReconcilerError(f"{path}: no such file or folder")
    result = load_paths(paths, check_env=check_env)
    for line in validate_report.REPORTERS[fmt](result):
        click.echo(line)
    if not result.ok:
        sys.exit(1)


count = validate_report.count


@cli.command()
def schema() -> None:
    """Print the JSON Schema of a definition file.

    schemas/webhook.schema.json holds this output; editors use it through the
    yaml-language-server modeline at the top of each example.

    \b
    Example:
      reconciler schema > schemas/webhook.schema.json
    """
    click.echo(webhook_schema_text(), nl=False)


@cli.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path), default=DEFAULT_PATH)
@click.option(
    "--org",
    "organization",
    help="The webhook's organization (needed when several "
    "organizations have a webhook of that name).",
)
@click.option(
    "--event-type",
    type=click.Choice([e.value for e in Event]),
    help="The event type ({{event}}; default: the webhook's own).",
)
@click.option(
    "--name",
    "event_name",
    default=preview.SAMPLE_NAME,
    show_default=True,
    help="The rule or event name ({{name}}).",
)
@click.option(
    "--description",
    default=preview.SAMPLE_DESCRIPTION,
    show_default=True,
    help="Details ({{description}}).",
)
@click.option("--time", "when", help="When it happened, ISO 8601 with a zone (default: now).")
@click.option(
    "--event-id",
    default=preview.PREVIEW_EVENT_ID,
    show_default=True,
    help="The event id ({{event_id}}).",
)
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
def render(
    name: str,
    path: Path,
    organization: str | None,
    event_type: str | None,
    event_name: str,
    description: str,
    when: str | None,
    event_id: str,
    fmt: str,
) -> None:
    """Show the exact request webhook NAME would send for a sample event.

    Loads the definitions under PATH (default: webhooks.d) and prints the method,
    URL, headers (webhook-id, webhook-timestamp and, with a signing secret, a
    placeholder for webhook-signature) and body. Secret references are shown as
    written and never resolved; literal credentials are masked. Nothing is sent
    and the live state is not read.

    \b
    Example:
      reconciler render slack-new-rule-violation --org acme --name no-public-s3 \\
        --description "bucket logs is public"
    """
    if not path.exists():
        raise ReconcilerError(f"{path}: no such file or folder")
    result = load_or_fail(path)
    spec = preview.find_webhook((d.spec for d in result.definitions), name, organization)
    webhook_organization = spec.key[0]
    record = preview.checked_event(
        {
            "type": event_type or spec.event.value,
            "organization": webhook_organization,
            "name": event_name,
            "description": description,
            "time": when,
            "id": event_id,
        },
        now=datetime.now(UTC).replace(microsecond=0),
    )
    if record.type != spec.event.value:
        click.echo(
            f"warning: {name} fires on {spec.event.value} events, not {record.type}", err=True
        )
    if not spec.enabled:
        click.echo(f"warning: {name} is disabled: it never fires", err=True)
    request = preview.preview(
        spec, preview.event_data(record), preview.PREVIEW_DELIVERY_ID, int(time.time())
    )
    if fmt == "json":
        click.echo(json.dumps(request.as_json(), indent=2))
    else:
        click.echo(preview.request_text(request))


# -- the live state -------------------------------------------------------------

state_option = click.option(
    "--state",
    "state",
    envvar="RECONCILER_STATE",
    default=DEFAULT_STATE,
    show_default=True,
    help="Where the live state is: sqlite:///PATH (relative) or sqlite:////ABS/PATH. "
    "Also RECONCILER_STATE. Only apply and migrate make a state that is not there.",
)
org_option = click.option("--org", "organization", help="Only this organization.")


def _color() -> bool | None:
    return False if os.environ.get("NO_COLOR") else None


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


def _plan_from_files(result: LoadResult, store: Store, organization: str | None) -> Plan:
    return make_plan(
        (d.spec for d in result.definitions),
        store.webhooks(organization),
        store.state(),
        organization=organization,
        shared_env=result.shared_env if organization is None else None,
        live_shared_env=store.shared_env() if organization is None else None,
    )


@cli.command()
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
@click.option("--out", type=click.Path(path_type=Path), help="Save the plan for apply --plan.")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 with no changes, 1 on error, 2 when there are changes.",
)
@click.option(
    "--delete-share",
    type=click.FloatRange(0, 1),
    default=DEFAULT_DELETE_SHARE,
    show_default=True,
    help="Deleting more than this share of an organization's webhooks needs --force.",
)
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
    result = load_or_fail(path)
    store = open_store(state)
    try:
        the_plan = _plan_from_files(result, store, organization)
        the_plan.commit_check = commit_check(store, the_plan, _commit_check(path, git_commit(path)))
    finally:
        store.close()
    refusals = the_plan.refusals(allow_delete=False, force=False, delete_share=delete_share)
    rollback = the_plan.commit_check.refusal() if the_plan.has_changes else None
    if rollback is not None:
        refusals.insert(0, rollback)
    if fmt == "text":
        click.echo(plan_report.text(the_plan, refusals, color=True), color=_color())
    else:
        click.echo(plan_report.REPORTERS[fmt](the_plan, refusals))
    if out is not None:
        try:
            out.write_text(json.dumps(the_plan.as_json(full=True), indent=2) + "\n", "utf-8")
        except OSError as exc:
            raise ReconcilerError(f"{out}: cannot write the plan: {exc.strerror}") from None
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(2)


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


@cli.command()
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
@click.option(
    "--delete-share",
    type=click.FloatRange(0, 1),
    default=DEFAULT_DELETE_SHARE,
    show_default=True,
    help="Deleting more than this share of an organization's webhooks needs --force.",
)
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
    # The first apply starts the state; a saved plan was made against one that exists.
    store = open_store(state, create=plan_file is None)
    try:
        if plan_file is None:
            make = lambda: _plan_from_files(result, store, organization)  # noqa: E731

        def show(the_plan: Plan, refusals: list[str]) -> None:
            click.echo(plan_report.text(the_plan, refusals, color=True), color=_color())

        outcome = apply_changes(
            store, make, options, _TerminalApprover(), show, saved=plan_file is not None
        )
    finally:
        store.close()
    if outcome.applied:
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


@cli.command()
@click.argument("name", required=False)
@state_option
@org_option
@click.option("--limit", type=click.IntRange(1), help="Show at most this many entries.")
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
def history(
    name: str | None, state: str, organization: str | None, limit: int | None, fmt: str
) -> None:
    """Show the audit log: who changed which webhook, when, from which commit.

    Newest first. Secret references are shown as written; a literal credential
    (one allowed by allow_literal, or one stored before the rule refused it) is
    masked, in the stored rows and again when shown.

    \b
    Example:
      reconciler history slack-new-rule-violation --org acme
    """
    store = open_store(state)
    try:
        entries = list(store.history(organization, name, limit))
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps([history_report.entry_json(e) for e in entries], indent=2))
        return
    if not entries:
        click.echo("No history.")
    for entry in entries:
        click.echo(history_report.entry_text(entry))


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@state_option
@org_option
def export(folder: Path, state: str, organization: str | None) -> None:
    """Write the live state as definition files, one per webhook.

    Files go to FOLDER/<organization>/<name>.yaml, and the shared list of
    variables to FOLDER/shared-env.yaml (without --org); planning FOLDER against
    the same state shows no change. Values are written as stored, unmasked (a
    literal that allow_literal lets through too), since the files are definitions
    to commit. Organizations and names read from the state are checked as names
    in definition files are, and every path must stay inside FOLDER: a row that
    fails is named, and nothing is written.

    \b
    Example:
      reconciler export recovered.d && reconciler plan recovered.d
    """
    store = open_store(state)
    try:
        shared = store.shared_env() if organization is None else None
        written = export_state(store.webhooks(organization), folder, shared)
    finally:
        store.close()
    webhooks = len(written) - (1 if shared else 0)
    also = " and the shared list of variables" if shared else ""
    click.echo(f"Exported {webhooks} webhooks{also} to {folder}.")


@cli.command()
@click.argument(
    "folder", type=click.Path(path_type=Path, file_okay=False), default=".", required=False
)
@click.option(
    "--org",
    "organization",
    default=scaffold.DEFAULT_ORGANIZATION,
    show_default=True,
    help="The first organization: webhooks.d/ORG/example.yaml.",
)
@click.option(
    "--admins",
    default=scaffold.DEFAULT_ADMINS,
    show_default=True,
    help="The GitHub team (or user) that owns webhooks.d/ in CODEOWNERS.",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(folder: Path, organization: str, admins: str, force: bool) -> None:
    """Start a definitions repository in FOLDER (default: here).

    Writes webhooks.d/ORG/example.yaml (valid, its URL a ${env:ORG_...}
    reference, with an editor modeline to schemas/webhook.schema.json, copied
    beside it), webhooks.d/shared-env.yaml (the variables every organization may
    read, empty), the GitHub workflows webhooks-plan.yml and webhooks-apply.yml,
    CODEOWNERS (the shared list the admins' alone), .pre-commit-config.yaml
    using reconciler's hook, and a .gitignore for .reconciler/. Existing files
    are listed and left alone (exit 1) unless --force.

    \b
    Example:
      reconciler init webhooks-repo --org acme --admins @acme-corp/webhook-admins
      cd webhooks-repo && reconciler validate && reconciler plan
    """
    if not re.match(NAME_PATTERN, organization):
        raise click.BadParameter(f"{organization!r}: {NAME_RULE}", param_hint="--org")
    if not re.fullmatch(r"@[A-Za-z0-9-]+(/[A-Za-z0-9._-]+)?", admins):
        raise click.BadParameter(
            f"{admins!r}: a GitHub team (@org/team) or user (@name)", param_hint="--admins"
        )
    written = scaffold.scaffold(organization, admins).write(folder, force=force)
    for relative in written:
        click.echo(f"wrote {folder / relative}")
    click.echo(
        "Next: set the repository secret RECONCILER_STATE (the live state's URL), make that "
        "state once with `reconciler migrate`, protect main with required reviews from code "
        "owners, and `pre-commit install`."
    )


@cli.command()
@state_option
def migrate(state: str) -> None:
    """Bring the state's database schema up to date, and list its migrations.

    Every command migrates when it opens the state; this does it explicitly,
    e.g. before starting several dispatchers. Where there is no state yet it makes
    a new, empty one: with apply, the only command that does; every other
    command refuses a state that is not there. Concurrent runs are safe: one
    migrates, the others wait.

    \b
    Example:
      RECONCILER_STATE=postgresql://reconciler@db/reconciler reconciler migrate
    """
    store = open_store(state, create=True)
    try:
        names = store.migrations()
    finally:
        store.close()
    for name in names:
        click.echo(f"applied  {name}")
    click.echo(f"{store.url}: schema up to date ({count(len(names), 'migration')}).")


# The dispatcher's, the tokens' and the webhooks' commands register themselves on the
# same group.
from reconciler import (  # noqa: E402, F401
    cli_dispatch,
    cli_retention,
    cli_status,
    cli_tokens,
    cli_webhooks,
)
