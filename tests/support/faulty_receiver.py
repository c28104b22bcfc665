"""A receiver that misbehaves on purpose, for the reliability suite.

`FaultyReceiver` is a `Receiver` (tests/support/receiver.py): a real HTTP/1.1 server on
127.0.0.1 that records every request on arrival (method, target, headers, body,
arrival time) and shuts down cleanly. Instead of scripts it answers each request
with a `Fault`:

- ok: 200 at once; slow: 200 after a delay of SLOW seconds (50 to 400 ms);
- hang: never answers; the request is held until the client hangs up (or the
  receiver closes, or HOLD_CAP passes);
- reset: closes the connection with a RST, without an answer;
- 500-burst / 429-storm: 500, or 429 with `Retry-After`, for this request and the
  next few to the same path;
- reject: 400, which no retry changes;
- huge: 200 with a body of HUGE_BYTES (declared in Content-Length);
- binary: 200 with a body that is not UTF-8 (every byte value, NUL included);
- endless: 200, chunked, a body that never ends: chunks are written until the
  client hangs up, or STREAM_CAP bytes, so the test process never runs away.

Which fault a request gets comes from a weighted mix drawn by `random.Random(seed)`,
one draw per request in arrival order (bursts and slow delays included): the
sequence of faults is a function of the seed. A path can be given one fault for
every request (`always`), and `behave()` makes every later answer a plain 200.

What was answered is kept per request (`answers()`): the fault, the status sent,
the body bytes written, and whether the client hung up before the answer ended.
"""

from __future__ import annotations

import dataclasses
import random
import select
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tests.support.receiver import HOLD_CAP, Receiver, Recorded, _Handler

HUGE_BYTES = 64 * 1024 * 1024  # more than loopback's socket buffers can take unread
STREAM_CAP = 256 * 1024 * 1024  # an endless answer stops here if the client never hangs up
SLOW = (0.05, 0.4)  # seconds a slow answer waits
BURST = (2, 5)  # how many requests in a row a 500 burst or a 429 storm lasts
RETRY_AFTER = "1"  # seconds, as a 429 storm asks
BINARY_BODY = bytes(range(256)) * 20  # NUL, bare continuation bytes, 0xfe/0xff: not UTF-8
_BLOCK = b"0123456789abcdef" * 4096  # 64 KiB, written again and again
_CHUNK = b"%x\r\n%s\r\n" % (len(_BLOCK), _BLOCK)


class Fault(StrEnum):
    OK = "ok"
    SLOW = "slow"
    HANG = "hang"
    RESET = "reset"
    ERROR_BURST = "500-burst"
    STORM = "429-storm"
    REJECT = "reject"
    HUGE = "huge"
    BINARY = "binary"
    ENDLESS = "endless"


BURSTS = (Fault.ERROR_BURST, Fault.STORM)
STREAMED = (Fault.HUGE, Fault.ENDLESS)


@dataclass
class Answer:
    """What the receiver did with one request (`number` as in `Recorded`)."""

    number: int
    fault: Fault
    delay: float = 0.0  # a slow answer's wait
    status: int | None = None  # the status sent; None: none (hang, reset)
    body_bytes: int = 0  # body bytes written
    hung_up: bool = False  # the client went away before the answer ended
    capped: bool = False  # an endless answer reached STREAM_CAP: the client kept reading
    finished: bool = False  # the receiver is done with it


