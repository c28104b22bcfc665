"""`reconciler deliveries`: list, show, replay and retry the queue's deliveries."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from reconciler.cli.common import FORMATS, echo_json, format_option, state_option
from reconciler.delivery_filters import DeliveryFilter
from reconciler.dispatch.views import (
    delivery_json,
    delivery_line,
    delivery_text,
    replay_refusal,
    retry_refusal,
)
from reconciler.errors import ReconcilerError
from reconciler.store import Backend, open_store
from reconciler.store.queue import STATUSES, EventKey
from reconciler.validate_report import count

ALL = 10_000_000  # "every one": what a filter of replay or retry may select


def filter_options(command: Callable[..., None]) -> Callable[..., None]:
    """The filters list, replay and retry share (one meaning everywhere)."""
    for option in reversed(
        [
            click.option("--org", "organization", help="Only this organization."),
            click.option("--webhook", help="Only this webhook."),
            click.option(
                "--since",
                help="Only those whose last change (queued, attempted, finished) is at or "
                "after this: an age (30m, 2h, 3d, 1w) or an ISO 8601 time.",
            ),
            click.option(
                "--until", help="Only those whose last change is before this (as --since)."
            ),
            click.option(
                "--status-code",
                type=click.IntRange(100, 599),
                help="Only those whose last attempt got this HTTP status (e.g. 503).",
            ),
        ]
    ):
        command = option(command)
    return command


def chosen(status: str | None, **given: Any) -> DeliveryFilter:
    """The filter the options name; a bad time is a usage error naming its option."""
    try:
        return DeliveryFilter.parse(time.time(), status=status, **given)
    except ValueError as exc:
        name, _, message = str(exc).partition(": ")
        raise click.BadParameter(message, param_hint=f"--{name}") from None


@click.group()
def deliveries() -> None:
    """Read, replay and retry the delivery log.

    \b
    Example:
      reconciler deliveries list --status failed --org acme --since 2h
    """


@deliveries.command("list")
@state_option
@click.option("--status", type=click.Choice(STATUSES), help="Only deliveries in this state.")
@filter_options
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
    event_id: str | None,
    limit: int,
    fmt: str,
    **given: Any,
) -> None:
    """List deliveries, newest first.

    The filters (--status, --org, --webhook, --since, --until, --status-code)
    are those of `replay` and `retry`, so a list shows what they would take.

    \b
    Example:
      reconciler deliveries list --status failed
      reconciler deliveries list --org acme --webhook slack --since 2h --status-code 503
      reconciler deliveries list --org acme --event r17:2026-11-30
    """
    where = chosen(status, **given)
    event = None
    if event_id is not None:
        if where.organization is None:
            raise click.UsageError(
                "--event goes with --org: an event id names an event only within its organization"
            )
        event = EventKey(where.organization, event_id)
    store = open_store(state)
    try:
        records = store.deliveries(event=event, limit=limit, **where.store_args())
    finally:
        store.close()
    if fmt == "json":
        echo_json([r.as_json() for r in records])
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
        echo_json(delivery_json(*found))
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
@click.option("--failed", "all_failed", is_flag=True, help="Replay the failed deliveries.")
@click.option(
    "--status",
    type=click.Choice(["failed", "delivered", "cancelled"]),
    help="Replay the finished deliveries in this state (--failed is --status failed).",
)
@filter_options
@format_option
def replay_command(
    delivery_ids: tuple[str, ...],
    state: str,
    all_failed: bool,
    status: str | None,
    fmt: str,
    **given: Any,
) -> None:
    """Queue finished deliveries again, due at once, with the same webhook-id.

    Name them by id, or by filter: --failed (or --status STATE) with any of
    --org, --webhook, --since, --until, --status-code, as `deliveries list`
    takes them (list first to see what a filter takes). A delivery of a
    deleted webhook is refused: its history is kept for auditors (until
    retention removes it), but it is never sent again. Each delivery named but
    not queued is given with the reason, and the exit code is 1; a filter
    leaves out those of deleted webhooks and says how many. --format json:
    {"replayed": [ids], "refused": [{"id", "reason"}], "skipped_deleted": N}.

    \b
    Example:
      reconciler deliveries replay --failed --since 2h
      reconciler deliveries replay --failed --org acme --webhook slack --status-code 503
    """
    if all_failed and status not in (None, "failed"):
        raise click.UsageError("--failed is --status failed: give one of them")
    status = "failed" if all_failed else status
    where = chosen(status, **given)
    if bool(delivery_ids) == (status is not None):
        raise click.UsageError(
            "give delivery ids, or a filter with --failed or --status; not both and not neither"
        )
    if delivery_ids and where.narrowed:
        raise click.UsageError("the filters (--org, --webhook, --since...) go with --failed")
    store = open_store(state)
    gone = 0
    try:
        ids = list(delivery_ids)
        if status is not None:
            finished = store.deliveries(limit=ALL, **where.store_args())
            live = {w.key for w in store.webhooks(where.organization)}
            ids = [r.id for r in finished if (r.organization, r.webhook) in live]
            gone = len(finished) - len(ids)
        replayed = store.replay(ids, time.time())
        refused = [(d, _refusal(store, d)) for d in ids if d not in replayed]
    finally:
        store.close()
    refusals = [reason for _id, reason in refused]
    if fmt == "json":
        echo_json(
            {
                "replayed": list(replayed),
                "refused": [{"id": d, "reason": reason} for d, reason in refused],
                "skipped_deleted": gone,
            }
        )
    for refusal in refusals:
        click.echo(f"error: {refusal}", err=True)
    if gone:
        click.echo(
            f"skipped {count(gone, f'{status} delivery', f'{status} deliveries')} of deleted "
            "webhooks (kept as history, never sent again)",
            err=True,
        )
    if fmt != "json":
        click.echo(
            f"replayed {count(len(replayed), 'delivery', 'deliveries')}; "
            "`reconciler serve` sends them."
        )
    if len(replayed) != len(ids):
        sys.exit(1)


@deliveries.command("retry")
@click.argument("delivery_ids", nargs=-1)
@state_option
@filter_options
@format_option
def retry_command(delivery_ids: tuple[str, ...], state: str, fmt: str, **given: Any) -> None:
    """Make pending deliveries due now, instead of waiting out a backoff step.

    A delivery that failed with a 5xx or a timeout waits before its next
    attempt (5 s, 5 min, 30 min, 2 h, 5 h...); once the receiver is fixed,
    retry sends it at the dispatcher's next turn, with its attempts, its place
    in the retry schedule and its webhook-id kept. Name deliveries by id, or
    take every pending one a filter selects (--org, --webhook, --since,
    --until, --status-code, as `deliveries list --status pending` shows them).
    A delivered, failed or cancelled one is refused (`replay` sends it again),
    and a held one waits for its webhook's resume; each refusal is printed and
    the exit code is 1. A webhook whose circuit breaker is open still waits for
    its probe. --format json: {"retried": [ids], "refused": [{"id", "reason"}]}.

    \b
    Example:
      reconciler deliveries retry msg_0f4c...
      reconciler deliveries retry --org acme --webhook slack
    """
    where = chosen("pending", **given)
    if bool(delivery_ids) == where.narrowed:
        raise click.UsageError(
            "give delivery ids, or a filter (--org, --webhook, --since, --until, "
            "--status-code); not both and not neither"
        )
    store = open_store(state)
    try:
        ids = list(delivery_ids)
        if not ids:
            ids = [r.id for r in store.deliveries(limit=ALL, **where.store_args())]
        retried = store.retry_now(ids, time.time())
        refused: list[tuple[str, str]] = []
        for delivery_id in ids:
            if delivery_id in retried:
                continue
            found = store.delivery(delivery_id)
            reason = retry_refusal(found[0]) if found else f"no delivery {delivery_id}"
            refused.append((delivery_id, reason))
    finally:
        store.close()
    if fmt == "json":
        echo_json(
            {
                "retried": list(retried),
                "refused": [{"id": d, "reason": reason} for d, reason in refused],
            }
        )
    for _id, refusal in refused:
        click.echo(f"error: {refusal}", err=True)
    if fmt != "json":
        click.echo(
            f"retried {count(len(retried), 'delivery', 'deliveries')}: due now; "
            "`reconciler serve` sends them."
        )
    if refused:
        sys.exit(1)
