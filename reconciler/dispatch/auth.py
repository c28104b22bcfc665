"""Bearer tokens on the HTTP API, as FastAPI dependencies.

Each route but /healthz declares `Depends(guard.require(permission))`: the
dependency reads `Authorization: Bearer <token>`, verifies the token against the
store, checks the role, and hands the route an `Access` for the organization
checks that need the request's data (an event's organization, a delivery's).

    401 {"error": "missing or invalid bearer token", "problems": []}
        + WWW-Authenticate: Bearer
        no header, another scheme, an unknown, revoked or expired token
    403 {"error": "the role auditor may not send events", "problems": []}
        {"error": "organization globex is out of this token's scope", "problems": []}

These come before anything is judged of what was sent, its size included.

Verified tokens are kept for CACHE_SECONDS (by the dispatcher's clock), so a
burst of events costs one lookup; expiry is checked on every request, and a
revocation reaches every running dispatcher within CACHE_SECONDS. Requests that
find a token missing from the cache at the same moment (every connection of a
busy producer, each time the cache time runs out) wait for one lookup together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from reconciler import tokens
from reconciler.store.tokens import TokenRecord
from reconciler.tokens import Access, Permission

if TYPE_CHECKING:
    from reconciler.dispatch.service import Dispatcher

UNAUTHORIZED = "missing or invalid bearer token"
CACHE_SECONDS = 1.0
_CACHE_LIMIT = 1024

_bearer = HTTPBearer(
    auto_error=False,
    description="An API token made by `reconciler tokens create`: `Authorization: Bearer rcn_...`",
)


class AuthErrorOut(BaseModel):
    error: str
    problems: list[dict[str, str]] = Field(
        max_length=0, description="Always empty: what was sent is not judged before who sent it."
    )


# For each guarded route's `responses=`, so the OpenAPI document lists them.
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": AuthErrorOut,
        "description": "Missing or invalid bearer token",
        "headers": {
            "WWW-Authenticate": {
                "description": "The scheme to use: `Bearer`.",
                "required": True,
                "schema": {"type": "string", "const": "Bearer"},
            }
        },
    },
    403: {"model": AuthErrorOut, "description": "Role or organization not allowed"},
}


class AuthError(Exception):
    """A request refused for who sent it: 401 or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(
            {"error": self.message, "problems": []}, status_code=self.status, headers=headers
        )


def forbidden(message: str) -> AuthError:
    return AuthError(403, message)


class Require:
    """The dependency of one route: a valid token whose role has `permission`
    (None: any valid token)."""

    def __init__(self, guard: Guard, permission: Permission | None) -> None:
        self.guard = guard
        self.permission = permission

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Access:
        access = await self.guard.authenticate(credentials.credentials if credentials else None)
        if self.permission is not None and not access.may(self.permission):
            raise forbidden(access.refusal(self.permission))
        return access


class Guard:
    """Verifies tokens for one app, against its dispatcher's store and clock."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._cache: dict[str, tuple[TokenRecord, float]] = {}
        self._looking: dict[str, asyncio.Future[TokenRecord | None]] = {}  # under way

    def require(self, permission: Permission | None = None) -> Any:
        return Depends(Require(self, permission))

    async def authenticate(self, presented: str | None) -> Access:
        if not presented or not presented.startswith(tokens.PREFIX):
            raise AuthError(401, UNAUTHORIZED)
        now = self._dispatcher.clock()
        return self.verified(await self._lookup(tokens.token_hash(presented), now), now)

    def verified(self, record: TokenRecord | None, now: float) -> Access:
        """What `record` may do, if it is usable at `now`; else AuthError 401. The
        console checks its sessions' tokens through this too."""
        if record is None or not record.usable(now):
            raise AuthError(401, UNAUTHORIZED)
        return Access.of(record)

    async def _lookup(self, digest: str, now: float) -> TokenRecord | None:
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < CACHE_SECONDS:
            return cached[0]
        looking = self._looking.get(digest)
        if looking is None:
            looking = self._looking[digest] = asyncio.ensure_future(self._find(digest, now))
            looking.add_done_callback(lambda task: self._looked(digest, task))
        # Shielded: a request that goes away stops waiting, not the others' lookup.
        return await asyncio.shield(looking)

    def _looked(self, digest: str, task: asyncio.Future[TokenRecord | None]) -> None:
        if self._looking.get(digest) is task:
            del self._looking[digest]
        if not task.cancelled():
            task.exception()  # seen here, should every waiter have gone

    async def _find(self, digest: str, now: float) -> TokenRecord | None:
        record = await self._dispatcher.token(digest)
        if record is None:
            self._cache.pop(digest, None)  # unknown secrets are never kept
            return None
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[digest] = (record, now)
        return record

    async def check(self, request: Request) -> AuthError | None:
        """The refusal the route's own dependency would give, for a request FastAPI
        rejected before running it (a body that is not JSON is read first)."""
        return await self._check(request.scope.get("route"), request)

    async def check_unrouted(self, scope: Scope, routes: Sequence[BaseRoute]) -> AuthError | None:
        """check(), for a request refused before it is routed (a body over its size
        limit, never read): the refusal of the route of `routes` it would reach."""
        for route in routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return await self._check(route, Request(scope))
        return None

    async def _check(self, route: Any, request: Request) -> AuthError | None:
        for dependency in getattr(getattr(route, "dependant", None), "dependencies", ()):
            call = getattr(dependency, "call", None)
            if isinstance(call, Require):
                try:
                    await call(await _bearer(request))
                except AuthError as refusal:
                    return refusal
        return None


def install(app: FastAPI, dispatcher: Dispatcher) -> Guard:
    """Answer AuthError as JSON; return the app's guard."""

    async def _refused(_request: Request, exc: Exception) -> JSONResponse:
        return cast(AuthError, exc).response()

    app.add_exception_handler(AuthError, _refused)
    return Guard(dispatcher)
