"""Range retention: range files older than `HeadSettings.range_retention_s` are deleted, and
ranges split on demand (no request's) older than `on_demand_retention_s`.

Run from the broker's sweep. Each batch is one transaction:
its rows are locked (`SKIP LOCKED`, so two brokers share the work), their objects deleted from
the store, then the rows; a store failure rolls the batch back and the next sweep tries again,
so a row never outlives its object by more than a failed batch and no object is left without
its row.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy import delete, select

from ess_common.db.models import Range, utcnow
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.settings import HeadSettings
from ess_common.store.base import ObjectStore
from ess_common.store.factory import make_store

log = structlog.get_logger("ess.retention")


async def purge_old_ranges(
    sessions: SessionMaker,
    store: ObjectStore,
    retention_s: float,
    *,
    batch: int = 500,
    on_demand_only: bool = False,
) -> int:
    """Delete the ranges older than the retention (only those split on demand, when asked),
    objects first; returns how many."""
    cutoff = utcnow() - timedelta(seconds=retention_s)
    old = Range.created_at < cutoff
    if on_demand_only:
        old = old & Range.file_id.is_(None)
    purged = 0
    while True:
        async with unit_of_work(sessions) as session:
            rows = (
                await session.execute(
                    select(Range.id, Range.object_key)
                    .where(old)
                    # Oldest first, along `ix_ranges_created_at`: a batch reads the rows it
                    # deletes, and a sweep with nothing expired one index entry.
                    .order_by(Range.created_at)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for _, key in rows:
                await store.delete(key)
            if rows:
                await session.execute(delete(Range).where(Range.id.in_([i for i, _ in rows])))
        purged += len(rows)
        if len(rows) < batch:
            break
    if purged:
        log.info(
            "ranges.purged", count=purged, retention_s=retention_s, on_demand_only=on_demand_only
        )
    return purged


class RangeRetention:
    """The broker's part: a store of its own, opened on first use, only when something is to
    be deleted."""

    def __init__(
        self, settings: HeadSettings, sessions: SessionMaker, store: ObjectStore | None = None
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self._given = store
        self._own: ObjectStore | None = None

    async def store(self) -> ObjectStore:
        """The store the broker deletes range objects from, started on first use."""
        return await self._store()

    async def _store(self) -> ObjectStore:
        if self._given is not None:
            return self._given
        if self._own is None:
            store = make_store(self.settings)
            await store.start()
            self._own = store
        return self._own

    async def sweep(self) -> int:
        purged = 0
        retention = self.settings.range_retention_s
        if retention is not None:
            purged += await purge_old_ranges(
                self.sessions,
                await self._store(),
                retention,
                batch=self.settings.range_retention_batch,
            )
        on_demand = self.settings.on_demand_retention_s
        if on_demand is not None and (retention is None or on_demand < retention):
            purged += await purge_old_ranges(
                self.sessions,
                await self._store(),
                on_demand,
                batch=self.settings.range_retention_batch,
                on_demand_only=True,
            )
        return purged

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None