class FaultyReceiver(Receiver):
    """A Receiver that answers by faults; see the module's docstring."""

    def __init__(self, seed: int, mix: Mapping[Fault, float] | None = None) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        mix = dict(mix or {Fault.OK: 1.0})
        self._faults = list(mix)
        self._weights = [mix[fault] for fault in self._faults]
        self._fixed: dict[str, Fault] = {}
        self._bursts: dict[str, tuple[Fault, int]] = {}  # path -> (fault, requests left)
        self._behaving = False
        self._answers: list[Answer] = []
        super().__init__()

    # -- setting it up -------------------------------------------------------------

    def always(self, path: str, fault: Fault) -> None:
        """Answer every request to `path` with `fault`, whatever the mix."""
        with self._lock:
            self._fixed[path] = fault

    def behave(self) -> None:
        """From now on every request gets a plain 200 at once."""
        with self._lock:
            self._behaving = True
            self._fixed.clear()
            self._bursts.clear()

    # -- what it did ------------------------------------------------------------------

    def answers(self) -> list[Answer]:
        """A copy of every answer so far, in arrival order (index = request number)."""
        with self._lock:
            return [dataclasses.replace(answer) for answer in self._answers]

    def served(self) -> Counter[Fault]:
        """How many requests got each fault."""
        with self._lock:
            return Counter(answer.fault for answer in self._answers)

    def open_count(self, fault: Fault) -> int:
        """Requests with this fault that the receiver is still answering (or holding)."""
        with self._lock:
            return sum(1 for a in self._answers if a.fault is fault and not a.finished)

    # -- answering (on the connection's thread) ---------------------------------------

    def _choose(self, record: Recorded) -> Answer:
        """The fault for one request; runs under the lock, in arrival order."""
        path = record.path
        burst = self._bursts.get(path)
        if self._behaving:
            fault = Fault.OK
        elif path in self._fixed:
            fault = self._fixed[path]
        elif burst is not None and burst[1] > 0:
            fault = burst[0]
            self._bursts[path] = (fault, burst[1] - 1)
        else:
            fault = self._rng.choices(self._faults, self._weights)[0]
            if fault in BURSTS:
                self._bursts[path] = (fault, self._rng.randint(*BURST) - 1)
        delay = self._rng.uniform(*SLOW) if fault is Fault.SLOW else 0.0
        answer = Answer(record.number, fault, delay)
        self._answers.append(answer)
        return answer

    def _respond(self, handler: _Handler) -> None:
        _, answer = self._record(handler, self._choose)
        try:
            self._act(handler, answer)
        except (ConnectionError, TimeoutError):  # the client hung up (or stalled) mid-answer
            self._note(answer, hung_up=True)
            handler.close_connection = True
        finally:
            self._note(answer, finished=True)

    def _act(self, handler: _Handler, answer: Answer) -> None:
        fault = answer.fault
        if fault is Fault.HANG:
            self._note(answer, hung_up=self._until_hung_up(handler.connection))
            handler.close_connection = True
        elif fault is Fault.RESET:
            handler.reset()
        elif fault in STREAMED:
            self._stream(handler, answer)
        else:
            if fault is Fault.SLOW:
                self._closing.wait(answer.delay)
            status, headers, body = _simple_answer(fault)
            self._note(answer, status=status)
            handler.answer(status, headers, body)
            self._note(answer, body_bytes=len(body))
            self._done()

    def _stream(self, handler: _Handler, answer: Answer) -> None:
        """A huge body (declared) or an endless one (chunked), written block by block
        until it ends, the client hangs up (an error out of a write) or the cap."""
        huge = answer.fault is Fault.HUGE
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        if huge:
            handler.send_header("Content-Length", str(HUGE_BYTES))
        else:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        self._note(answer, status=200)
        limit = HUGE_BYTES if huge else STREAM_CAP
        block = _BLOCK if huge else _CHUNK
        deadline = time.monotonic() + HOLD_CAP
        written = 0
        while written < limit and not self._closing.is_set() and time.monotonic() < deadline:
            handler.wfile.write(block)
            written += len(_BLOCK)
            self._note(answer, body_bytes=written)
        if huge and written >= limit:
            self._done()
        elif not huge:  # the cap, the receiver's close or HOLD_CAP: end the stream properly
            self._note(answer, capped=written >= limit)
            handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True

    def _until_hung_up(self, conn: socket.socket) -> bool:
        """Hold a request: True once the client closes the connection; False when the
        receiver closes or HOLD_CAP passes first."""
        deadline = time.monotonic() + HOLD_CAP
        while not self._closing.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([conn], [], [], 0.05)
            if not readable:
                continue
            try:
                if not conn.recv(1, socket.MSG_PEEK):
                    return not self._closing.is_set()
            except ConnectionError:
                return True
            self._closing.wait(0.05)  # bytes of another request: not a hang-up
        return False

    def _note(self, answer: Answer, **changes: Any) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(answer, name, value)
            self._changed.notify_all()


def _simple_answer(fault: Fault) -> tuple[int, dict[str, str], bytes]:
    if fault is Fault.ERROR_BURST:
        return 500, {}, b"internal error"
    if fault is Fault.STORM:
        return 429, {"Retry-After": RETRY_AFTER}, b"slow down"
    if fault is Fault.REJECT:
        return 400, {}, b"bad request"
    if fault is Fault.BINARY:
        return 200, {"Content-Type": "application/octet-stream"}, BINARY_BODY
    return 200, {}, b"ok"
