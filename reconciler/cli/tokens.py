"""Commands for the HTTP API's bearer tokens: tokens create, list, revoke."""

from __future__ import annotations

import time
from dataclasses import replace

import click

from reconciler import tokens as api_tokens
from reconciler.cli.common import FORMATS, echo_json, format_option, state_option
from reconciler.errors import TokenError
from reconciler.store import open_store
from reconciler.store.tokens import TokenRecord


def _scope(token: TokenRecord) -> str:
    return "*" if token.all_organizations else ",".join(token.organizations)


def _status(token: TokenRecord, now: float) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "active" if token.usable(now) else "expired"


@click.group()
def tokens() -> None:
    """Make, list and revoke the bearer tokens of the HTTP API.

    \b
    Roles, each within the token's organizations:
      admin      send events, read deliveries, replay them, resume paused webhooks
      publisher  send events (POST /v1/events)
      auditor    read deliveries and endpoint health (GET /v1/deliveries...,
                 GET /v1/webhooks/status)
      metrics    only what every role may: Prometheus' scraping credential
    Any valid token reads /openapi.json, and /metrics for its organizations
    (with --all-orgs, the whole installation's too); /healthz and /readyz need none.

    \b
    Example:
      reconciler tokens create --role publisher --org acme --name rules-engine --expires 90d
    """


@tokens.command("create")
@click.option(
    "--role", required=True, type=click.Choice(api_tokens.ROLES), help="What the token may do."
)
@click.option(
    "--org",
    "organizations",
    multiple=True,
    help="An organization the token may act for (repeatable: a partner admin's token "
    "names each client).",
)
@click.option(
    "--all-orgs", "all_organizations", is_flag=True, help="Every organization, now and later."
)
@click.option("--expires", help="Lifetime, e.g. 90m, 12h, 30d, 2w (default: never).")
@click.option("--name", default="", help="A note: who or what holds the token.")
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
@state_option
def create_command(
    role: str,
    organizations: tuple[str, ...],
    all_organizations: bool,
    expires: str | None,
    name: str,
    fmt: str,
    state: str,
) -> None:
    """Make a token and print it, once: only its SHA-256 is stored.

    The token alone goes to standard output (with --format json: an object with
    "token" and the token's details); what it is for goes to standard error.
    A token is scoped to the organizations given with --org, or to all of them
    with --all-orgs; one of the two is required. The state must be there (apply
    or migrate makes it).

    \b
    Example:
      reconciler tokens create --role admin --org acme --org globex --name partner-x
      TOKEN=$(reconciler tokens create --role auditor --org acme --expires 30d)
      reconciler tokens create --role metrics --all-orgs --name prometheus
    """
    try:
        expires_in = api_tokens.parse_expiry(expires) if expires else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    try:  # before the state is opened
        api_tokens.check_request(role, organizations, all_organizations, expires_in)
    except TokenError as exc:  # each is about the options given
        raise click.UsageError(str(exc)) from None
    store = open_store(state)
    try:
        record, secret = api_tokens.create_token(
            store,
            role=role,
            organizations=organizations,
            all_organizations=all_organizations,
            name=name,
            expires_in=expires_in,
            now=time.time(),
        )
    finally:
        store.close()
    if fmt == "json":
        echo_json({"token": secret, **record.as_json()})
        return
    click.echo(secret)
    expiry = f"expires {api_tokens.when(record.expires_at)}" if record.expires_at else "no expiry"
    click.echo(
        f"created {record.id}: role {record.role} for {_scope(record)}, {expiry}. "
        "This is the only time the token is shown: keep it now.",
        err=True,
    )


@tokens.command("list")
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
@state_option
def list_command(fmt: str, state: str) -> None:
    """List every token, revoked and expired ones too; never the tokens themselves.

    ORGANIZATIONS is * for a token with --all-orgs.

    \b
    Example:
      reconciler tokens list --format json
    """
    store = open_store(state)
    try:
        found = store.tokens()
    finally:
        store.close()
    now = time.time()
    if fmt == "json":
        echo_json([{**t.as_json(), "status": _status(t, now)} for t in found])
        return
    if not found:
        click.echo("No tokens.")
        return
    header = ("ID", "NAME", "ROLE", "ORGANIZATIONS", "CREATED", "EXPIRES", "REVOKED", "STATUS")
    rows = [header] + [
        (
            t.id,
            t.name or "-",
            t.role,
            _scope(t),
            api_tokens.when(t.created_at),
            api_tokens.when(t.expires_at),
            api_tokens.when(t.revoked_at),
            _status(t, now),
        )
        for t in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@tokens.command("revoke")
@click.argument("token_id")
@state_option
@format_option
def revoke_command(token_id: str, state: str, fmt: str) -> None:
    """Revoke a token by its id (from `tokens list`): it is refused from then on.

    A running dispatcher notices within a second. Revoking twice is harmless.
    An unknown id is an error (exit 1). --format json: the token's details
    (as tokens list gives them) and "already_revoked".

    \b
    Example:
      reconciler tokens revoke tok_3f9a0c1d2b4e
    """
    store = open_store(state)
    try:
        now = time.time()
        record = api_tokens.revoke_token(store, token_id, now)
    finally:
        store.close()
    if fmt == "json":
        already = record.revoked_at is not None
        revoked = record if already else replace(record, revoked_at=now)
        echo_json({**revoked.as_json(), "status": "revoked", "already_revoked": already})
        return
    if record.revoked_at is not None:
        click.echo(f"{record.id} was already revoked at {api_tokens.when(record.revoked_at)}.")
    else:
        click.echo(f"revoked {record.id} (role {record.role} for {_scope(record)}).")
