"""Commands of the runtime dispatcher: serve, and fire an event from the command line."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from reconciler import preview
from reconciler.cli.common import FORMATS, state_option
from reconciler.dispatch.views import delivery_line
from reconciler.errors import ReconcilerError
from reconciler.events import checked_event, event_data
from reconciler.model import Event
from reconciler.store import Backend, open_store
from reconciler.store.queue import DeliveryRecord, EventKey, EventRecord
from reconciler.tokens import parse_expiry
from reconciler.validate_report import count

if TYPE_CHECKING:
    from reconciler.dispatch.retention import RetentionSettings
    from reconciler.dispatch.ssrf import NetworkPolicy
    from reconciler.store.retention import RetentionStore


def network_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--allow-cidr",
        "allow_cidrs",
        multiple=True,
        envvar="RECONCILER_ALLOW_CIDRS",
        help="Also send to addresses in this network, e.g. 10.20.0.0/16 (repeatable).",
    )(command)
    return click.option(
        "--allow-private-networks",
        "allow_private",
        is_flag=True,
        envvar="RECONCILER_ALLOW_PRIVATE_NETWORKS",
        help="Send to private, loopback and link-local addresses too (refused by default).",
    )(command)


def _policy(allow_private: bool, cidrs: tuple[str, ...]) -> NetworkPolicy:
    from reconciler.dispatch.ssrf import NetworkPolicy

    try:
        return NetworkPolicy.from_options(allow_private, [c for cs in cidrs for c in cs.split()])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-cidr") from None


@click.command("serve")
@state_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=200,
    show_default=True,
    help="Requests in flight at once, shared by every webhook: each webhook takes at "
    "most its max_in_flight (default 10) of them.",
)
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=20.0,
    show_default=True,
    help="Seconds in-flight requests may take to finish on SIGTERM; a request cut off "
    "then is recorded as an interrupted attempt and sent again.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    envvar="RECONCILER_PROCESSES",
    help="Dispatcher processes sharing the port and the state; up to one per core.",
)
@click.option(
    "--pause-after",
    default="3d",
    show_default=True,
    envvar="RECONCILER_PAUSE_AFTER",
    help="Pause a webhook whose endpoint has been down (its circuit breaker open) this "
    "long, e.g. 12h, 3d, 1w; `never` keeps probing it.",
)
@click.option(
    "--stock",
    is_flag=True,
    envvar="RECONCILER_SERVE_STOCK",
    help="Serve events with uvicorn's own HTTP protocol and log through the standard "
    "logging path, without serve's tuned ones (docs/benchmarks.md: about 9% more CPU "
    "per delivery).",
)
@click.option(
    "--retention",
    default="30d",
    show_default=True,
    envvar="RECONCILER_RETENTION",
    help="Remove delivered, failed and cancelled deliveries, their attempts and events "
    "this long after they finished, e.g. 30d, 12h, 2w; `forever` keeps them. Pending "
    "work and the audit log are never removed.",
)
@click.option(
    "--retention-for",
    "retention_for",
    multiple=True,
    envvar="RECONCILER_RETENTION_FOR",
    metavar="ORG=AGE",
    help="An organization's own retention, e.g. acme=90d (repeatable; the variable "
    "takes several, space-separated).",
)
@click.option(
    "--retention-interval",
    default="1m",
    show_default=True,
    help="How often retention runs (and measures the state for /metrics).",
)
@click.option(
    "--intake-deadline",
    type=click.FloatRange(0.1, 300),
    default=10.0,
    show_default=True,
    envvar="RECONCILER_INTAKE_DEADLINE",
    help="Seconds within which POST /v1/events answers: 202, a refusal, or, when the "
    "state has not answered by then, 503 'outcome unknown' (send the event again with "
    "the same id: it is queued at most once).",
)
@click.option(
    "--no-console",
    "no_console",
    is_flag=True,
    envvar="RECONCILER_NO_CONSOLE",
    help="Leave the web console (/ui/) unmounted: the API only.",
)
@network_options
def serve_command(
    state: str,
    host: str,
    port: int,
    concurrency: int,
    grace: float,
    processes: int,
    pause_after: str,
    stock: bool,
    retention: str,
    retention_for: tuple[str, ...],
    retention_interval: str,
    intake_deadline: float,
    no_console: bool,
    allow_private: bool,
    allow_cidrs: tuple[str, ...],
) -> None:
    """Run the dispatcher: the HTTP API and the delivery workers.

    POST /v1/events queues an event (POST /v1/events/batch up to 500 at
    once, all stored or none); workers send one request per matching
    webhook, retry on 429/5xx/timeouts with backoff, and record every attempt.
    Changes applied while it runs take effect without a restart. SIGTERM stops
    claiming, lets in-flight requests finish within --grace and releases the rest.
    OpenAPI: GET /openapi.json. Every endpoint but /healthz (liveness) and
    /readyz (503 while the state or the workers stall) takes a bearer token
    (`reconciler tokens create`): publishers send events, auditors read
    deliveries, admins do both and replay, each for the token's organizations.

    One process uses one core. --processes N runs N dispatchers on one port and
    one state, under a supervisor that replaces any that dies; each serves its
    own /metrics counters. A webhook's rate_limit, and a receiver's Retry-After,
    hold across every dispatcher sharing the state, on this machine and others.

    A webhook whose endpoint is down (5 timeouts, connection errors or 5xx in a
    row) has its circuit breaker opened: its deliveries wait without spending
    attempts while one probe goes out every 5s, doubling up to 10m; an answer
    closes it. Down for --pause-after, the webhook is paused as after HTTP 410:
    `plan` shows it, and the next apply or `reconciler webhooks resume` resumes it.

    Retention: every --retention-interval, one dispatcher of the state removes,
    in small batches, the deliveries that finished over --retention ago (per
    organization with --retention-for), with their attempts and events; per
    webhook and day, counts and duration percentiles are kept. Pending work and
    the audit log are never removed. `reconciler retention status` shows the
    state's size and the last run.

    The web console is served under /ui/ on the same port (docs/console.md):
    sign in with a token, read webhooks, deliveries, history and activity,
    replay as an admin, and write a new definition's file to commit.
    --no-console leaves it out.

    The port is taken before anything starts: one in use is an error (exit 1).

    The state must be there (apply or migrate makes it): on a URL where none is,
    serve stops at once, naming it.

    \b
    Example:
      reconciler serve --port 8080 --concurrency 200
      reconciler serve --port 8080 --processes 2
      reconciler serve --pause-after 12h
      reconciler serve --retention 30d --retention-for acme=90d
      reconciler serve --intake-deadline 5
      reconciler serve --no-console
    """
    from reconciler.dispatch.logs import serve_handler
    from reconciler.dispatch.processes import listen
    from reconciler.dispatch.server import event_loop_factory, serve
    from reconciler.dispatch.worker import WorkerSettings

    handler = serve_handler(sys.stderr, process_id=processes > 1, stock=stock)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # httpx logs every request's full URL, and a webhook URL can be a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = WorkerSettings(
        batch=max(concurrency, 1),
        concurrency=concurrency,
        pause_after=_pause_after(pause_after),
    )
    policy = _policy(allow_private, allow_cidrs)
    retention_settings = retention_options(retention, retention_for, retention_interval)

    def run(store: Backend, sock: socket.socket, **more: Any) -> None:
        from reconciler.dispatch.retention import Retention
        from reconciler.dispatch.worker import owner_id

        def retention_store() -> RetentionStore:
            # Its own connection: intake and the workers never wait behind a batch.
            return open_store(state)

        pruner = Retention(retention_store, retention_settings, owner_id())
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(
                serve(
                    store,
                    sock,
                    settings=settings,
                    policy=policy,
                    grace=grace,
                    retention=pruner,
                    stock=stock,
                    intake_deadline=intake_deadline,
                    console=not no_console,
                    # Its own connection too: a page that reads for a while never
                    # holds up intake or the workers.
                    console_store=lambda: open_store(state),
                    **more,
                )
            )

    # The port first: one that is in use ends here, in one line, before the state is
    # opened or any worker or thread starts.
    sockets = listen(host, port, processes)
    try:
        store = open_store(state)  # opened (and migrated) once, here
        if processes > 1:
            url = store.url
            store.close()  # no connection, pool or thread may cross the fork
            _serve_processes(state, host, sockets, url, run)
            return

        def ready(bound: int) -> None:
            click.echo(f"serving on http://{host}:{bound} (state {store.url})")
            sys.stdout.flush()

        try:
            run(store, sockets[0], ready=ready)
        finally:
            store.close()  # after serve() has joined every thread that uses it
    finally:
        for sock in sockets:
            sock.close()


def _serve_processes(
    state: str,
    host: str,
    sockets: list[socket.socket],
    url: str,
    run: Callable[..., None],
) -> None:
    from reconciler.dispatch.processes import Supervisor

    bound = sockets[0].getsockname()[1]
    click.echo(f"serving on http://{host}:{bound} (state {url})")
    sys.stdout.flush()
    logging.getLogger("reconciler.dispatch").info("starting %d dispatcher processes", len(sockets))

    def child(slot: int) -> int:
        for other in sockets[:slot] + sockets[slot + 1 :]:
            other.close()
        store = open_store(state)
        try:
            run(store, sockets[slot])
        finally:
            store.close()
        return 0

    status = Supervisor(len(sockets), child).run()
    if status:
        raise ReconcilerError("the dispatcher processes stopped; see the log above")


@click.command()
@click.argument("event", type=click.Choice([e.value for e in Event]))
@click.option("--org", "organization", required=True, help="The organization it happened in.")
@click.option("--name", required=True, help="The rule or event name ({{name}}).")
@click.option("--description", default="", help="Details ({{description}}).")
@click.option("--time", "when", help="When it was detected, ISO 8601 (default: now).")
@click.option(
    "--id",
    "event_id",
    help="Your event id; the same id twice in one organization is queued once.",
)
@click.option("--wait", is_flag=True, help="Deliver it now and print each outcome.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Queue nothing: print the request each matching webhook would receive "
    "(secrets masked or shown as ${env:NAME}).",
)
@click.option(
    "--allow-no-match",
    is_flag=True,
    help="Exit 0 even when no enabled webhook of the organization fires on the event "
    "(then nothing is sent).",
)
@click.option("--format", "fmt", type=FORMATS, default="text", help="Output format.")
@state_option
@network_options
def fire(
    event: str,
    organization: str,
    name: str,
    description: str,
    when: str | None,
    event_id: str | None,
    wait: bool,
    dry_run: bool,
    allow_no_match: bool,
    fmt: str,
    state: str,
    allow_private: bool,
    allow_cidrs: tuple[str, ...],
) -> None:
    """Queue an event from the command line, as POST /v1/events does.

    One delivery is queued per matching enabled webhook of the organization.
    An event is its organization and id: the same --id again in the same --org
    queues nothing new, in another --org it is another event. With --wait the
    deliveries are attempted before the command returns; a delivery that must
    be retried later stays queued for `reconciler serve`. Exit 1 when a
    delivery failed, and when no enabled webhook of the organization fires on
    the event (the event is stored, nothing is sent; say so, and exit 1, in a
    dry run too) unless --allow-no-match.

    With --dry-run nothing is queued or sent: the request each matching live
    webhook would receive is printed instead, secret references as written,
    literal credentials masked, the signature a placeholder (--format json: a
    list of {webhook, method, url, headers, body}). A webhook referring to a
    variable its organization may not read (another organization's, or the
    platform's own) is refused, as the dispatcher would refuse to send it.

    \b
    Example:
      reconciler fire new_rule_violation --org acme --name no-public-s3 \\
        --description "bucket logs is public" --wait
      reconciler fire new_rule_violation --org acme --name no-public-s3 --dry-run
    """
    if dry_run and wait:
        raise click.UsageError("--dry-run sends nothing: it does not go with --wait")
    if dry_run and event_id is None:
        event_id = preview.PREVIEW_EVENT_ID
    record = checked_event(
        {
            "type": event,
            "organization": organization,
            "name": name,
            "description": description,
            "time": when,
            "id": event_id,
        }
    )
    if dry_run:
        if not _dry_run(record, state, fmt, allow_no_match) and not allow_no_match:
            sys.exit(1)
        return
    store = open_store(state)
    try:
        result = store.add_event(record, time.time())
        records: list[DeliveryRecord] = []
        if wait and result.deliveries:
            policy = _policy(allow_private, allow_cidrs)
            records = asyncio.run(_deliver_now(store, result.key, policy))
        elif wait or fmt == "json":
            records = store.deliveries(event=result.key, limit=10_000)
    finally:
        store.close()
    if fmt == "json":
        out = {**result.as_json(), "deliveries_log": [r.as_json() for r in records]}
        click.echo(json.dumps(out, indent=2))
    else:
        again = " (already queued: nothing new)" if result.duplicate else ""
        click.echo(
            f"event {result.key}: {count(result.deliveries, 'delivery', 'deliveries')} "
            f"queued{again}"
        )
        for delivery in records:
            click.echo(delivery_line(delivery))
    if result.note is not None:
        click.echo(f"{'note' if allow_no_match else 'error'}: {result.note}", err=True)
        if not allow_no_match:
            sys.exit(1)
    if any(r.status in ("failed", "cancelled") for r in records):
        sys.exit(1)


def _dry_run(record: EventRecord, state: str, fmt: str, allow_no_match: bool) -> bool:
    """Print what fire would make the dispatcher send for `record`; store nothing.
    Whether any webhook would get it."""
    store = open_store(state)
    try:
        webhooks = store.webhooks(record.organization)
        queued = store.event(record.key) is not None
        access = store.env_access()
    finally:
        store.close()
    requests = preview.preview_all(
        preview.matching_live(webhooks, record.type),
        event_data(record),
        preview.PREVIEW_DELIVERY_ID,
        int(time.time()),
        access=access,
    )
    if queued:
        click.echo(
            f"note: event {record.key} is already queued: fire would queue nothing new", err=True
        )
    if fmt == "json":
        click.echo(json.dumps([r.as_json() for r in requests], indent=2))
    else:
        for request in requests:
            click.echo(preview.request_text(request, title=True))
            click.echo()
        click.echo(
            f"dry run: event {record.key} would queue "
            f"{count(len(requests), 'delivery', 'deliveries')}; nothing was queued."
        )
    if not requests:
        click.echo(
            f"{'note' if allow_no_match else 'error'}: no enabled webhook of "
            f"{record.organization} fires on {record.type}: nothing would be sent",
            err=True,
        )
    return bool(requests)


async def _deliver_now(
    store: Backend, event: EventKey, policy: NetworkPolicy
) -> list[DeliveryRecord]:
    from reconciler.dispatch.service import make_sender
    from reconciler.dispatch.worker import Database, Worker, WorkerSettings

    db = Database(store)
    sender = make_sender(50, policy)
    try:
        settings = WorkerSettings(batch=50, concurrency=50)
        worker = Worker(db, sender, settings=settings, policy=policy)
        while await worker.run_once(event):
            pass
    finally:
        await sender.aclose()
        db.close()
    return store.deliveries(event=event, limit=10_000)


def _pause_after(text: str) -> float:
    if text.strip().lower() == "never":
        return math.inf
    return _duration(text, "--pause-after", "90m, 12h, 3d, 1w, or never")


def _duration(text: str, option: str, examples: str) -> float:
    """A positive duration given to `option`; anything else is a usage error naming
    the option and `examples` of what it takes."""
    try:
        seconds = parse_expiry(text.strip())
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise click.BadParameter(
            f"not a duration: {text!r} (use e.g. {examples})", param_hint=option
        )
    return seconds


def retention_options(default: str, overrides: tuple[str, ...], interval: str) -> RetentionSettings:
    """serve's retention options, each checked, as settings; a bad one is a usage
    error naming the option and what is accepted."""
    from reconciler.dispatch.retention import RetentionSettings, parse_age, parse_overrides

    try:
        age = parse_age(default)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--retention") from None
    try:
        organizations = parse_overrides(overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--retention-for") from None
    every = _duration(interval, "--retention-interval", "30s, 1m, 10m")
    return RetentionSettings(age, organizations, interval=every)
