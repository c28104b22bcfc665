"""The HTTP API: event intake, deliveries, replay, endpoint health, liveness,
readiness. OpenAPI at /openapi.json.

Every route but /healthz and /readyz takes a bearer token (reconciler/dispatch/auth.py): a
publisher sends events, an auditor reads deliveries, an admin does both and
replays, each within the token's organizations. Deliveries of other
organizations are invisible: left out of lists, 404 one by one; /metrics shows
the token's organizations' series only.

Every answer but a success is `{"error": ..., "problems": [...]}`: who asks is
judged first (401, 403), then what they sent (413, 422), then what it asks of
the state; a state that fails answers 503 with Retry-After (failures.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler import __version__
from reconciler.dispatch import auth, failures, fast_intake
from reconciler.dispatch.health_views import StatusFilters, WebhookStatusOut
from reconciler.dispatch.service import Dispatcher
from reconciler.dispatch.views import (
    DeliveryListOut,
    DeliveryWithAttemptsOut,
    ReplayOut,
    delivery_json,
    replay_refusal,
)
from reconciler.events import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    BatchIn,
    EventIn,
    validation_message,
)
from reconciler.store.backend import Backend
from reconciler.store.queue import EventKey, Status
from reconciler.tokens import Access


class IntakeOut(BaseModel):
    event_id: str = Field(description="The event's id, which names it within its organization.")
    organization: str = Field(description="The event's organization.")
    deliveries: int = Field(description="Deliveries queued: one per matching enabled webhook.")
    duplicate: bool = Field(
        description="True when this organization sent an event with this id before (then "
        "`deliveries` is that event's). The same id in another organization is another event."
    )
    note: str | None = Field(
        default=None,
        description="Set when `deliveries` is 0: the event is stored, but no enabled webhook "
        "of the organization fires on its type, so nothing is sent (e.g. `no enabled "
        "webhook of acme fires on new_rule_violation: the event is stored, and nothing is "
        "sent`); absent otherwise.",
    )


class BatchOut(BaseModel):
    results: list[IntakeOut] = Field(description="One per event, in the order sent.")


class ProblemOut(BaseModel):
    field: str = Field(description="What is wrong: `body`, a field of it, or `query.NAME`.")
    message: str


class ErrorOut(BaseModel):
    error: str
    problems: list[ProblemOut] = Field(
        description="One entry per problem of the request (422); empty otherwise."
    )


class ResumeOut(BaseModel):
    organization: str
    name: str
    resumed: bool = Field(description="False when the webhook was not paused.")


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    ready: Literal[True]
    state_answered_ago: float = Field(
        description="Seconds since the dispatcher's last successful call to the state."
    )
    workers_turned_ago: float = Field(description="Seconds since the delivery loop last turned.")


class NotReadyOut(BaseModel):
    ready: Literal[False]
    reasons: list[str] = Field(description="Each reason this dispatcher is not ready.")


class DeliveryFilters(BaseModel):
    """The query of GET /v1/deliveries: an unknown name is refused, not ignored, so a
    misspelt filter cannot pass for an empty one."""

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None
    org: str | None = Field(default=None, description="One organization of the token's.")
    webhook: str | None = None
    event_id: str | None = Field(
        default=None,
        description="Only this event's deliveries; needs `org` (an id names an "
        "event only within its organization).",
    )
    limit: int = Field(default=100, ge=1, le=1000)


# The answers every route with parameters or a body may give besides its own.
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "The request's problems, each naming its field"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such delivery (or not one of the token's)"},
}
NO_WEBHOOK: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such webhook (or not one of the token's)"},
}
# Every guarded route reads the state, if only to look up the token.
UNAVAILABLE = failures.responses(ErrorOut)


class DispatcherAPI(FastAPI):
    """FastAPI, entered through the intake's fast path (reconciler/dispatch/fast_intake.py),
    which answers valid events ahead of the middleware; `intake = None` turns it off."""

    intake: fast_intake.FastIntake | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closers: list[Callable[[], None]] = []  # what close() ends

    def close(self) -> None:
        """End what the app holds beside the dispatcher (the console's connection)."""
        for close in self.closers:
            close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.intake is None:
            await super().__call__(scope, receive, send)
        else:
            await self.intake(scope, receive, send)


def create_app(
    dispatcher: Dispatcher,
    *,
    console: bool = True,
    console_store: Callable[[], Backend] | None = None,
) -> DispatcherAPI:
    """The API; with `console`, the web console under /ui/ (dispatch/console/), whose
    reads run on a connection of its own opened by `console_store` (else on the
    dispatcher's database thread); `app.close()` closes it."""
    app = DispatcherAPI(
        title="reconciler dispatcher",
        version=__version__,
        description="Event intake and delivery log of the reconciler webhook dispatcher.",
        # The document is served below, behind a token; the browsable pages could
        # not send one.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look up the global providers on every
        # request (a few % of the CPU per event); the dispatcher has its own metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    guard = auth.install(app, dispatcher)
    limits = {fast_intake.PATH: MAX_EVENT_BYTES, fast_intake.BATCH_PATH: MAX_BATCH_BYTES}
    app.add_middleware(
        _BodyLimit, limits=limits, default=MAX_EVENT_BYTES, guard=guard, routes=app.router.routes
    )
    # Around the rest: every failure answered in one shape, intake within its deadline.
    app.add_middleware(
        _Failures,
        deadlines={
            fast_intake.PATH: dispatcher.intake_deadline,
            fast_intake.BATCH_PATH: dispatcher.intake_deadline,
        },
    )
    app.intake = fast_intake.FastIntake(
        functools.partial(FastAPI.__call__, app), dispatcher, guard, limits
    )
    any_token, may_send = guard.require(), guard.require("send")
    may_read, may_replay = guard.require("read"), guard.require("replay")
    may_resume = guard.require("resume")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        refusal = await guard.check(request)  # who asks comes before what they sent
        if refusal is not None:
            return refusal.response()
        return _invalid_request([_problem(error) for error in exc.errors()])

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code != 400:
            # No such path (404), or not that method (405, with its Allow header).
            if exc.status_code in (404, 405):
                return _error(exc.status_code, str(exc.detail).lower(), exc.headers)
            return await http_exception_handler(request, exc)
        # FastAPI's 400 is a body it could not read as JSON at all (not UTF-8, nested
        # past the parser's depth): to the caller, the same as any other body that
        # is not JSON, after the same token checks.
        refusal = await guard.check(request)
        if refusal is not None:
            return refusal.response()
        return _invalid_request([{"field": "body", "message": UNREADABLE_BODY}])

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=IntakeOut,
        response_model_exclude_none=True,
        responses=_intake_responses(MAX_EVENT_BYTES),
        summary="Queue an event: one delivery per matching enabled webhook",
    )
    async def post_event(event: EventIn, access: Access = may_send) -> dict[str, Any]:
        if not access.sees(event.organization):
            raise auth.forbidden(access.out_of_scope(event.organization))
        result = await dispatcher.accept(event)
        return result.as_json()

    @app.post(
        "/v1/events/batch",
        status_code=202,
        response_model=BatchOut,
        response_model_exclude_none=True,
        responses=_intake_responses(MAX_BATCH_BYTES),
        summary=f"Queue up to {MAX_BATCH_EVENTS} events at once: all are stored, or none",
        description=(
            "Each event as `POST /v1/events` takes it, and each answered as there, in "
            "the order sent. The events and their deliveries are stored in one "
            "transaction: a batch with one invalid event, or one event of an "
            "organization outside the token's scope, is refused whole, naming it "
            "(`events.3.time`), and nothing of it is queued."
        ),
    )
    async def post_events(batch: BatchIn, access: Access = may_send) -> dict[str, Any]:
        for index, event in enumerate(batch.events):
            if not access.sees(event.organization):
                raise auth.forbidden(f"events.{index}: {access.out_of_scope(event.organization)}")
        return fast_intake.batch_answer(await dispatcher.accept_batch(batch.events))

    @app.get(
        "/v1/deliveries",
        response_model=None,
        responses={200: {"model": DeliveryListOut}, **auth.RESPONSES, **UNAVAILABLE, **INVALID},
        summary="List deliveries, newest first",
    )
    async def list_deliveries(
        filters: Annotated[DeliveryFilters, Query()], access: Access = may_read
    ) -> Any:
        org = filters.org
        organizations = _readable(access, org)
        event = None
        if filters.event_id is not None:
            if org is None:
                return _invalid_request([{"field": "query.org", "message": EVENT_NEEDS_ORG}])
            event = EventKey(org, filters.event_id)
        records = await dispatcher.deliveries(
            status=filters.status,
            organizations=organizations,
            webhook=filters.webhook,
            event=event,
            limit=filters.limit,
        )
        return {"deliveries": [record.as_json() for record in records]}

    @app.get(
        "/v1/deliveries/{delivery_id}",
        response_model=None,
        responses={
            200: {"model": DeliveryWithAttemptsOut},
            **auth.RESPONSES,
            **UNAVAILABLE,
            **NOT_FOUND,
            **INVALID,
        },
        summary="One delivery with every attempt",
    )
    async def get_delivery(delivery_id: str, access: Access = may_read) -> Any:
        found = await dispatcher.delivery(delivery_id)
        if found is None or not access.sees(found[0].organization):
            return _error(404, f"no delivery {delivery_id}")
        return delivery_json(*found)

    @app.post(
        "/v1/deliveries/{delivery_id}/replay",
        status_code=202,
        response_model=None,
        responses={
            202: {"model": ReplayOut},
            **auth.RESPONSES,
            **UNAVAILABLE,
            **NOT_FOUND,
            409: {
                "model": ErrorOut,
                "description": "The delivery is not finished yet, or its webhook was deleted "
                "(its delivery history is kept, but it is never sent again)",
            },
            **INVALID,
        },
        summary="Send a finished delivery again, with the same webhook-id",
    )
    async def replay(delivery_id: str, access: Access = may_replay) -> Any:
        found = await dispatcher.delivery(delivery_id)
        if found is None or not access.sees(found[0].organization):
            return _error(404, f"no delivery {delivery_id}")
        replayed = await dispatcher.replay([delivery_id])
        if not replayed:
            record = found[0]
            live = await dispatcher.webhook_live(record.organization, record.webhook)
            return _error(409, replay_refusal(record, live))
        return {"replayed": replayed}

    @app.post(
        "/v1/webhooks/{organization}/{name}/resume",
        response_model=ResumeOut,
        responses={**auth.RESPONSES, **UNAVAILABLE, **NO_WEBHOOK, **INVALID},
        summary="Resume a webhook the dispatcher paused (admin), without an apply",
        description=(
            "Lifts a pause the dispatcher set (after HTTP 410, or an endpoint down for "
            "`serve --pause-after`), with the webhook's circuit breaker closed, and records "
            "a `resume` entry in the history by the token's name. A webhook that is not "
            "paused is left as it is (`resumed: false`). Another organization's webhook "
            "is answered as one that is not there (404)."
        ),
    )
    async def resume_webhook(
        organization: str, name: str, access: Access = may_resume
    ) -> dict[str, Any] | JSONResponse:
        if not access.sees(organization):
            return _error(404, f"no webhook {organization}/{name}")
        outcome = await dispatcher.resume(organization, name, f"api token {access.token_id}")
        if outcome == "no such webhook":
            return _error(404, f"no webhook {organization}/{name}")
        return {"organization": organization, "name": name, "resumed": outcome == "resumed"}

    @app.get(
        "/v1/webhooks/status",
        response_model=None,
        responses={200: {"model": WebhookStatusOut}, **auth.RESPONSES, **UNAVAILABLE, **INVALID},
        summary="Each webhook's endpoint health: backlog, success rate, p95, last outcomes",
        description=(
            "Read as `GET /v1/deliveries` is, by the same roles, for the token's "
            "organizations only: `org` outside them is 403. Success rate and p95 are "
            "over the attempts of the last hour; failure reasons are masked."
        ),
    )
    async def webhooks_status(
        filters: Annotated[StatusFilters, Query()], access: Access = may_read
    ) -> Any:
        report = await dispatcher.endpoint_health(_readable(access, filters.org))
        return report.as_json()

    @app.get(
        "/metrics",
        summary="Prometheus metrics of the token's organizations (any valid token)",
        description=(
            "The counters labelled with one of the token's organizations; a token with "
            "every organization also reads the installation's series (the queue, "
            "deferred sends, attempt durations)."
        ),
        # Response, not PlainTextResponse: the class's media type would be given to
        # every declared answer, and the 401 is JSON.
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            401: auth.RESPONSES[401],
            **UNAVAILABLE,
        },
    )
    async def metrics(access: Access = any_token) -> PlainTextResponse:
        return PlainTextResponse(
            await dispatcher.metrics_text(access), media_type="text/plain; version=0.0.4"
        )

    @app.get("/healthz", response_model=HealthOut, summary="Liveness (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=None,
        responses={
            200: {"model": ReadyOut, "description": "Ready"},
            503: {"model": NotReadyOut, "description": "Not ready, with the reasons"},
        },
        summary="Readiness (no token needed): the state answers and the workers progress",
        description=(
            "200 when the dispatcher's last call to the state succeeded within 15 s "
            "(an idle dispatcher probes it, waiting at most 2 s) and no call failed since, "
            "and the delivery loop turned within 15 s; else 503 with the reasons."
        ),
    )
    async def readyz() -> JSONResponse:
        reasons = await dispatcher.readiness.reasons()
        if reasons:
            return JSONResponse({"ready": False, "reasons": reasons}, status_code=503)
        now = dispatcher.clock()
        answered, turned = dispatcher.db.answered, dispatcher.worker.turned
        assert answered is not None and turned is not None
        return JSONResponse(
            {
                "ready": True,
                "state_answered_ago": round(max(0.0, now - answered), 3),
                "workers_turned_ago": round(max(0.0, now - turned), 3),
            }
        )

    if console:
        from reconciler.dispatch.console.app import create_console
        from reconciler.dispatch.console.reader import Reader

        reader = Reader(dispatcher, console_store)
        app.closers.append(reader.close)
        app.mount("/ui", create_console(dispatcher, guard, reader))

    @app.get("/openapi.json", include_in_schema=False, dependencies=[any_token])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


