"""The command line: a thin adapter over the library.

Each command parses options, calls one library function and prints its result.
Expected failures (ReconcilerError) become one line on stderr and exit 1; click
turns usage errors into exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from reconciler import __version__
from reconciler.errors import DefinitionsInvalid, ReconcilerError
from reconciler.loader import LoadResult, load_definitions
from reconciler.schema import webhook_schema_text

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
@click.argument("path", type=click.Path(path_type=Path), default=DEFAULT_PATH)
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
@click.option(
    "--check-env", is_flag=True, help="Also fail when a ${env:NAME} reference is not set."
)
def validate(path: Path, fmt: str, check_env: bool) -> None:
    """Check definitions against the schema and every rule.

    PATH is a definitions folder (default: webhooks.d) or a single file. Every
    problem of every file is printed as path:line:col: message. Exit 0 when all
    is valid, 1 when anything is not.

    \b
    Example:
      reconciler validate webhooks.d --check-env
    """
    if not path.exists():
        raise ReconcilerError(f"{path}: no such file or folder")
    result = load_definitions(path, check_env=check_env)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "valid": result.ok,
                    "files": result.files,
                    "definitions": len(result.definitions),
                    "problems": [p.as_json() for p in result.problems],
                },
                indent=2,
            )
        )
    else:
        for problem in result.problems:
            click.echo(str(problem))
        organizations = {d.spec.key[0] for d in result.definitions}
        errors, warnings = len(result.errors), len(result.warnings)
        if result.ok:
            click.echo(
                f"{len(result.definitions)} definitions in {len(organizations)} "
                f"organizations are valid ({warnings} warnings)."
            )
        else:
            click.echo(f"{errors} errors, {warnings} warnings in {result.files} files.")
    if not result.ok:
        sys.exit(1)


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
