"""The web console's routes, mounted by `serve` under /ui/ (docs/console.md).

Every page but the sign-in form needs a session (sessions.py) whose token may
read deliveries (admin, auditor; publisher and metrics tokens are 403, as on
GET /v1/deliveries), and applies the
API's rules through the API's code: `Access.may` for the role, `Access.sees` and
`Access.visible` for the organizations. What belongs to an organization the token
does not hold is answered 404, as the API answers it; an action the role may not
take is 403. Every POST carries the session's CSRF token (form field csrf_token,
or header X-CSRF-Token), else 403. Every answer carries the headers of HEADERS.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.dispatch.auth import Guard
from reconciler.dispatch.console import activity as activity_chart
from reconciler.dispatch.console import newform, reads
from reconciler.dispatch.console.reader import Reader
from reconciler.dispatch.console.sessions import (
    ABSOLUTE_SECONDS,
    COOKIE,
    Sessions,
    Signed,
    csrf_ok,
    set_cookie,
)
from reconciler.dispatch.service import Dispatcher
from reconciler.dispatch.views import replay_refusal, retry_refusal
from reconciler.errors import ReconcilerError
from reconciler.model import Event
from reconciler.render import utc
from reconciler.store.console import DeliveryFilter, HistoryFilter, WebhookFilter
from reconciler.store.queue import Status

HERE = Path(__file__).parent
PREFIX = "/ui"
PAGE = 50
STATUSES: tuple[Status, ...] = get_args(Status)
# No inline script or style anywhere: the vendored script and the style sheet are
# files under /ui/static/.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
PRE_CSRF = "rcn_console_signin"  # the sign-in form's CSRF cookie (no session yet)
STATES = ("enabled", "disabled", "paused", "breaker-open")
ACTIONS = ("create", "update", "delete", "pause", "resume", "breaker-open", "breaker-close")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = lambda t: utc(t) if t is not None else "-"
    env.filters["masked"] = reads.shown_text
    env.globals["ms"] = activity_chart.ms
    return env


class Console:
    def __init__(self, dispatcher: Dispatcher, guard: Guard, read: Reader) -> None:
        self.dispatcher = dispatcher
        self.read = read
        self.sessions = Sessions(dispatcher, guard, read)
        self.templates = _environment()
        self.minutes = activity_chart.MinuteCache()

    # -- answers ----------------------------------------------------------------

    def page(
        self, name: str, request: Request, signed: Signed | None, status: int = 200, **values: Any
    ) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            request=request,
            signed=signed,
            csrf=signed.csrf if signed else values.pop("csrf", ""),
            prefix=PREFIX,
            **values,
        )
        return HTMLResponse(html, status_code=status)

    def refused(
        self, request: Request, signed: Signed | None, status: int, message: str
    ) -> Response:
        return self.page("error.html", request, signed, status, status_code=status, message=message)

    async def form(self, request: Request) -> dict[str, str]:
        """An urlencoded body (the forms post nothing else): parsed here rather than
        with python-multipart, one dependency fewer."""
        raw = await request.body()
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))

    # -- sign in and out --------------------------------------------------------

    async def root(self, request: Request) -> Response:
        signed = await self.sessions.current(request)
        return RedirectResponse(f"{PREFIX}/webhooks" if signed else f"{PREFIX}/sign-in", 303)

    async def sign_in_form(
        self, request: Request, problem: str = "", status: int = 200
    ) -> Response:
        csrf = secrets.token_urlsafe(24)
        response = self.page("sign_in.html", request, None, status, csrf=csrf, problem=problem)
        set_cookie(response, request, PRE_CSRF, csrf, 3600)
        return response

    async def sign_in(self, request: Request) -> Response:
        form = await self.form(request)
        if not csrf_ok(request.cookies.get(PRE_CSRF, ""), form.get("csrf_token")):
            return self.refused(request, None, 403, CSRF_REFUSED)
        made = await self.sessions.sign_in(form.get("token", ""))
        if made is None:
            return await self.sign_in_form(
                request, "That token is not valid: it is unknown, revoked or expired.", 401
            )
        session_id, _record = made
        response = RedirectResponse(f"{PREFIX}/webhooks", 303)
        set_cookie(response, request, COOKIE, session_id, int(ABSOLUTE_SECONDS))
        response.delete_cookie(PRE_CSRF, path="/ui/")
        return response

    async def sign_out(self, request: Request, signed: Signed) -> Response:
        await self.sessions.sign_out(signed)
        response = RedirectResponse(f"{PREFIX}/sign-in", 303)
        response.delete_cookie(COOKIE, path="/ui/")
        return response

    # -- pages --------------------------------------------------------------------

    async def webhooks(self, request: Request, signed: Signed) -> Response:
        q = request.query_params
        org = q.get("org") or None
        if org is not None and not signed.access.sees(org):
            return self.refused(request, signed, 404, f"no organization {org}")
        state = q.get("state") or None
        event = q.get("event") or None
        after = _cursor(q.get("after"))
        query = WebhookFilter(
            organizations=signed.access.visible(org),
            event=event,
            state=state if state in STATES else None,
            after=(str(after[0]), str(after[1])) if after else None,
            limit=PAGE + 1,
        )
        rows = await self.read(reads.webhook_rows, query, self.dispatcher.clock())
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        older = (
            _link(request, after=_encode([rows[-1].organization, rows[-1].name])) if more else None
        )
        orgs = await self.read(reads.organizations_of, signed.access.visible(None))
        return self.page(
            "webhooks.html",
            request,
            signed,
            rows=rows,
            more=older,
            orgs=orgs,
            events=[e.value for e in Event],
            states=STATES,
            filters={"org": org or "", "event": event or "", "state": state or ""},
        )

    async def webhook(self, request: Request, signed: Signed) -> Response:
        org, name = request.path_params["org"], request.path_params["name"]
        if not signed.access.sees(org):
            return self.refused(request, signed, 404, f"no webhook {org}/{name}")
        detail = await self.read(reads.webhook_detail, org, name)
        if detail is None:
            return self.refused(request, signed, 404, f"no webhook {org}/{name}")
        try:
            request_text = newform.preview_live(detail.live)
        except (ReconcilerError, ValueError) as exc:  # a live definition that no longer renders
            request_text = f"cannot render: {reads.shown_text(str(exc))}"
        return self.page("webhook.html", request, signed, d=detail, request_text=request_text)

    async def deliveries(self, request: Request, signed: Signed) -> Response:
        q = request.query_params
        org = q.get("org") or None
        if org is not None and not signed.access.sees(org):
            return self.refused(request, signed, 404, f"no organization {org}")
        status = q.get("status") or None
        before = _cursor(q.get("after"))
        query = DeliveryFilter(
            organizations=signed.access.visible(org),
            status=status if status in STATUSES else None,
            webhook=q.get("webhook") or None,
            event_type=q.get("event") or None,
            since=_time(q.get("since")),
            until=_time(q.get("until")),
            before=(float(before[0]), str(before[1])) if before else None,
            limit=PAGE + 1,
        )
        found = await self.read(reads.delivery_rows, query)
        rows = found.records[:PAGE]
        older = searched = None
        if len(found.records) > PAGE:
            older = _link(request, after=_encode([rows[-1].created_at, rows[-1].id]))
        elif found.searched_to is not None:
            older = _link(request, after=_encode(list(found.searched_to)))
            searched = found.searched
        orgs = await self.read(reads.organizations_of, signed.access.visible(None))
        filters = {k: q.get(k, "") for k in ("status", "org", "webhook", "event", "since", "until")}
        return self.page(
            "deliveries.html",
            request,
            signed,
            rows=rows,
            more=older,
            searched=searched,
            orgs=orgs,
            statuses=STATUSES,
            events=[e.value for e in Event],
            filters=filters,
        )

    async def delivery(self, request: Request, signed: Signed) -> Response:
        q = request.query_params
        notice = REPLAYED if q.get("replayed") else RETRIED if q.get("retried") else ""
        return await self._delivery_page(
            request, signed, request.path_params["delivery_id"], 200, notice
        )

    async def _delivery_page(
        self, request: Request, signed: Signed, delivery_id: str, status: int, notice: str
    ) -> Response:
        found = await self.read(reads.delivery, delivery_id)
        if found is None or not signed.access.sees(found[0].organization):
            return self.refused(request, signed, 404, f"no delivery {delivery_id}")
        record, attempts = found
        return self.page(
            "delivery.html",
            request,
            signed,
            status,
            d=record,
            attempts=attempts,
            may_replay=signed.access.may("replay"),
            notice=notice,
        )

    async def replay(self, request: Request, signed: Signed) -> Response:
        delivery_id = request.path_params["delivery_id"]
        found = await self.read(reads.delivery, delivery_id)
        if found is None or not signed.access.sees(found[0].organization):
            return self.refused(request, signed, 404, f"no delivery {delivery_id}")
        if not signed.access.may("replay"):
            return self.refused(request, signed, 403, signed.access.refusal("replay"))
        if await self.dispatcher.replay([delivery_id]):
            return RedirectResponse(f"{PREFIX}/deliveries/{delivery_id}?replayed=1", 303)
        record = found[0]
        live = await self.dispatcher.webhook_live(record.organization, record.webhook)
        return await self._delivery_page(
            request, signed, delivery_id, 409, replay_refusal(record, live)
        )

    async def retry(self, request: Request, signed: Signed) -> Response:
        """As POST /v1/deliveries/{id}/retry: the same dispatcher call, the same
        refusals; 404 before 403, as the API answers."""
        delivery_id = request.path_params["delivery_id"]
        found = await self.read(reads.delivery, delivery_id)
        if found is None or not signed.access.sees(found[0].organization):
            return self.refused(request, signed, 404, f"no delivery {delivery_id}")
        if not signed.access.may("replay"):
            return self.refused(request, signed, 403, signed.access.refusal("replay"))
        actor = f"console token {signed.access.token_id}"
        if await self.dispatcher.retry_now([delivery_id], actor):
            return RedirectResponse(f"{PREFIX}/deliveries/{delivery_id}?retried=1", 303)
        refreshed = await self.read(reads.delivery, delivery_id)
        return await self._delivery_page(
            request, signed, delivery_id, 409, retry_refusal((refreshed or found)[0])
        )

    async def history(self, request: Request, signed: Signed) -> Response:
        q = request.query_params
        before = _cursor(q.get("after"))
        org = q.get("org") or None
        if org is not None and not signed.access.sees(org):
            return self.refused(request, signed, 404, f"no organization {org}")
        query = HistoryFilter(
            organizations=signed.access.visible(org),
            actor=q.get("actor") or None,
            action=q.get("action") or None,
            webhook=q.get("webhook") or None,
            since=_iso(q.get("since")),
            until=_iso(q.get("until")),
            before=int(before[0]) if before else None,
            limit=PAGE + 1,
        )
        rows = await self.read(reads.history_rows, query)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        older = _link(request, after=_encode([rows[-1].entry.id])) if more else None
        filters = {k: q.get(k, "") for k in ("actor", "action", "webhook", "since", "until", "org")}
        return self.page(
            "history.html", request, signed, rows=rows, more=older, actions=ACTIONS, filters=filters
        )

    async def activity(self, request: Request, signed: Signed) -> Response:
        org = request.query_params.get("org") or None
        if org is not None and not signed.access.sees(org):
            return self.refused(request, signed, 404, f"no organization {org}")
        visible = signed.access.visible(None)
        orgs = await self.read(reads.organizations_of, visible)
        chosen = signed.access.visible(org)  # None: every organization
        shown = await self.read(
            lambda store: activity_chart.activity(
                self.minutes, store, chosen, self.dispatcher.clock()
            )
        )
        return self.page("activity.html", request, signed, a=shown, orgs=orgs, org=org or "")

    # -- new webhook ----------------------------------------------------------------

    async def new_form(self, request: Request, signed: Signed) -> Response:
        values = newform.form_values(
            {"body": newform.DEFAULT_BODY, "headers": "Content-Type: application/json"},
            await self.read(reads.organizations_of, signed.access.visible(None)),
        )
        return self._new_page(request, signed, newform.FormResult(values))

    def _new_page(self, request: Request, signed: Signed, result: newform.FormResult) -> Response:
        download = None
        if result.yaml is not None:
            download = f"{PREFIX}/new/download?" + urlencode(result.values)
        return self.page(
            "new.html",
            request,
            signed,
            r=result,
            events=newform.EVENTS,
            methods=newform.METHODS,
            placeholders=newform.PLACEHOLDERS,
            download=download,
        )

    async def new_post(self, request: Request, signed: Signed, form: dict[str, str]) -> Response:
        result = newform.check(form, signed.access.visible(None))
        return self._new_page(request, signed, result)

    async def new_check(self, request: Request, signed: Signed, form: dict[str, str]) -> Response:
        result = newform.check(form, signed.access.visible(None))
        answer = result.as_json()
        if result.yaml is not None:
            answer["download"] = f"{PREFIX}/new/download?" + urlencode(result.values)
        return JSONResponse(answer)

    async def new_download(self, request: Request, signed: Signed) -> Response:
        result = newform.check(dict(request.query_params), signed.access.visible(None))
        if result.yaml is None:
            return self.refused(request, signed, 422, "the form has problems: check it first")
        return Response(
            result.yaml,
            media_type="application/yaml",
            headers={"Content-Disposition": f'attachment; filename="{result.filename}"'},
        )


REPLAYED = "Queued again: it is sent with the same webhook-id."
RETRIED = "Due now: the next worker turn sends it, with its attempts and webhook-id kept."
CSRF_REFUSED = (
    "This form's security token is missing or out of date (CSRF check). "
    "Go back, reload the page and send it again."
)

Handler = Callable[[Request, Signed], Awaitable[Response]]
PostHandler = Callable[[Request, Signed, dict[str, str]], Awaitable[Response]]


def _cursor(text: str | None) -> list[Any] | None:
    """An opaque `after=` cursor: base64 of a JSON list (the last row's sort key)."""
    if not text:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text.encode() + b"=" * (-len(text) % 4)))
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, list) and value else None