UNREADABLE_BODY = "not valid JSON: the body must be UTF-8 JSON text"
EVENT_NEEDS_ORG = "event_id goes with org: an event id names an event only within its organization"


def _readable(access: Access, org: str | None) -> list[str] | None:
    """The organizations a listing by `access` covers: `org`, which it must see
    (else 403), or every one it sees (None: all)."""
    if org is not None and not access.sees(org):
        raise auth.forbidden(access.out_of_scope(org))
    return access.visible(org)


def _intake_responses(max_bytes: int) -> dict[int | str, dict[str, Any]]:
    """What an intake route may answer besides its 202."""
    too_large = {"model": ErrorOut, "description": f"A body over {max_bytes} bytes"}
    return {**auth.RESPONSES, **UNAVAILABLE, 413: too_large, **INVALID}


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "problems": []}, status_code=status, headers=headers)


def _invalid_request(problems: list[dict[str, str]]) -> JSONResponse:
    return JSONResponse({"error": "invalid request", "problems": problems}, status_code=422)


def _problem(error: Any) -> dict[str, str]:
    """One of pydantic's errors as {field, message}."""
    if error["type"] == "json_invalid":  # loc is ("body", offset)
        where = error["loc"][-1]
        reason = (error.get("ctx") or {}).get("error", error["msg"])
        return {"field": "body", "message": f"not valid JSON: {reason} (at character {where})"}
    return {
        "field": ".".join(str(p) for p in error["loc"] if p != "body") or "body",
        "message": validation_message(error),
    }


