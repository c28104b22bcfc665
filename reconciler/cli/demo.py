"""`reconciler demo`: a delivered webhook in the first command (reconciler/demo.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler import demo as the_demo
from reconciler.durations import parse_duration


@click.command()
@click.argument(
    "path",
    required=False,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--wait",
    default="20s",
    show_default=True,
    help="How long to wait for the deliveries once the events are in.",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the scratch folder (definitions, state, serve.log) here instead of removing it.",
)
def demo(path: Path | None, wait: str, keep: Path | None) -> None:
    """Deliver webhooks end to end on this machine, then stop everything.

    Copies the definitions in PATH (default: ./webhooks.d when there is one, else
    the example `reconciler init` writes) into a scratch folder with every URL
    pointed at a local receiver standing in for Slack, applies them into a
    scratch SQLite state, starts `reconciler serve` on loopback, posts one event
    of each type to its HTTP API, and prints what the receiver got, each
    signature checked. The dispatcher and the receiver are stopped and the
    scratch folder removed before it returns; nothing is left running and your
    own state is not touched. Exit 1 when a delivery did not arrive.

    \b
    Example:
      reconciler demo
      reconciler demo webhooks.d --keep /tmp/demo
    """
    if path is None and Path("webhooks.d").is_dir():
        path = Path("webhooks.d")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    try:
        seconds = parse_duration(wait)
    except ValueError:
        raise click.BadParameter(f"not a duration: {wait!r} (use e.g. 20s, 1m)") from None
    outcome = the_demo.run(path, click.echo, wait=seconds, keep=keep)
    if not outcome.complete:
        click.echo(
            f"error: {outcome.expected - len(outcome.received)} of {outcome.expected} "
            "deliveries did not arrive in time",
            err=True,
        )
        sys.exit(1)
    click.echo(f"Done: {outcome.expected} delivered; nothing left running.")
