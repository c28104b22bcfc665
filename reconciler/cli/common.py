"""What the commands share: the output formats, the options naming the live state
and the organization, and loading definitions with every problem printed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from reconciler.errors import DefinitionsInvalid
from reconciler.jsontimes import with_iso_times
from reconciler.loader import LoadResult, load_definitions
from reconciler.store import DEFAULT_STATE

DEFAULT_PATH = "webhooks.d"
FORMATS = click.Choice(["text", "json"])

state_option = click.option(
    "--state",
    "state",
    envvar="RECONCILER_STATE",
    default=DEFAULT_STATE,
    show_default=True,
    help="Where the live state is: sqlite:///PATH (relative), sqlite:////ABS/PATH, or "
    "postgresql://USER@HOST:PORT/DATABASE (optionally ?schema=NAME). Also "
    "RECONCILER_STATE. Only apply and migrate make a state that is not there.",
)
org_option = click.option("--org", "organization", help="Only this organization.")
format_option = click.option(
    "--format",
    "fmt",
    type=FORMATS,
    default="text",
    help="Output format: text, or json (times in ISO 8601 UTC).",
)


def echo_json(document: Any) -> None:
    """Print a command's JSON result, its times as ISO 8601 UTC text (jsontimes.py)."""
    click.echo(json.dumps(with_iso_times(document), indent=2))


def color() -> bool | None:
    return False if os.environ.get("NO_COLOR") else None


def load_or_fail(
    path: Path, *, check_env: bool = False, loaded: LoadResult | None = None
) -> LoadResult:
    """Load definitions (or take those `loaded`), printing every problem to stderr;
    raise when any is an error."""
    result = loaded if loaded is not None else load_definitions(path, check_env=check_env)
    for problem in result.problems:
        click.echo(str(problem), err=True)
    if not result.ok:
        raise DefinitionsInvalid("")
    return result
