"""The web console under test: the real app (the API with /ui/ mounted) over a
SQLite state, a fake clock, and a signed-in httpx client per token (over ASGI)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from reconciler import tokens
from reconciler.dispatch.app import create_app
from reconciler.dispatch.sender import Sender
from reconciler.dispatch.service import Dispatcher
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import FakeClock

START = 1_800_000_000.0
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no csrf_token field on the page"
    return found.group(1)


class Client:
    """An httpx client over the app's ASGI interface, called synchronously: its
    coroutines run on one event loop in a thread, cookies kept between calls."""

    def __init__(
        self, app: Any, loop: asyncio.AbstractEventLoop, base_url: str = "http://testserver"
    ) -> None:
        self.loop = loop
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self.http = httpx.AsyncClient(transport=transport, base_url=base_url)
        self.cookies = self.http.cookies

    def _run(self, call: Any) -> httpx.Response:
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(30)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._run(self.http.get(url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._run(self.http.post(url, **kwargs))


@dataclass
class Console:
    store: SqliteStore
    clock: FakeClock
    dispatcher: Dispatcher
    app: Any
    loop: asyncio.AbstractEventLoop

    def token(
        self, *organizations: str, role: str = "admin", all_organizations: bool = False
    ) -> str:
        _, secret = tokens.create_token(
            self.store,
            role=role,
            organizations=organizations,
            all_organizations=all_organizations,
            name="console-tests",
            expires_in=None,
            now=self.clock(),
        )
        return secret

    def client(self, base_url: str = "http://testserver") -> Client:
        return Client(self.app, self.loop, base_url)

    def sign_in(self, secret: str, client: Client | None = None) -> Client:
        client = client or self.client()
        form = client.get("/ui/sign-in")
        answer = client.post(
            "/ui/sign-in", data={"token": secret, "csrf_token": csrf_of(form.text)}
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/ui/webhooks"
        return client

    def signed_in(self, *organizations: str, role: str = "admin") -> Client:
        return self.sign_in(
            self.token(*organizations, role=role, all_organizations=not organizations)
        )


@contextmanager
def console_over(
    path: Path, *, console: bool = True, own_connection: bool = False
) -> Iterator[Console]:
    """With `own_connection`, the console reads on a thread and a SQLite connection of
    its own, as under `serve`; else on the dispatcher's database thread."""
    store = SqliteStore(path)
    clock = FakeClock(START)
    sender = Sender(httpx.AsyncHTTPTransport())
    dispatcher = Dispatcher(store, sender, clock=clock, env={})
    app = None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        opener = (lambda: SqliteStore(path)) if own_connection else None
        app = create_app(dispatcher, console=console, console_store=opener)
        yield Console(store, clock, dispatcher, app, loop)
    finally:
        if app is not None:
            app.close()
        asyncio.run_coroutine_threadsafe(sender.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        dispatcher.db.close()
        store.close()


def deliver(console: Console) -> int:
    """One turn of the worker: claims due deliveries and sends them."""
    return asyncio.run_coroutine_threadsafe(
        console.dispatcher.worker.run_once(), console.loop
    ).result(30)


def add_event(console: Console, organization: str, event_id: str, **fields: str) -> None:
    from reconciler.store.queue import EventRecord

    record = EventRecord(
        id=event_id,
        type=fields.get("type", "new_rule_violation"),
        organization=organization,
        name=fields.get("name", "no-public-s3"),
        description=fields.get("description", "bucket logs is public"),
        time="2026-11-29T21:22:42Z",
    )
    console.store.add_events([record], console.clock())
