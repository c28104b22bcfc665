"""Where the console's reads run: on a thread and a connection of its own when
`serve` gives it a way to open the state, so that a page that reads for a while
(the first view of a day's activity) never holds up intake or the workers, which
share the dispatcher's database thread; on that thread otherwise (tests, an app
made without one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from reconciler.dispatch.service import Dispatcher
from reconciler.store.backend import Backend

T = TypeVar("T")


class Reader:
    def __init__(
        self, dispatcher: Dispatcher, open_store: Callable[[], Backend] | None = None
    ) -> None:
        self.dispatcher = dispatcher
        self._open = open_store
        self._store: Backend | None = None
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconciler-console")
            if open_store is not None
            else None
        )

    async def __call__(self, call: Callable[..., T], *args: Any) -> T:
        """`call(store, *args)`, on the console's thread or the dispatcher's."""
        if self._executor is None:
            return await self.dispatcher.read(call, *args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, call, args)

    def _run(self, call: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._store is None:
            assert self._open is not None
            self._store = self._open()  # opened on the thread that uses it
        return call(self._store, *args)

    def close(self) -> None:
        """Join the console's thread and close its connection there."""
        if self._executor is None:
            return
        self._executor.submit(self._close_store).result()
        self._executor.shutdown(wait=True)

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