def _encode(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _link(request: Request, **changes: str) -> str:
    params = dict(request.query_params)
    params.update(changes)
    return f"{request.url.path}?{urlencode(params)}"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _time(text: str | None) -> float | None:
    moment = _parse_time(text)
    return moment.timestamp() if moment else None


def _iso(text: str | None) -> str | None:
    """As the audit log writes its times (ISO 8601 UTC, Z)."""
    moment = _parse_time(text)
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def create_console(dispatcher: Dispatcher, guard: Guard, read: Reader) -> ASGIApp:
    """The console's ASGI app, to mount at /ui; its reads go through `read`."""
    console = Console(dispatcher, guard, read)

    def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            signed = await console.sessions.current(request)
            if signed is None:
                return RedirectResponse(f"{PREFIX}/sign-in", 303)
            if not signed.access.may("read"):  # as GET /v1/deliveries answers
                return console.refused(request, signed, 403, signed.access.refusal("read"))
            return await handler(request, signed)

        return route

    def posted(handler: PostHandler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            signed = await console.sessions.current(request)
            form = await console.form(request)
            if signed is None:
                return console.refused(request, None, 403, CSRF_REFUSED)
            presented = request.headers.get("x-csrf-token") or form.get("csrf_token")
            if not csrf_ok(signed.csrf, presented):
                return console.refused(request, signed, 403, CSRF_REFUSED)
            return await handler(request, signed, form)

        return route

    async def sign_out(request: Request, signed: Signed, _form: dict[str, str]) -> Response:
        return await console.sign_out(request, signed)

    async def replay(request: Request, signed: Signed, _form: dict[str, str]) -> Response:
        return await console.replay(request, signed)

    async def retry(request: Request, signed: Signed, _form: dict[str, str]) -> Response:
        return await console.retry(request, signed)

    routes = [
        Route("/", console.root),
        Route("/sign-in", console.sign_in_form, methods=["GET"]),
        Route("/sign-in", console.sign_in, methods=["POST"]),
        Route("/sign-out", posted(sign_out), methods=["POST"]),
        Route("/webhooks", signed_in(console.webhooks)),
        Route("/webhooks/{org}/{name}", signed_in(console.webhook)),
        Route("/deliveries", signed_in(console.deliveries)),
        Route("/deliveries/{delivery_id}", signed_in(console.delivery), methods=["GET"]),
        Route("/deliveries/{delivery_id}/replay", posted(replay), methods=["POST"]),
        Route("/deliveries/{delivery_id}/retry", posted(retry), methods=["POST"]),
        Route("/history", signed_in(console.history)),
        Route("/activity", signed_in(console.activity)),
        Route("/new", signed_in(console.new_form), methods=["GET"]),
        Route("/new", posted(console.new_post), methods=["POST"]),
        Route("/new/check", posted(console.new_check), methods=["POST"]),
        Route("/new/download", signed_in(console.new_download), methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def not_found(request: Request, _exc: Exception) -> Response:
        return console.refused(request, None, 404, "no such page")

    async def not_allowed(request: Request, _exc: Exception) -> Response:
        return console.refused(request, None, 405, "not that method")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    return _Headers(app)


class _Headers:
    """HEADERS on every answer of the console, static files and redirects too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.raw = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.raw]
                if not scope["path"].startswith(PREFIX + "/static/") and not any(
                    k == b"cache-control" for k, _ in message["headers"]
                ):
                    message["headers"].append((b"cache-control", b"no-store"))
            await send(message)

        await self.app(scope, receive, with_headers)
