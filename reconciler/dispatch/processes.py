"""`serve --processes N`: N dispatcher processes on one listening socket and one state.

One Python process runs its event loop on one core. Each dispatcher process has its
own intake, workers and store connection, and its own listening socket on the one
port (SO_REUSEPORT: the kernel spreads new connections evenly over the sockets;
with one shared socket, the first process to wake took nearly all of a client's
connections). They share the queue (claims are transactions, so a delivery goes to
one process at a time), so deliveries spread by themselves. The parent only
supervises:

- a child that dies is replaced; the replacement takes over its socket (connections
  made meanwhile wait in that socket's backlog) and takes back the dead one's leases
  at start, as a restarted `serve` does;
- SIGTERM or SIGINT to the parent is passed to every child, which stops claiming,
  finishes in-flight requests within the grace period and releases the rest;
- if the parent itself dies (even by SIGKILL), the kernel sends each child SIGTERM
  (Linux), so no dispatcher outlives its supervisor unnoticed;
- children that keep dying at once (an unreachable database, say) stop the whole
  service instead of restarting forever.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

from reconciler.errors import ServeError

log = logging.getLogger("reconciler.dispatch")

RESTART_WINDOW = 60.0  # seconds
RESTART_LIMIT = 5  # replacements within the window before giving up
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def listen(host: str, port: int, count: int, backlog: int = 2048) -> list[socket.socket]:
    """`count` listening sockets on one port, one per process (the first picks the
    port when `port` is 0). Called before any worker or store thread starts, so a
    port that cannot be had is one line (ServeError), never a half-started service.

    One socket is bound exclusively. Several share the port (SO_REUSEPORT), which
    would also let them join a port another process of this user already serves
    on: a plain bind is tried first, so a port in use is refused either way."""
    try:
        if count > 1:
            with _bind(host, port, backlog, reuse_port=False) as probe:
                port = probe.getsockname()[1]
        sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sockets.append(_bind(host, port, backlog, reuse_port=count > 1))
                port = sockets[0].getsockname()[1]
        except OSError:
            for sock in sockets:
                sock.close()
            raise
    except OSError as exc:
        raise ServeError(listen_error(host, port, exc)) from None
    return sockets


def listen_error(host: str, port: int, exc: OSError) -> str:
    """The one line `serve` reports when it cannot listen on host:port."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {address}: unknown host {host!r} (--host)"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use on {host}: stop what listens there or choose another --port"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {address}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {address}: {host} is not an address of this machine (--host)"
    return f"cannot listen on {address}: {exc.strerror or exc}"


def _bind(host: str, port: int, backlog: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Fork `count` children, child `slot` running `child(slot)` (its return value is
    the child's exit status), and keep them running until told to stop."""

    def __init__(
        self,
        count: int,
        child: Callable[[int], int],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.count = count
        self.child = child
        self.clock = clock
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False
        self._restarts: list[float] = []

    def run(self) -> int:
        """Returns the exit status for the parent: 0 after a clean stop."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        status = 0
        try:
            for slot in range(self.count):
                self._start(slot)
            while self.children:
                pid, code = os.wait()
                ended = self.children.pop(pid, None)
                if ended is None or self.stopping:
                    continue
                log.error("dispatcher process %d %s; starting another", pid, _describe(code))
                if self._crash_looping():
                    log.error(
                        "dispatcher processes keep exiting (%d restarts in %gs); stopping",
                        RESTART_LIMIT,
                        RESTART_WINDOW,
                    )
                    status = 1
                    self.stop()
                    continue
                self._start(ended)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def stop(self) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _crash_looping(self) -> bool:
        now = self.clock()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
        return len(self._restarts) > RESTART_LIMIT

    def _start(self, slot: int) -> None:
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        # SIGTERM and SIGINT wait while the process forks, in the child until it has
        # its own handling: delivered before, one ran the supervisor's handler in the
        # child, which then served on, and the supervisor waited for it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid:
            self.children[pid] = slot
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if self.stopping:  # stop() came meanwhile, perhaps before this child was listed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            return
        # The child: its own signal handling, its own event loop, never back here.
        status = 1
        try:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one already sent ends it
            _die_with(parent)
            status = self.child(slot)
        except BaseException:
            log.exception("dispatcher process %d failed", os.getpid())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)


def _die_with(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(code: int) -> str:
    if os.WIFSIGNALED(code):
        return f"was killed by {signal.Signals(os.WTERMSIG(code)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(code)}"
