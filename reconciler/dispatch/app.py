"""The HTTP API: event intake, deliveries, replay, health. OpenAPI at /openapi.json.

Every route but /healthz takes a bearer token (reconciler/dispatch/auth.py): a
publisher sends events, an auditor reads deliveries, an admin does both and
replays, each within the token's organizations. Deliveries of other
organizations are invisible: left out of lists, 404 one by one.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler import __version__
from reconciler.dispatch import auth
from reconciler.dispatch.events import MAX_EVENT_BYTES, EventIn
from reconciler.dispatch.service import Dispatcher
from reconciler.dispatch.views import delivery_json
from reconciler.tokens import Access

StatusFilter = Literal["pending", "in_flight", "delivered", "failed", "cancelled"]


class IntakeOut(BaseModel):
    event_id: str
    deliveries: int
    duplicate: bool


class ErrorOut(BaseModel):
    error: str
    problems: list[dict[str, Any]] = []


def create_app(dispatcher: Dispatcher) -> FastAPI:
    app = FastAPI(
        title="reconciler dispatcher",
        version=__version__,
        description="Event intake and delivery log of the reconciler webhook dispatcher.",
        # The document is served below, behind a token; the browsable pages could
        # not send one.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(_BodyLimit, limit=MAX_EVENT_BYTES)
    guard = auth.install(app, dispatcher)
    any_token, may_send = guard.require(), guard.require("send")
    may_read, may_replay = guard.require("read"), guard.require("replay")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        refusal = await guard.check(request)  # who asks comes before what they sent
        if refusal is not None:
            return refusal.response()
        problems = [
            {
                "field": ".".join(str(p) for p in error["loc"] if p != "body") or "body",
                "message": error["msg"].removeprefix("Value error, "),
            }
            for error in exc.errors()
        ]
        return JSONResponse({"error": "invalid request", "problems": problems}, status_code=422)

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=IntakeOut,
        responses={**auth.RESPONSES, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
        summary="Queue an event: one delivery per matching enabled webhook",
    )
    async def post_event(event: EventIn, access: Access = may_send) -> dict[str, Any]:
        if not access.sees(event.organization):
            raise auth.forbidden(access.out_of_scope(event.organization))
        result = await dispatcher.accept(event)
        return result.as_json()

    @app.get("/v1/deliveries", responses=auth.RESPONSES, summary="List deliveries, newest first")
    async def list_deliveries(
        access: Access = may_read,
        status: StatusFilter | None = None,
        org: str | None = None,
        webhook: str | None = None,
        event_id: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        if org is not None and not access.sees(org):
            raise auth.forbidden(access.out_of_scope(org))
        records = await dispatcher.db.run(
            dispatcher.db.store.deliveries,
            status=status,
            organizations=access.visible(org),
            webhook=webhook,
            event_id=event_id,
            limit=limit,
        )
        return {"deliveries": [record.as_json() for record in records]}

    @app.get(
        "/v1/deliveries/{delivery_id}",
        responses={**auth.RESPONSES, 404: {"model": ErrorOut}},
        summary="One delivery with every attempt",
    )
    async def get_delivery(delivery_id: str, access: Access = may_read) -> Any:
        found = await dispatcher.db.run(dispatcher.db.store.delivery, delivery_id)
        if found is None or not access.sees(found[0].organization):
            return _error(404, f"no delivery {delivery_id}")
        return delivery_json(*found)

    @app.post(
        "/v1/deliveries/{delivery_id}/replay",
        status_code=202,
        responses={**auth.RESPONSES, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
        summary="Send a finished delivery again, with the same webhook-id",
    )
    async def replay(delivery_id: str, access: Access = may_replay) -> Any:
        found = await dispatcher.db.run(dispatcher.db.store.delivery, delivery_id)
        if found is None or not access.sees(found[0].organization):
            return _error(404, f"no delivery {delivery_id}")
        replayed = await dispatcher.db.run(
            dispatcher.db.store.replay, [delivery_id], dispatcher.clock()
        )
        if not replayed:
            return _error(409, f"delivery {delivery_id} is {found[0].status}: not replayable yet")
        dispatcher.wake()
        return {"replayed": replayed}

    @app.get(
        "/metrics",
        summary="Prometheus metrics (any valid token)",
        response_class=PlainTextResponse,
        responses={401: auth.RESPONSES[401]},
        dependencies=[any_token],
    )
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            await dispatcher.metrics_text(), media_type="text/plain; version=0.0.4"
        )

    @app.get("/healthz", summary="Liveness (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False, dependencies=[any_token])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "problems": []}, status_code=status)


class _BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, before the app reads them.

    The body is read here (it is small, by the limit) and handed on as it came.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await _too_large(self.limit, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse(
        {"error": f"request body over {limit} bytes", "problems": []}, status_code=413
    )
    await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
