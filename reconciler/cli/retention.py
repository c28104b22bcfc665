"""`reconciler retention`: the state's size, retention's last runs, and a run now."""

from __future__ import annotations

import time

import click

from reconciler.cli.common import FORMATS, echo_json, format_option, state_option
from reconciler.retention_report import run_line, status_text
from reconciler.store import open_store


@click.group()
def retention() -> None:
    """Show how big the state is and what retention removed; run it now.

    `reconciler serve` runs retention itself (see its --retention options).

    \b
    Example:
      reconciler retention status
      reconciler retention run --retention 30d --retention-for acme=90d
    """


@retention.command("status")
@state_option
@click.option(
    "--runs",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="How many of the latest retention runs to show.",
)
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
def status_command(state: str, runs: int, fmt: str) -> None:
    """Show rows and bytes per table, the files of a SQLite state, the age of the
    oldest finished delivery kept, and the latest retention runs: when, by which
    dispatcher, and what each removed.

    \b
    Example:
      reconciler retention status
      reconciler retention status --format json
    """
    store = open_store(state)
    try:
        size = store.state_size()
        latest = store.retention_runs(runs)
        url = store.url
    finally:
        store.close()
    now = time.time()
    if fmt == "json":
        data = size.as_json(now) | {"state": url, "runs": [r.as_json() for r in latest]}
        echo_json(data)
    else:
        click.echo(status_text(url, size, latest, now))


@retention.command("run")
@state_option
@click.option(
    "--retention",
    "age",
    default="30d",
    show_default=True,
    envvar="RECONCILER_RETENTION",
    help="Remove what finished this long ago, e.g. 30d, 12h; as serve's.",
)
@click.option(
    "--retention-for",
    "overrides",
    multiple=True,
    metavar="ORG=AGE",
    envvar="RECONCILER_RETENTION_FOR",
    help="An organization's own retention, e.g. acme=90d (repeatable).",
)
@format_option
def run_command(state: str, age: str, overrides: tuple[str, ...], fmt: str) -> None:
    """Run retention once, now, as `reconciler serve` does every minute: exit 1
    when a dispatcher is running it at this moment. --format json: the run, as
    `retention status` lists it (null when every record is kept).

    \b
    Example:
      reconciler retention run --retention 30d --retention-for acme=90d
    """
    from reconciler.cli.dispatcher import retention_options
    from reconciler.dispatch.retention import Retention
    from reconciler.dispatch.worker import owner_id
    from reconciler.errors import ReconcilerError

    settings = retention_options(age, overrides, "1m")
    if not settings.enabled:
        if fmt == "json":
            echo_json(None)
        else:
            click.echo("retention: every record is kept (forever); nothing to do")
        return
    pruner = Retention(lambda: open_store(state), settings, owner_id())
    try:
        run = pruner.run_once()
    finally:
        pruner.close()
    if run is None:
        raise ReconcilerError("a dispatcher is running retention on this state now; try later")
    if fmt == "json":
        echo_json(run.as_json())
    else:
        click.echo(f"retention: {run_line(run, time.time())}")
