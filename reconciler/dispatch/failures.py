"""What the API answers when it could not do what was asked: the state failed (503),
or the dispatcher has a bug (500). Every path that answers a request (the routes,
the intake's fast path, `serve`'s own protocol) answers these through `answer`, in
the shape of every other refusal:

    503 {"error": "the state is unavailable: ...", "problems": []}  + Retry-After
        the database failed (a full disk, a lost connection, a lock held too long):
        nothing the caller sent was wrong, and the same request may be sent again
    503 {"error": "outcome unknown: ...", "problems": []}  + Retry-After
        intake's deadline passed before the state answered (OutcomeUnknown): the
        events may yet be stored, or not; sent again with the same ids, they are
        queued at most once
    500 {"error": "internal error", "problems": []}
        anything else

Neither body says more: the cause goes to the log, in one line naming the request
(method and path, never its headers or body) for a state failure, with its
traceback for a bug.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Any

from starlette.responses import JSONResponse

from reconciler.errors import StateError

log = logging.getLogger("reconciler.dispatch")

RETRY_AFTER = 5  # seconds: what a 503 tells the caller to wait before sending again
UNAVAILABLE = (
    "the state is unavailable: try again later (an event sent again with the same id "
    "is queued at most once)"
)
INTERNAL = "internal error"


class OutcomeUnknown(Exception):
    """The state did not answer intake within its deadline: what was sent may yet be
    stored, or not."""

    def __init__(self, deadline: float) -> None:
        super().__init__(f"the state did not answer within {deadline:g}s")
        self.deadline = deadline


def unknown(deadline: float) -> str:
    return (
        f"outcome unknown: the state did not answer within {deadline:g}s, and the event "
        "may or may not be queued; retry with the same event id (an event id is queued "
        "at most once per organization)"
    )


def responses(model: Any) -> dict[int | str, dict[str, Any]]:
    """The 503 for a route's `responses=`, with `model` the shape of every refusal."""
    return {
        503: {
            "model": model,
            "description": (
                "The state cannot take the request now, or (intake) did not answer within "
                "the intake deadline, so the outcome is unknown: send it again later, an "
                "event with the same id"
            ),
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before sending it again.",
                    "required": True,
                    "schema": {"type": "integer"},
                }
            },
        }
    }


def of_state(exc: BaseException) -> bool:
    """Whether `exc` is the state failing (either store), not the dispatcher."""
    if isinstance(exc, StateError | sqlite3.Error):
        return True
    psycopg = sys.modules.get("psycopg")  # loaded by the PostgreSQL store, if in use
    return psycopg is not None and isinstance(exc, psycopg.Error)


def answer(exc: Exception, method: str, path: str) -> JSONResponse:
    """The answer to a request that failed with `exc`, logged once."""
    if isinstance(exc, OutcomeUnknown):
        log.error("%s %s: %s; answered 503, outcome unknown", method, path, exc)
        return JSONResponse(
            {"error": unknown(exc.deadline), "problems": []},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER)},
        )
    if not of_state(exc):
        log.error("%s %s failed unexpectedly; answered 500", method, path, exc_info=exc)
        return JSONResponse({"error": INTERNAL, "problems": []}, status_code=500)
    reason = (str(exc).strip().splitlines() or [""])[0]
    log.error(
        "%s %s: the state failed (%s: %s); answered 503",
        method,
        path,
        type(exc).__name__,
        reason,
    )
    return JSONResponse(
        {"error": UNAVAILABLE, "problems": []},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER)},
    )
