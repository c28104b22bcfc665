"""Readiness: whether this dispatcher can do its work now, for /readyz.

/healthz says the process is alive. /readyz says more: the state answered the
dispatcher's own database work recently (the last store call on the database
thread succeeded within STALE seconds, and no call failed since), and the
delivery loop turned within STALE seconds. An idle dispatcher makes no store
calls, so /readyz then asks the state a cheap question of its own (a probe), at
most one at a time, and waits for it at most PROBE_WAIT seconds: a database
thread that is stuck shows as a probe that does not come back, and /readyz says
so at once (so a stalled link makes a dispatcher unready within PROBE_AFTER plus
PROBE_WAIT seconds, not STALE).

Ages are read from the dispatcher's injected clock; the probe's wait is real time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.dispatch.worker import Database, Worker

STALE = 15.0  # seconds without a successful store call, or a turn of the workers
PROBE_AFTER = 5.0  # an idle state is probed once its last answer is this old
PROBE_WAIT = 2.0  # how long a request for /readyz waits for the probe


class Readiness:
    def __init__(self, db: Database, worker: Worker, clock: Callable[[], float]) -> None:
        self.db = db
        self.worker = worker
        self.clock = clock
        self.stale = STALE
        self.probe_after = PROBE_AFTER
        self.probe_wait = PROBE_WAIT
        self._probe: asyncio.Task[object] | None = None

    async def reasons(self) -> list[str]:
        """Why this dispatcher is not ready; empty when it is."""
        stuck = False  # a probe was asked for, and has not come back within probe_wait
        if self._wants_probe():
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(self.db.run(self.db.store.state))
                # Its failure is recorded by the database thread; nothing to log here.
                self._probe.add_done_callback(lambda task: task.cancelled() or task.exception())
            with contextlib.suppress(Exception):
                # Shielded: a probe that outlasts this request stays the one probe out.
                await asyncio.wait_for(asyncio.shield(self._probe), self.probe_wait)
            stuck = not self._probe.done()
        now = self.clock()
        found = []
        answered, failed = self.db.answered, self.db.failed
        if self.db.failing and failed is not None:
            found.append(f"the state's last call failed {_ago(now - failed)}")
        elif answered is None:
            found.append("the state has not answered yet")
        elif stuck:
            found.append(
                f"the state has not answered a probe within {self.probe_wait:g}s "
                f"(last answer {_ago(now - answered)})"
            )
        elif now - answered > self.stale:
            found.append(f"the state has not answered for {_ago(now - answered, '')}")
        turned = self.worker.turned
        if turned is None:
            found.append("the delivery workers have not started")
        elif now - turned > self.stale:
            found.append(f"the delivery workers have not progressed for {_ago(now - turned, '')}")
        return found

    def _wants_probe(self) -> bool:
        answered = self.db.answered
        if answered is None or self.db.failing:
            return True
        return self.clock() - answered >= self.probe_after


def _ago(seconds: float, suffix: str = " ago") -> str:
    return f"{max(0.0, seconds):.0f}s{suffix}"
