"""Commands over definition files alone: validate, schema, render, init."""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from reconciler import events, preview, scaffold, validate_report
from reconciler.cli.common import DEFAULT_PATH, FORMATS, echo_json, load_or_fail
from reconciler.errors import ReconcilerError
from reconciler.loader import load_paths
from reconciler.model import NAME_PATTERN, NAME_RULE, Event
from reconciler.schema import webhook_schema_text


@click.command()
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


@click.command()
def schema() -> None:
    """Print the JSON Schema of a definition file.

    schemas/webhook.schema.json holds this output; editors use it through the
    yaml-language-server modeline at the top of each example.

    \b
    Example:
      reconciler schema > schemas/webhook.schema.json
    """
    click.echo(webhook_schema_text(), nl=False)


@click.command()
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
    "--id",
    "event_id",
    help=f"The event id ({{{{event_id}}}}), as fire's --id (default: {preview.PREVIEW_EVENT_ID}).",
)
# The old spelling, before render and fire spelled the event id alike.
@click.option("--event-id", "old_event_id", hidden=True)
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
def render(
    name: str,
    path: Path,
    organization: str | None,
    event_type: str | None,
    event_name: str,
    description: str,
    when: str | None,
    event_id: str | None,
    old_event_id: str | None,
    fmt: str,
) -> None:
    """Show the exact request webhook NAME would send for a sample event.

    The event's options are spelled as fire's: --name (the rule), --description,
    --time, --id. Loads the definitions under PATH (default: webhooks.d) and prints the method,
    URL, headers (webhook-id, webhook-timestamp and, with a signing secret, a
    placeholder for webhook-signature) and body. Secret references are shown as
    written and never resolved; literal credentials are masked. Nothing is sent
    and the live state is not read.

    \b
    Example:
      reconciler render slack-new-rule-violation --org acme --name no-public-s3 \\
        --description "bucket logs is public"
    """
    if event_id is not None and old_event_id is not None:
        raise click.UsageError("--event-id is the old spelling of --id: give one of them")
    if old_event_id is not None:
        click.echo("warning: --event-id is deprecated: use --id, as fire does", err=True)
    event_id = event_id or old_event_id or preview.PREVIEW_EVENT_ID
    if not path.exists():
        raise ReconcilerError(f"{path}: no such file or folder")
    result = load_or_fail(path)
    spec = preview.find_webhook((d.spec for d in result.definitions), name, organization)
    webhook_organization = spec.key[0]
    record = events.checked_event(
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
        spec, events.event_data(record), preview.PREVIEW_DELIVERY_ID, int(time.time())
    )
    if fmt == "json":
        echo_json(request.as_json())
    else:
        click.echo(preview.request_text(request))


@click.command()
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
    required=True,
    help="The GitHub team (@org/team) or user (@name) of the webhook admins: the "
    "code owners of webhooks.d/ and of the workflows, and the reviewers the apply "
    "workflow suggests. The only team the files name.",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(folder: Path, organization: str, admins: str, force: bool) -> None:
    """Start a definitions repository in FOLDER (default: here).

    Writes webhooks.d/ORG/example.yaml (valid, its URL a ${env:ORG_...}
    reference, with an editor modeline to schemas/webhook.schema.json, copied
    beside it), webhooks.d/shared-env.yaml (the variables every organization may
    read, empty), the GitHub workflows webhooks-plan.yml and webhooks-apply.yml,
    CODEOWNERS (the shared list the admins' alone), .pre-commit-config.yaml
    with reconciler's hook, and a .gitignore for .reconciler/. Existing files
    are listed and left alone (exit 1) unless --force.

    The workflows and the hook install this release from PyPI, pinned:
    webhook-reconciler==VERSION (the command and package are `reconciler`), so
    an upgrade is a reviewed change. --admins is the only team the files name.

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
