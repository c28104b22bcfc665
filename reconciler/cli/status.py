"""`reconciler webhooks status`: each webhook's endpoint health, from the state."""

from __future__ import annotations

import time

import click

from reconciler.cli.common import FORMATS, echo_json, state_option
from reconciler.health import endpoint_health
from reconciler.health_report import report_text
from reconciler.store import open_store


@click.command("status")
@state_option
@click.option(
    "--org",
    "organizations",
    multiple=True,
    help="Only this organization (repeatable); default: every organization.",
)
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
def status_command(state: str, organizations: tuple[str, ...], fmt: str) -> None:
    """Show each live webhook's endpoint health, read from the state.

    Per webhook: enabled, disabled or paused; its circuit breaker; deliveries in
    flight; its backlog, due now (DUE) and due later (LATER, waiting for a retry
    or a rate limit), and how long the oldest due delivery has waited (OLDEST);
    the share of its attempts of the last hour that delivered (OK) and their
    95th-percentile duration (P95); when it last delivered; and under its row,
    when it last failed and why (URLs and tokens in the reason masked).
    --format json gives the same per webhook, times in ISO 8601 UTC.

    \b
    Example:
      reconciler webhooks status
      reconciler webhooks status --org acme --format json
    """
    store = open_store(state)
    try:
        report = endpoint_health(store, list(organizations) or None, time.time())
    finally:
        store.close()
    if fmt == "json":
        echo_json(report.as_json())
    else:
        click.echo(report_text(report))
