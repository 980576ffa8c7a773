"""The splitter's uploads: a file's range files go up concurrently, never more at once than
`upload_concurrency` for the whole process, each range listed once in order; the next file is
split while the previous one uploads, one split per worker slot; a failed upload fails the file
with nothing left running."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ess_common.errors import RetryableError
from ess_common.events import FileCached
from ess_common.store.base import ObjectStore, range_key
from ess_splitter import service
from ess_splitter.service import Splitter
from ess_splitter.strategy import split_file
from ess_splitter.uploads import Upload, Uploader
from tests.conftest import S3Server
from tests.splitter.test_splitter_service import (
    EVENTS_PER_RANGE,
    HZZ_EVENTS,
    IDLE_BUS,
    SCOPE,
    cache,
    edge_settings,
    file_cached,
)


def hzz_work(settings: Any, file_id: int) -> FileCached:
    """A cached copy of uproot-HZZ.root (five ranges of 500) as the file `file_id`."""
    lfn = f"NTUP.{file_id:06d}.uproot-HZZ.root"
    cache(settings, "uproot-HZZ.root", lfn)
    event = file_cached(settings, lfn, HZZ_EVENTS)
    return event.model_copy(update={"work": event.work.model_copy(update={"file_id": file_id})})


async def test_ranges_upload_concurrently_within_the_bound(
    tmp_path: Path, store: ObjectStore
) -> None:
    settings = edge_settings(tmp_path, upload_concurrency=3)
    splitter = Splitter(settings, IDLE_BUS, store)

    done = await splitter.handle_file_cached(hzz_work(settings, 21))

    # Five range files, three at a time: never one after another, never more than allowed.
    assert splitter.uploader.most_in_flight == 3
    assert splitter.uploader.in_flight == 0
    spans = [(r.first_event, r.last_event) for r in done.ranges]
    assert spans == [(1, 500), (501, 1000), (1001, 1500), (1501, 2000), (2001, 2421)]
    assert len({r.key for r in done.ranges}) == len(done.ranges)
    for r in done.ranges:
        assert r.key == range_key(
            SCOPE, done.work.file.lfn, EVENTS_PER_RANGE, 21, done.work.attempt, *spans.pop(0)
        )
        assert await store.size(r.key) == r.size


async def test_next_file_splits_while_the_previous_uploads(
    tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = edge_settings(tmp_path)
    splitter = Splitter(settings, IDLE_BUS, store)
    splits: list[tuple[float, float]] = []

    async def timed(source: Path, *args: Any) -> Any:
        began = time.perf_counter()
        try:
            return await split_file(source, *args)
        finally:
            splits.append((began, time.perf_counter()))

    monkeypatch.setattr(service, "split_file", timed)
    files = [hzz_work(settings, 31 + n) for n in range(splitter.workers + 1)]

    async def handled(event: FileCached) -> float:
        await splitter.handle_file_cached(event)
        return time.perf_counter()

    finished = await asyncio.gather(*(handled(e) for e in files))

    splits.sort()
    # At most `workers` splits at once: here the first slot's next split starts only when the
    # one before it has ended...
    running = [splits[n + splitter.workers][0] >= splits[n][1] for n in range(len(files) - 1)]
    assert all(running), splits
    # ... but before that file's uploads are done: they overlap the next split.
    assert splits[splitter.workers][0] < min(finished)


async def test_failed_upload_fails_the_file_and_stops_the_rest(
    tmp_path: Path, s3_server: S3Server
) -> None:
    settings = await s3_server.check()
    # A bucket that does not exist: every put fails as the real server answers it.
    missing = settings.store(f"ess-t-{uuid.uuid4().hex[:12]}", create_bucket=False)
    await missing.start()
    try:
        uploader = Uploader(missing, 2)
        source = tmp_path / "range.root"
        source.write_bytes(b"x" * 1000)
        uploads = [Upload(f"ranges/f{n}.root", source) for n in range(6)]
        with pytest.raises(RetryableError, match="upload of ranges/f"):
            await uploader.put_all(uploads)
        assert uploader.in_flight == 0
        assert uploader.most_in_flight <= 2
    finally:
        await missing.close()


def test_upload_concurrency_is_a_setting(tmp_path: Path) -> None:
    assert edge_settings(tmp_path).upload_concurrency == 16
    assert edge_settings(tmp_path, upload_concurrency=64).upload_concurrency == 64
    with pytest.raises(ValueError, match="upload_concurrency"):
        edge_settings(tmp_path, upload_concurrency=0)
