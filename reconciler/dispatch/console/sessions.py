"""The console's sessions: a random id in a cookie, the rest in the state.

Signing in with an API token makes a session row (store/console.py) holding the
SHA-256 of a new random id, the token's id and a CSRF secret; the cookie holds the
id alone. Every request reads the row and then the token, through the API's own
check (auth.Guard.verified): a token revoked or past its expiry ends its sessions
at once. A session ends after IDLE_SECONDS without a request, after
ABSOLUTE_SECONDS in any case, and on sign-out (its row deleted).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from reconciler import tokens
from reconciler.dispatch.auth import AuthError, Guard
from reconciler.dispatch.console.reader import Reader
from reconciler.dispatch.service import Dispatcher
from reconciler.store.backend import Backend
from reconciler.store.console import SessionRecord
from reconciler.store.tokens import TokenRecord
from reconciler.tokens import Access

COOKIE = "rcn_console"
PATH = "/ui/"
IDLE_SECONDS = 30 * 60.0  # half an hour without a request
ABSOLUTE_SECONDS = 12 * 3600.0  # a working day, however busy
# A session's idle expiry is moved on at most this often: a page view writes to the
# state once a minute, not on every request.
TOUCH_EVERY = 60.0


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Signed:
    """A request's session: who it is and what its POSTs must carry."""

    access: Access
    csrf: str
    id_hash: str


class Sessions:
    def __init__(self, dispatcher: Dispatcher, guard: Guard, read: Reader) -> None:
        self.dispatcher = dispatcher
        self.guard = guard
        self.read = read

    async def sign_in(self, presented: str) -> tuple[str, SessionRecord] | None:
        """A new session for a usable token (its secret as pasted), or None."""
        presented = presented.strip()
        if not presented.startswith(tokens.PREFIX):
            return None
        try:
            access = await self.guard.authenticate(presented)
        except AuthError:
            return None
        now = self.dispatcher.clock()
        session_id = secrets.token_urlsafe(32)
        record = SessionRecord(
            id_hash=_digest(session_id),
            token_id=access.token_id,
            csrf_secret=secrets.token_urlsafe(32),
            created_at=now,
            idle_expires_at=min(now + IDLE_SECONDS, now + ABSOLUTE_SECONDS),
            expires_at=now + ABSOLUTE_SECONDS,
        )
        await self.read(_add, record, now)
        return session_id, record

    async def current(self, request: Request) -> Signed | None:
        """The request's session, if its cookie names a live one whose token is usable."""
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            return None
        digest = _digest(session_id)
        record = await self.read(_session, digest)
        now = self.dispatcher.clock()
        if record is None or not record.usable(now):
            return None
        token = await self.read(_token, record.token_id)
        try:
            access = self.guard.verified(token, now)
        except AuthError:
            return None
        if now + IDLE_SECONDS - record.idle_expires_at >= TOUCH_EVERY:
            await self.read(_touch, digest, now + IDLE_SECONDS)
        return Signed(access, record.csrf_secret, digest)

    async def sign_out(self, signed: Signed) -> None:
        await self.read(_delete, signed.id_hash)


def csrf_ok(expected: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(expected.encode(), (presented or "").encode())


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Strict, Path=/ui/, Secure when the request came over https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _add(store: Backend, record: SessionRecord, now: float) -> None:
    store.delete_expired_sessions(now)  # sign-ins are rare: they sweep as they come
    store.add_session(record)


def _session(store: Backend, digest: str) -> SessionRecord | None:
    return store.session(digest)


def _token(store: Backend, token_id: str) -> TokenRecord | None:
    return next((t for t in store.tokens() if t.id == token_id), None)


def _touch(store: Backend, digest: str, until: float) -> None:
    store.touch_session(digest, until)


def _delete(store: Backend, digest: str) -> None:
    store.delete_session(digest)
