"""Orphan objects: range objects no range row names are deleted once older than the grace,
those named or younger kept, and the sweep's log line counts them."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import structlog
from sqlalchemy import insert

from ess_broker.orphans import sweep_orphans
from ess_common.db.models import File, FileStatus, Range, Request, utcnow
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.store.base import ObjectStore, on_demand_key, range_key
from tests.helpers import eventually

GRACE = timedelta(seconds=3)
SCOPE = "mc16_13TeV"
LFN = "EVNT.orphans._000001.pool.root.1"


async def put(store: ObjectStore, tmp_path: Path, key: str) -> None:
    local = tmp_path / key.replace("/", "_")
    local.write_bytes(b"range bytes of " + key.encode())
    await store.put_file(key, local)


async def keys(store: ObjectStore) -> set[str]:
    found = set()
    for prefix in ("ranges", "on-demand"):
        found |= {item.key async for item in store.list_objects(prefix)}
    return found


async def test_orphans_older_than_the_grace_are_deleted_and_counted(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path
) -> None:
    named = range_key(SCOPE, LFN, 100, 7, 2, 1, 100)
    stale = range_key(SCOPE, LFN, 100, 7, 1, 1, 100)
    cut_off = range_key(SCOPE, LFN, 100, 8, 1, 101, 200)
    on_demand_named = on_demand_key(SCOPE, LFN, 1, 50)
    on_demand_orphan = on_demand_key(SCOPE, LFN, 51, 60)
    for key in (named, stale, cut_off, on_demand_named, on_demand_orphan):
        await put(store, tmp_path, key)
    async with unit_of_work(sessions) as session:
        await session.execute(
            insert(Range),
            [
                {
                    "scope": SCOPE,
                    "lfn": LFN,
                    "first_event": first,
                    "last_event": last,
                    "object_key": key,
                    "size": 10,
                    "adler32": "00000001",
                }
                for key, first, last in ((named, 1, 100), (on_demand_named, 1, 50))
            ],
        )
    written = utcnow()
    await eventually(
        lambda: utcnow() - written > GRACE + timedelta(seconds=1),
        timeout=GRACE.total_seconds() + 10,
        message="the first objects older than the grace",
    )
    young = range_key(SCOPE, LFN, 100, 9, 1, 1, 100)
    await put(store, tmp_path, young)

    with structlog.testing.capture_logs() as logs:
        swept = await sweep_orphans(sessions, store, GRACE)

    assert (swept.scanned, swept.deleted) == (6, 3)
    assert await keys(store) == {named, on_demand_named, young}
    (line,) = [entry for entry in logs if entry["event"] == "orphans.swept"]
    assert (line["scanned"], line["deleted"]) == (6, 3)


async def test_the_attempt_a_file_is_still_at_is_kept_past_the_grace(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path
) -> None:
    """Its result may be waiting out a database outage: only once the file has moved on are
    the attempt's objects orphans."""
    async with unit_of_work(sessions) as session:
        request = Request(
            id=str(uuid.uuid4()),
            idempotency_key=f"orphans-{uuid.uuid4()}",
            dataset=f"{SCOPE}:orphans",
            events_per_range=100,
            spec_digest="0" * 64,
        )
        session.add(request)
        await session.flush()
        file = File(
            request_id=request.id,
            scope=SCOPE,
            lfn=LFN,
            n_events=100,
            size=1,
            adler32="00000001",
            sources=[],
            status=FileStatus.CACHED,
            edge="edge-a",
            attempt=1,
        )
        session.add(file)
        await session.flush()
        file_id = file.id
    waiting = range_key(SCOPE, LFN, 100, file_id, 1, 1, 100)
    await put(store, tmp_path, waiting)
    written = utcnow()
    await eventually(
        lambda: utcnow() - written > GRACE + timedelta(seconds=1),
        timeout=GRACE.total_seconds() + 10,
        message="the object older than the grace",
    )

    assert (await sweep_orphans(sessions, store, GRACE)).deleted == 0
    assert waiting in await keys(store)

    async with unit_of_work(sessions) as session:
        moved = await session.get(File, file_id)
        assert moved is not None
        moved.attempt, moved.status = 2, FileStatus.ASSIGNED
    assert (await sweep_orphans(sessions, store, GRACE)).deleted == 1
    assert waiting not in await keys(store)
