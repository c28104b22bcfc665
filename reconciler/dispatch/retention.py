"""The dispatcher's retention task: prune the state every interval, on a thread and a
connection of its own, so that intake and the workers never wait for it beyond one
small batch; and measure the state's size for /metrics.

Every dispatcher sharing a state runs this task; the store lets one prune at a time
(the others find it at work and skip their turn), so a fleet prunes as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from reconciler.model import NAME_PATTERN
from reconciler.store.retention import (
    DEFAULT_BATCH,
    Cutoffs,
    RetentionRun,
    RetentionStore,
    StateSize,
)
from reconciler.tokens import parse_expiry

log = logging.getLogger("reconciler.dispatch")

DAY = 86_400.0
# 30 days: a month of delivery history covers the questions asked of it (what
# happened to last week's alert, replaying a failed day) at about 22 GB for 10
# deliveries a second (docs/operations.md); contracts that need longer set it per
# organization.
DEFAULT_RETENTION = 30 * DAY
DEFAULT_INTERVAL = 60.0  # seconds between runs (and between WAL checkpoints)
BATCH_PAUSE = 0.002  # seconds between batches: intake takes the write lock meanwhile


@dataclass(frozen=True)
class RetentionSettings:
    """How long finished records are kept (seconds; None: for ever), per
    organization where a contract says otherwise, and how often retention runs."""

    default: float | None = DEFAULT_RETENTION
    organizations: Mapping[str, float | None] = field(default_factory=dict)
    interval: float = DEFAULT_INTERVAL
    batch: int = DEFAULT_BATCH
    pause: float = BATCH_PAUSE

    @property
    def enabled(self) -> bool:
        return self.default is not None or any(
            age is not None for age in self.organizations.values()
        )

    def cutoffs(self, now: float) -> Cutoffs:
        """Kept for ever is a cutoff before any record."""
        return Cutoffs(
            _cutoff(self.default, now),
            {org: _cutoff(age, now) for org, age in self.organizations.items()},
        )


def _cutoff(age: float | None, now: float) -> float:
    return -1.0 if age is None else now - age


class Retention:
    """Runs retention every `settings.interval` of `clock` until stopped; keeps the
    state's size as last measured (`size`) for /metrics."""

    def __init__(
        self,
        open_store: Callable[[], RetentionStore],
        settings: RetentionSettings,
        owner: str,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.clock = clock
        self.size: StateSize | None = None
        self.last_run: RetentionRun | None = None
        self._open_store = open_store
        self._sleep = sleep
        self._store: RetentionStore | None = None
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconciler-retain")

    def run_once(self) -> RetentionRun | None:
        """One turn, on the calling thread: prune (unless another dispatcher is),
        remove the console's expired sessions, give the WAL back, measure."""
        if self._store is None:
            self._store = self._open_store()
        store = self._store
        run = None
        if self.settings.enabled:
            pause = self.settings.pause
            run = store.prune(
                self.settings.cutoffs(self.clock()),
                self.clock,
                self.owner,
                batch=self.settings.batch,
                between=lambda: self._between(pause),
            )
            if run is not None:
                self.last_run = run
                r = run.removed
                if r.deliveries or r.events or r.breakers or r.rate_slots:
                    log.info(
                        "retention removed %d deliveries, %d attempts, %d events in %.1fs",
                        r.deliveries,
                        r.attempts,
                        r.events,
                        run.finished_at - run.started_at,
                    )
        store.delete_expired_sessions(self.clock())
        store.checkpoint()
        self.size = store.state_size(detailed=False)
        return run

    def _between(self, pause: float) -> None:
        if pause > 0:
            self._sleep(pause)
        if self._stopping:
            raise _Stopped  # a run's batches stop with the dispatcher, not its turn

    def stop(self) -> None:
        """Stop after the batch under way (from any thread)."""
        self._stopping = True

    async def run_forever(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            try:
                await loop.run_in_executor(self._executor, self.run_once)
            except _Stopped:
                return
            except Exception:
                log.exception("retention failed; trying again at its next turn")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.interval)

    def close(self) -> None:
        """After run_forever has returned: join the thread, close the connection."""
        self._executor.shutdown(wait=True)
        if self._store is not None:
            self._store.close()
            self._store = None


class _Stopped(Exception):
    """The dispatcher is stopping: retention ends after the batch under way."""


def parse_age(text: str) -> float | None:
    """A retention age: `30d`, `12h`, `90m`, `2w`, `45s`, or `forever`. Raises
    ValueError naming what is accepted."""
    cleaned = text.strip().lower()
    if cleaned in ("forever", "never"):
        return None
    try:
        seconds = parse_expiry(cleaned)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ValueError(f"not a retention age: {text!r} (use e.g. 30d, 12h, 90m, 2w, or forever)")
    return seconds


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, float | None]:
    """`ORG=AGE` items (each may hold several, space-separated). Raises ValueError
    naming the item that is wrong."""
    pattern = re.compile(NAME_PATTERN)
    found: dict[str, float | None] = {}
    for item in (part for text in items for part in text.split()):
        organization, sep, age = item.partition("=")
        if not sep or not organization or not age:
            raise ValueError(f"{item!r}: use ORGANIZATION=AGE, e.g. acme=90d")
        if not pattern.match(organization):
            raise ValueError(f"{item!r}: {organization!r} is not an organization name")
        if organization in found:
            raise ValueError(f"{item!r}: {organization} is given twice")
        try:
            found[organization] = parse_age(age)
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
    return found
