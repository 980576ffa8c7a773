"""Orphan objects: range files in the object store that no range row names (attempts whose
results never counted: stale after a move, cut off by a failure, uploaded before a failed
split) are deleted once older than `orphan_grace_s`, not kept until their request expires.

The grace is the time a split may take from its first upload to its recorded result: an
object younger than it may be one whose row is about to be written. An object of the attempt a
file is still at (assigned or cached) is kept whatever its age: its result may be waiting out
an outage of the database, and is recorded when it ends. Keys are listed under the
prefixes ESS writes range files to (`ranges/`, `on-demand/`), checked against the rows a page
at a time, and each sweep says in its log line how many it looked at and deleted.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import select

from ess_common.db.models import File, FileStatus, Range, utcnow
from ess_common.db.session import SessionMaker
from ess_common.store.base import ObjectStore, StoredObject

log = structlog.get_logger("ess.orphans")

#: Where range files are written (`range_key`, `on_demand_key`).
PREFIXES = ("ranges", "on-demand")
PAGE = 1000
#: The file and attempt in a range file's key (`range_key`).
_ATTEMPT = re.compile(r"/f(\d+)\.a(\d+)/[^/]+$")
_IN_FLIGHT = (FileStatus.ASSIGNED, FileStatus.CACHED)


@dataclass(frozen=True)
class OrphanSweep:
    scanned: int = 0
    deleted: int = 0


async def _named(sessions: SessionMaker, keys: list[str]) -> set[str]:
    async with sessions() as session:
        return set(
            await session.scalars(select(Range.object_key).where(Range.object_key.in_(keys)))
        )


async def _in_flight(sessions: SessionMaker, keys: list[str]) -> set[tuple[int, int]]:
    """The (file, attempt) pairs among `keys` that files are still at, their results to come."""
    attempts = {found for found in map(_attempt_of, keys) if found is not None}
    if not attempts:
        return set()
    async with sessions() as session:
        rows = await session.execute(
            select(File.id, File.attempt).where(
                File.id.in_({file_id for file_id, _ in attempts}), File.status.in_(_IN_FLIGHT)
            )
        )
        return {(file_id, attempt) for file_id, attempt in rows} & attempts


def _attempt_of(key: str) -> tuple[int, int] | None:
    found = _ATTEMPT.search(key)
    return None if found is None else (int(found[1]), int(found[2]))


async def _delete_unnamed(
    sessions: SessionMaker, store: ObjectStore, page: list[StoredObject]
) -> int:
    named = await _named(sessions, [item.key for item in page])
    unnamed = [item for item in page if item.key not in named]
    current = await _in_flight(sessions, [item.key for item in unnamed])
    deleted = 0
    for item in unnamed:
        if _attempt_of(item.key) not in current:
            await store.delete(item.key)
            log.info("orphan.deleted", key=item.key, size=item.size)
            deleted += 1
    return deleted


async def sweep_orphans(
    sessions: SessionMaker, store: ObjectStore, grace: timedelta
) -> OrphanSweep:
    """Delete the range objects older than `grace` that no range row names."""
    cutoff = utcnow() - grace
    scanned = deleted = 0
    for prefix in PREFIXES:
        page: list[StoredObject] = []
        async for item in store.list_objects(prefix):
            if not item.key.startswith(f"{prefix}/"):
                continue
            scanned += 1
            if item.modified < cutoff:
                page.append(item)
            if len(page) >= PAGE:
                deleted += await _delete_unnamed(sessions, store, page)
                page = []
        if page:
            deleted += await _delete_unnamed(sessions, store, page)
    log.info("orphans.swept", scanned=scanned, deleted=deleted, grace_s=grace.total_seconds())
    return OrphanSweep(scanned, deleted)


class OrphanSweeper:
    """The broker's part: a sweep at most every `interval`, on the store it is given."""

    def __init__(
        self,
        sessions: SessionMaker,
        store: Callable[[], Awaitable[ObjectStore]],
        grace: timedelta,
        interval: timedelta,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.grace = grace
        self.interval = interval
        # The first sweep one interval after the start: starting costs no listing of the store.
        self._next_at = utcnow() + interval

    async def maybe_sweep(self) -> OrphanSweep | None:
        now = utcnow()
        if now < self._next_at:
            return None
        self._next_at = now + self.interval
        return await sweep_orphans(self.sessions, await self.store(), self.grace)