class _Failures:
    """Answer a request whose handling failed (the state, or a bug) in the shape of
    every refusal, logged once (failures.py), rather than as the server's plain 500.
    A request to a path of `deadlines` not answered within its seconds is answered
    503 "outcome unknown" (failures.OutcomeUnknown)."""

    def __init__(self, app: ASGIApp, deadlines: dict[str, float] | None = None) -> None:
        self.app = app
        self.deadlines = deadlines or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        deadline = self.deadlines.get(scope["path"]) if scope["method"] == "POST" else None
        limit = asyncio.timeout(deadline)
        try:
            async with limit:
                await self.app(scope, receive, watched)
        except Exception as exc:
            if started:  # too late to answer otherwise: the server ends the response
                raise
            failure: Exception = exc
            if deadline is not None and limit.expired():
                failure = failures.OutcomeUnknown(deadline)
            response = failures.answer(failure, scope["method"], scope["path"])
            await response(scope, _nothing, send)


class _BodyLimit:
    """Refuse request bodies over their path's limit (`limits`, else `default`) with
    413, before the app reads them, but after who asks: a request its route would
    refuse for its token (401, 403) gets that refusal instead.

    The body is read here (it is small, by the limit) and handed on as it came.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: dict[str, int],
        default: int,
        guard: auth.Guard,
        routes: list[BaseRoute],
    ) -> None:
        self.app = app
        self.limits = limits
        self.default = default
        self.guard = guard
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, limit, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await self._too_large(scope, limit, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, limit: int, send: Send) -> None:
        refusal = await self.guard.check_unrouted(scope, self.routes)
        response = (
            refusal.response()
            if refusal is not None
            else _error(413, f"request body over {limit} bytes")
        )
        await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
