"""One fetch for many askers: concurrent requests for the same missing thing wait for the
single fetch already under way instead of starting their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}
        #: Fetches started, for the edge's statistics and the tests.
        self.started = 0

    async def do(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self.started += 1
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # Shielded: an asker that goes away (a pilot hanging up) does not cancel the fetch the
        # others wait for.
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        # Retrieved here so that a failure nobody waited for any more is not reported as lost.
        with contextlib.suppress(asyncio.CancelledError):
            task.exception()
