"""The `webhooks` command group: `resume` here, `status` in status.py."""

from __future__ import annotations

import click

from reconciler.cli.common import echo_json, format_option, state_option
from reconciler.cli.status import status_command
from reconciler.errors import ReconcilerError
from reconciler.provenance import detect_actor
from reconciler.store import open_store
from reconciler.validate_report import count


def _webhook_ref(text: str) -> tuple[str, str]:
    organization, slash, name = text.partition("/")
    if not slash or not organization or not name or "/" in name:
        raise click.BadParameter(
            f"{text!r} is not ORGANIZATION/NAME (e.g. acme/slack-new-violations)",
            param_hint="WEBHOOK",
        )
    return organization, name


@click.group()
def webhooks() -> None:
    """See how the live webhooks' endpoints are doing, and resume a paused one
    outside apply.

    \b
    Example:
      reconciler webhooks status --org acme
      reconciler webhooks resume acme/slack-new-violations
    """


@webhooks.command("resume")
@click.argument("webhook", metavar="ORGANIZATION/NAME")
@click.option("--actor", help="Who resumes, for the audit log (default: CI's or git's user).")
@state_option
@format_option
def resume_command(webhook: str, actor: str | None, state: str, fmt: str) -> None:
    """Resume a webhook the dispatcher paused, without an apply.

    The dispatcher pauses a webhook after HTTP 410, or when its endpoint has
    been down (its circuit breaker open) for `serve --pause-after`; a paused
    webhook takes no new events, and `plan` shows the pause as drift. This lifts
    the pause at once, with the circuit breaker closed, and records a `resume`
    entry in the history (actor: --actor, else CI's or git's user). The
    deliveries held while it was paused (events that came in meanwhile) become
    pending, due at once, and `reconciler serve` sends them; the entry says how
    many. Deliveries that failed (the one that got the 410) stay failed:
    `deliveries replay` sends them again. The next apply resumes it too. Exit 1
    when there is no such webhook; a webhook that is not paused is left as it is
    (exit 0). --format json: {"webhook": "ORGANIZATION/NAME", "resumed":
    true|false, "released": N, "actor"}.

    \b
    Example:
      reconciler webhooks resume acme/slack-new-violations --actor alice
      reconciler deliveries replay --failed --org acme --since 3d
    """
    organization, name = _webhook_ref(webhook)
    who = detect_actor(actor)
    store = open_store(state)
    try:
        held = len(
            store.deliveries(
                status="held", organization=organization, webhook=name, limit=10_000_000
            )
        )
        outcome = store.resume(organization, name, who)
    finally:
        store.close()
    if outcome == "no such webhook":
        raise ReconcilerError(f"no webhook {organization}/{name} in the state at {store.url}")
    if fmt == "json":
        resumed = outcome != "not paused"
        echo_json(
            {
                "webhook": f"{organization}/{name}",
                "resumed": resumed,
                "released": held if resumed else 0,
                "actor": who,
            }
        )
        return
    if outcome == "not paused":
        click.echo(f"{organization}/{name} is not paused; nothing changed.")
        return
    click.echo(f"Resumed {organization}/{name} (actor {who}); it takes new events again.")
    if held:
        click.echo(
            f"Released {count(held, 'held delivery', 'held deliveries')}, due at once: "
            "`reconciler serve` sends them."
        )


webhooks.add_command(status_command)
