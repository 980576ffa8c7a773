"""Range retention on SQLite and PostgreSQL, with the local and the real S3 store: range files
older than the retention go from the store and the bookkeeping together, in batches; newer ones
stay; a store failure leaves the rows for the next sweep."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from ess_broker.retention import RangeRetention, purge_old_ranges
from ess_common.db.models import Range, utcnow
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import RetryableError
from ess_common.settings import HeadSettings
from ess_common.store.base import ObjectStore, on_demand_key
from tests.head_api.support import SCOPE, Prepared, prepare

RETENTION_S = 3600.0


async def prepared(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path, key: str, *, age_s: float = 0
) -> Prepared:
    done = await prepare(
        sessions,
        store,
        tmp_path / key,
        key=key,
        lfn=f"EVNT.{key}.pool.root.1",
        n_events=50,
        events_per_range=10,
    )
    if age_s:
        async with unit_of_work(sessions) as session:
            await session.execute(
                update(Range)
                .where(Range.file_id == done.file_id)
                .values(created_at=utcnow() - timedelta(seconds=age_s))
            )
    return done


async def keys_recorded(sessions: SessionMaker) -> set[str]:
    async with sessions() as session:
        return set((await session.scalars(select(Range.object_key))).all())


async def test_ranges_older_than_the_retention_go_with_their_objects(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path
) -> None:
    old = await prepared(sessions, store, tmp_path, "old", age_s=2 * RETENTION_S)
    new = await prepared(sessions, store, tmp_path, "new")

    assert await purge_old_ranges(sessions, store, RETENTION_S, batch=2) == 5

    assert await keys_recorded(sessions) == {r.key for r in new.ranges}
    for r in old.ranges:
        assert await store.size(r.key) is None
    for r in new.ranges:
        assert await store.size(r.key) == r.size
    assert await purge_old_ranges(sessions, store, RETENTION_S) == 0


class FailingStore:
    """The store, failing on the second delete."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.deletes = 0

    async def delete(self, key: str) -> None:
        self.deletes += 1
        if self.deletes == 2:
            raise RetryableError("store unreachable")
        await self.store.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_a_failed_batch_leaves_its_rows_for_the_next_sweep(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path
) -> None:
    old = await prepared(sessions, store, tmp_path, "old", age_s=2 * RETENTION_S)

    with pytest.raises(RetryableError):
        await purge_old_ranges(sessions, FailingStore(store), RETENTION_S)
    assert await keys_recorded(sessions) == {r.key for r in old.ranges}

    assert await purge_old_ranges(sessions, store, RETENTION_S) == 5
    assert await keys_recorded(sessions) == set()


async def test_the_brokers_retention_runs_only_when_the_operator_sets_one(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path
) -> None:
    await prepared(sessions, store, tmp_path, "old", age_s=2 * RETENTION_S)
    kept = RangeRetention(HeadSettings(on_demand_retention_s=None), sessions, store)
    assert await kept.sweep() == 0
    purged = RangeRetention(HeadSettings(range_retention_s=RETENTION_S), sessions, store)
    assert await purged.sweep() == 5
    await purged.close()
    assert await keys_recorded(sessions) == set()


async def test_ranges_split_on_demand_go_after_their_own_retention(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path
) -> None:
    prepared_old = await prepared(sessions, store, tmp_path, "old", age_s=2 * RETENTION_S)
    lfn = "EVNT.old.pool.root.1"
    for first, age_s in ((1, 2 * RETENTION_S), (11, 0.0)):
        key = on_demand_key(SCOPE, lfn, first, first + 4)
        local = tmp_path / f"od-{first}.root"
        local.write_bytes(b"x" * 7)
        await store.put_file(key, local)
        async with unit_of_work(sessions) as session:
            session.add(
                Range(
                    file_id=None,
                    request_id=None,
                    edge="edge-a",
                    scope=SCOPE,
                    lfn=lfn,
                    first_event=first,
                    last_event=first + 4,
                    object_key=key,
                    size=7,
                    adler32="00000001",
                    created_at=utcnow() - timedelta(seconds=age_s),
                )
            )
    retention = RangeRetention(HeadSettings(on_demand_retention_s=RETENTION_S), sessions, store)
    assert await retention.sweep() == 1
    assert await store.size(on_demand_key(SCOPE, lfn, 1, 5)) is None
    assert await keys_recorded(sessions) == {r.key for r in prepared_old.ranges} | {
        on_demand_key(SCOPE, lfn, 11, 15)
    }
