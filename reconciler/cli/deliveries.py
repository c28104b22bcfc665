"""`reconciler deliveries`: list, show and replay the queue's deliveries."""

from __future__ import annotations

import json
import sys
import time

import click

from reconciler.cli.common import FORMATS, state_option
from reconciler.dispatch.views import (
    delivery_json,
    delivery_line,
    delivery_text,
    replay_refusal,
)
from reconciler.durations import parse_duration
from reconciler.errors import ReconcilerError
from reconciler.store import Backend, open_store
from reconciler.store.queue import STATUSES, EventKey
from reconciler.validate_report import count


def _since_seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


@click.group()
def deliveries() -> None:
    """Read and replay the delivery log.

    \b
    Example:
      reconciler deliveries list --status failed --org acme
    """


@deliveries.command("list")
@state_option
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    help="Only deliveries in this state.",
)
@click.option("--org", "organization", help="Only this organization.")
@click.option("--webhook", help="Only this webhook.")
@click.option(
    "--event",
    "event_id",
    help="Only this event's deliveries (with --org: an id names an event "
    "only within its organization).",
)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
def list_command(
    state: str,
    status: str | None,
    organization: str | None,
    webhook: str | None,
    event_id: str | None,
    limit: int,
    fmt: str,
) -> None:
    """List deliveries, newest first.

    \b
    Example:
      reconciler deliveries list --status failed
      reconciler deliveries list --org acme --event r17:2026-11-30
    """
    event = None
    if event_id is not None:
        if organization is None:
            raise click.UsageError(
                "--event goes with --org: an event id names an event only within its organization"
            )
        event = EventKey(organization, event_id)
    store = open_store(state)
    try:
        records = store.deliveries(
            status=status,
            organization=organization,
            webhook=webhook,
            event=event,
            limit=limit,
        )
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps([r.as_json() for r in records], indent=2))
        return
    if not records:
        click.echo("No deliveries.")
    for record in records:
        click.echo(delivery_line(record))


@deliveries.command("show")
@click.argument("delivery_id")
@state_option
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
def show_command(delivery_id: str, state: str, fmt: str) -> None:
    """Show one delivery and every attempt: status, duration, response, error.

    \b
    Example:
      reconciler deliveries show msg_0f4c...
    """
    store = open_store(state)
    try:
        found = store.delivery(delivery_id)
    finally:
        store.close()
    if found is None:
        raise ReconcilerError(f"no delivery {delivery_id}")
    if fmt == "json":
        click.echo(json.dumps(delivery_json(*found), indent=2))
    else:
        click.echo(delivery_text(*found))


def _refusal(store: Backend, delivery_id: str) -> str:
    found = store.delivery(delivery_id)
    if found is None:
        return f"no delivery {delivery_id}"
    record = found[0]
    live = any(w.name == record.webhook for w in store.webhooks(record.organization))
    return replay_refusal(record, live)


@deliveries.command("replay")
@click.argument("delivery_ids", nargs=-1)
@state_option
@click.option("--failed", "all_failed", is_flag=True, help="Replay every failed delivery.")
@click.option("--since", help="With --failed: only those that failed within this (e.g. 2h).")
@click.option("--org", "organization", help="With --failed: only this organization.")
def replay_command(
    delivery_ids: tuple[str, ...],
    state: str,
    all_failed: bool,
    since: str | None,
    organization: str | None,
) -> None:
    """Queue finished deliveries again, due at once, with the same webhook-id.

    A delivery of a deleted webhook is refused: its history is kept for
    auditors (until retention removes it), but it is never sent again. Each
    delivery named but not queued is given with the reason, and the exit code
    is 1; --failed leaves out those of deleted webhooks and says how many.

    \b
    Example:
      reconciler deliveries replay --failed --since 2h
    """
    if bool(delivery_ids) == all_failed:
        raise click.UsageError("give delivery ids or --failed, not both and not neither")
    if since is not None and not all_failed:
        raise click.UsageError("--since goes with --failed")
    store = open_store(state)
    gone = 0
    try:
        ids = list(delivery_ids)
        if all_failed:
            cutoff = time.time() - _since_seconds(since) if since else None
            failed = store.deliveries(
                status="failed", organization=organization, since=cutoff, limit=1_000_000
            )
            live = {w.key for w in store.webhooks(organization)}
            ids = [r.id for r in failed if (r.organization, r.webhook) in live]
            gone = len(failed) - len(ids)
        replayed = store.replay(ids, time.time())
        refusals = [_refusal(store, d) for d in ids if d not in replayed]
    finally:
        store.close()
    for refusal in refusals:
        click.echo(f"error: {refusal}", err=True)
    if gone:
        click.echo(
            f"skipped {count(gone, 'failed delivery', 'failed deliveries')} of deleted "
            "webhooks (kept as history, never sent again)",
            err=True,
        )
    click.echo(
        f"replayed {count(len(replayed), 'delivery', 'deliveries')}; `reconciler serve` sends them."
    )
    if len(replayed) != len(ids):
        sys.exit(1)
