"""`serve` in one process: the HTTP server (uvicorn, with the intake's own protocol)
and the dispatcher's workers on one event loop, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from reconciler.dispatch.app import create_app
from reconciler.dispatch.logs import lines_per_turn
from reconciler.dispatch.retention import Retention
from reconciler.dispatch.service import DEFAULT_GRACE, INTAKE_DEADLINE, Dispatcher, make_sender
from reconciler.dispatch.ssrf import NetworkPolicy
from reconciler.dispatch.worker import WorkerSettings
from reconciler.errors import ServeError
from reconciler.store import Backend

log = logging.getLogger(__name__)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: the same asyncio interface, with the loop, its
    sockets and its timers in C, which cuts the CPU of every request served and
    sent. None (asyncio's own loop) elsewhere."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# Objects allocated (net) between collections of the youngest generation; Python's
# default is 700. Each older generation is collected every 10 of the one before.
GC_YOUNG_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Tune the cyclic garbage collector for a long-running server, once its code and
    app are loaded: what exists now (modules, the app, pydantic's and FastAPI's
    schemas) moves out of the collector's sight for good (gc.freeze), and the young
    generation is collected every 20,000 allocations rather than every 700. Every
    request allocates many short-lived objects; with the defaults the collector
    walked the young generation every few deliveries and, now and then, the
    whole app. Memory stays bounded: reference counting frees nearly
    everything at once, and cycles are still collected, less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


# The uvicorn releases dispatch/intake_protocol.py is written against and tested on
# (it builds on uvicorn's private request-cycle attributes): [first, last) as
# (major, minor). Outside them, serve runs uvicorn's own protocol and says so.
TUNED_UVICORN = ((0, 30), (0, 56))


def tuned_protocol_fits(version: str) -> bool:
    """Whether serve's own HTTP protocol may run on uvicorn `version`."""
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    first, end = TUNED_UVICORN
    return first <= release < end


@contextlib.contextmanager
def _no_signal_capture() -> Iterator[None]:
    yield


async def serve(
    store: Backend,
    sock: socket.socket,
    *,
    settings: WorkerSettings,
    policy: NetworkPolicy,
    grace: float = DEFAULT_GRACE,
    ready: Callable[[int], None] | None = None,
    stock: bool = False,
    retention: Retention | None = None,
    intake_deadline: float = INTAKE_DEADLINE,
    console: bool = True,
    console_store: Callable[[], Backend] | None = None,
) -> None:
    """Serve on `sock`, a listening socket bound by the caller, until SIGTERM or
    SIGINT, then shut down gracefully.

    With `console` (the default), the web console is served under /ui/, reading
    through a connection of its own opened by `console_store`.

    With `stock`, uvicorn's own httptools protocol serves every request (see
    `tuned_protocol_fits` for the tuned one, intake_protocol.py).

    The workers start once the server accepts on `sock`, and whatever ends the
    serving (a signal, a failed start) stops them in order: claiming stops,
    in-flight requests finish within `grace`, the rest is released, and the
    database thread is joined. The caller closes `store` only after this returns:
    a connection closed under a thread still using it crashes the process."""
    sender = make_sender(settings.concurrency, policy)
    dispatcher = Dispatcher(
        store,
        sender,
        settings=settings,
        policy=policy,
        retention=retention,
        intake_deadline=intake_deadline,
    )
    app = create_app(dispatcher, console=console, console_store=console_store)
    assert app.intake is not None
    http: Any = "httptools"  # uvicorn's own protocol
    if stock:
        log.info("serving with uvicorn's own HTTP protocol (--stock)")
    elif tuned_protocol_fits(uvicorn.__version__):
        from reconciler.dispatch.intake_protocol import protocol_for

        http = protocol_for(app.intake)  # valid events answered on the connection
    else:
        log.warning(
            "uvicorn %s is outside the releases serve's own HTTP protocol is tested on "
            "(%d.%d to before %d.%d): serving with uvicorn's protocol",
            uvicorn.__version__,
            *TUNED_UVICORN[0],
            *TUNED_UVICORN[1],
        )
    # No proxy-header rewriting: nothing reads the client's address, and the
    # middleware would run on every event.
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        http=http,
    )
    server = uvicorn.Server(config)
    settle_garbage_collector()
    server.capture_signals = _no_signal_capture  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        dispatcher.stop_claiming()
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    with lines_per_turn(loop):
        try:
            serving = asyncio.create_task(_serve_http(server, sock))
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            if server.started:
                dispatcher.start()
                if ready is not None:
                    ready(sock.getsockname()[1])
            await serving
        finally:
            try:
                await dispatcher.stop(grace)
            finally:
                await asyncio.get_running_loop().run_in_executor(None, app.close)


async def _serve_http(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit:
        # uvicorn ends the process when its start fails. Out of a task, that would
        # leave the event loop at once, with the workers still holding the store.
        raise ServeError("the HTTP server could not start; see the log above") from None
