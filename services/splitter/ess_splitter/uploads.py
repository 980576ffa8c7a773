"""Concurrent uploads of one splitter's range files.

Consumes (key, path) pairs, a file's range files at a time; puts them into the object store
with at most ``upload_concurrency`` uploads in flight for the whole process, whichever files
they belong to, so that a store round trip per object is paid that many at a time rather than
one after another. Produces nothing but the objects: a file's uploads either all succeed, or
the first failure is raised once the others have stopped (what was put stays at its
deterministic key, written again by the next attempt and deleted with the request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ess_common.store.base import ObjectStore


class Upload(NamedTuple):
    key: str
    path: Path


class Uploader:
    def __init__(self, store: ObjectStore, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"upload concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        #: Uploads in flight now, and the most there ever were (for tests and metrics).
        self.in_flight = 0
        self.most_in_flight = 0

    async def put_all(self, uploads: Sequence[Upload]) -> None:
        """Put every upload; return when all are stored, or raise the first failure."""
        tasks = [asyncio.create_task(self._put(upload)) for upload in uploads]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _put(self, upload: Upload) -> None:
        async with self._slots:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await self.store.put_file(upload.key, upload.path)
            finally:
                self.in_flight -= 1
