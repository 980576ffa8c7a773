"""An edge's cache space: reservations shared across processes never exceed the quota, pins
keep inputs and hold room for their split, the evictor removes least recently used unpinned
inputs and pulled-through range files between the watermarks or when a download wants room,
and a download waits for it or is refused; through the real precacher and splitter."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import skhep_testdata

from ess_common.cache_space import (
    SPLIT_OVERHEAD_PER_RANGE,
    CacheSpace,
    Pin,
    SpaceRefused,
    reserve_waiting,
    split_headroom,
    unpin,
)
from ess_common.checksums import adler32_of_file
from ess_common.edge_work import cache_path
from ess_common.events import DatasetFile, FileAssigned, FileCached, FileWork
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore
from ess_edge.cache import Evictor
from ess_edge.heartbeat import make_heartbeat
from ess_precacher.service import Precacher
from ess_splitter.service import Splitter
from tests.helpers import eventually

KB = 1000
SCOPE = "data18_13TeV"
IDLE_BUS = MemoryBus("unused")


def write(path: Path, size: int, *, age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def pin(file_id: int, lfn: str, headroom: int = 0) -> Pin:
    return Pin(file_id, 1, SCOPE, lfn, headroom)


def test_a_reservation_counts_until_its_files_are_written_never_twice(tmp_path: Path) -> None:
    space = CacheSpace(tmp_path, 100 * KB)
    target = tmp_path / "files" / SCOPE / "a.root"
    reservation = space.reserve(60 * KB, [target])
    assert (space.usage().used, space.usage().free) == (60 * KB, 40 * KB)
    # Half written: the same 60 kB, half on disk, half still held.
    write(target, 30 * KB)
    assert (space.usage().on_disk, space.usage().held) == (30 * KB, 30 * KB)

    with pytest.raises(SpaceRefused) as refused:
        space.reserve(41 * KB, [tmp_path / "files" / SCOPE / "b.root"])
    assert str(refused.value) == (
        f"cache quota: {60 * KB} bytes used of {100 * KB}, {41 * KB} more do not fit"
    )
    assert space.usage().wanted == 41 * KB
    space.reserve(40 * KB, [tmp_path / "files" / SCOPE / "b.root"])

    write(target, 60 * KB)
    space.release(reservation)
    assert space.usage().used == 100 * KB


def test_a_pin_holds_room_for_its_split_and_keeps_its_input(tmp_path: Path) -> None:
    space = CacheSpace(tmp_path, 100 * KB)
    write(tmp_path / "files" / SCOPE / "a.root", 20 * KB)
    space.reserve(0, pin=pin(1, "a.root", headroom=50 * KB))
    assert space.usage().used == 70 * KB
    assert space.usage().evictable == 0
    # The split's range files take the pin's room, not more.
    write(tmp_path / "split" / "f1.a1" / "range.000000001-000000010.root", 30 * KB)
    assert space.usage().used == 70 * KB
    # Pinning the same work again replaces the pin: its room is not counted twice.
    space.reserve(0, pin=pin(1, "a.root", headroom=50 * KB))
    assert space.usage().used == 70 * KB

    shutil.rmtree(tmp_path / "split")
    unpin(tmp_path, 1, 1)
    assert (space.usage().used, space.usage().evictable) == (20 * KB, 20 * KB)


def test_split_headroom_is_the_input_and_a_cost_per_range_file() -> None:
    assert split_headroom(1000, 250, 100) == 1000 + 3 * SPLIT_OVERHEAD_PER_RANGE
    assert split_headroom(1000, 100, 100) == 1000 + SPLIT_OVERHEAD_PER_RANGE


def test_the_evictor_removes_the_least_recently_used_unpinned_files_down_to_low(
    tmp_path: Path,
) -> None:
    space = CacheSpace(tmp_path, 100 * KB)
    oldest = write(tmp_path / "files" / SCOPE / "old.root", 30 * KB, age_s=300)
    pinned = write(tmp_path / "files" / SCOPE / "pinned.root", 20 * KB, age_s=400)
    pulled = write(tmp_path / "objects" / "ranges" / "x" / "1.root", 20 * KB, age_s=200)
    recent = write(tmp_path / "files" / SCOPE / "recent.root", 20 * KB, age_s=10)
    partial = write(tmp_path / "files" / SCOPE / ".new.root.ab.part", 6 * KB, age_s=900)
    space.reserve(0, pin=pin(7, "pinned.root"))

    # 96 kB of 100: above the high watermark, so down to the low one (80 kB), oldest first.
    assert space.evict(0.95, 0.80) == [oldest]
    assert space.usage().used == 66 * KB
    # Below the high watermark nothing more goes.
    assert space.evict(0.95, 0.80) == []
    assert space.evict(0.60, 0.40) == [pulled, recent]
    assert pinned.exists() and partial.exists()


def test_a_refused_reservation_makes_the_evictor_free_room_below_the_high_watermark(
    tmp_path: Path,
) -> None:
    space = CacheSpace(tmp_path, 100 * KB)
    first = write(tmp_path / "files" / SCOPE / "a.root", 40 * KB, age_s=100)
    write(tmp_path / "files" / SCOPE / "b.root", 30 * KB, age_s=50)
    with pytest.raises(SpaceRefused):
        space.reserve(50 * KB, [tmp_path / "files" / SCOPE / "c.root"], want_id="c")

    assert space.evict(0.95, 0.80) == [first]
    space.reserve(50 * KB, [tmp_path / "files" / SCOPE / "c.root"], want_id="c")
    assert space.usage().wanted == 0


def test_stale_pins_and_reservations_of_dead_processes_are_forgotten(tmp_path: Path) -> None:
    space = CacheSpace(tmp_path, 100 * KB, pin_ttl_s=60)
    write(tmp_path / "files" / SCOPE / "a.root", 10 * KB)
    space.reserve(0, pin=pin(1, "a.root", headroom=40 * KB))
    pin_file = tmp_path / "pins" / "f1.a1"
    pin_file.write_text(pin_file.read_text().replace('"at": ', '"at": -1e9, "was": '))
    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from ess_common.cache_space import CacheSpace;"
            f"CacheSpace(Path(sys.argv[1]), {100 * KB}).reserve({30 * KB}, [])",
            str(tmp_path),
        ],
        check=True,
    )
    assert dead.returncode == 0
    # The reservation's process is gone: only the pin (not yet expired) counts.
    assert space.usage().used == 50 * KB

    space.evict(0.95, 0.80)  # forgets the pin older than its time to live
    assert not pin_file.exists()
    assert space.usage().used == 10 * KB


_RESERVER = """
import signal, sys
from pathlib import Path
from ess_common.cache_space import CacheSpace, SpaceRefused
space = CacheSpace(Path(sys.argv[1]), int(sys.argv[2]))
got = 0
for _ in range(20):
    try:
        space.reserve(int(sys.argv[3]), [])
        got += 1
    except SpaceRefused:
        pass
print(got)
sys.stdout.flush()
signal.pause()  # reservations live as long as their process: until it is killed
"""


def test_processes_reserving_at_once_never_exceed_the_quota(tmp_path: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _RESERVER, str(tmp_path), str(100 * KB), str(7 * KB)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        granted = [int(p.stdout.readline()) if p.stdout else 0 for p in processes]
        # 14 reservations of 7 kB fit in 100 kB, and that many were granted, over 120 asked.
        assert sum(granted) == 14, granted
        assert CacheSpace(tmp_path, 100 * KB).usage().used == 98 * KB
    finally:
        for p in processes:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


async def test_a_download_waits_for_the_evictor_or_is_refused_without_one(
    tmp_path: Path,
) -> None:
    space = CacheSpace(tmp_path, 100 * KB)
    write(tmp_path / "files" / SCOPE / "old.root", 80 * KB, age_s=100)
    target = tmp_path / "files" / SCOPE / "new.root"

    with pytest.raises(SpaceRefused):
        await reserve_waiting(space, 50 * KB, [target], wait_s=5, evictor_every_s=0.05)

    settings = EdgeSettings(edge_cache_dir=tmp_path, edge_quota_bytes=100 * KB)
    evictor = Evictor(settings, space)

    async def evict_forever() -> None:
        while True:
            await evictor.run_once()
            await asyncio.sleep(0.05)

    task = asyncio.create_task(evict_forever())
    try:
        await eventually(lambda: space.evictor_alive(1.0), message="evictor running")
        await reserve_waiting(space, 50 * KB, [target], wait_s=5, evictor_every_s=0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert evictor.evicted == 1
    assert not (tmp_path / "files" / SCOPE / "old.root").exists()


async def test_the_heartbeat_reports_what_could_be_evicted(tmp_path: Path) -> None:
    settings = EdgeSettings(edge_cache_dir=tmp_path, edge_quota_bytes=100 * KB)
    write(tmp_path / "files" / SCOPE / "done.root", 30 * KB)
    write(tmp_path / "files" / SCOPE / "busy.root", 20 * KB)
    CacheSpace(tmp_path, 100 * KB).reserve(0, pin=pin(3, "busy.root", headroom=10 * KB))

    beat = await make_heartbeat(settings, IDLE_BUS)

    assert (beat.free_bytes, beat.evictable_bytes) == (40 * KB, 30 * KB)


# --- through the precacher and the splitter -----------------------------------------------------


def edge_settings(tmp_path: Path, quota: int, **extra: Any) -> EdgeSettings:
    return EdgeSettings.model_validate(
        {
            "edge_name": "edge-space",
            "edge_cache_dir": tmp_path / "cache",
            "edge_quota_bytes": quota,
            "edge_reserve_wait_s": 10,
            "edge_evict_interval_s": 0.05,
            **extra,
        }
    )


def assigned(source: Path, file_id: int, lfn: str, n_events: int, epr: int) -> FileAssigned:
    return FileAssigned(
        work=FileWork(
            request_id="req-space",
            file_id=file_id,
            attempt=1,
            edge="edge-space",
            file=DatasetFile(
                scope=SCOPE,
                lfn=lfn,
                n_events=n_events,
                size=source.stat().st_size,
                adler32=adler32_of_file(source),
                sources=[source.as_uri()],
            ),
            events_per_range=epr,
        )
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    copy = tmp_path / "storage" / "HZZ.root"
    copy.parent.mkdir()
    shutil.copyfile(skhep_testdata.data_path("uproot-HZZ.root"), copy)
    return copy


async def test_a_small_quota_is_never_exceeded_and_split_inputs_make_room(
    tmp_path: Path, source: Path, store: ObjectStore
) -> None:
    size, epr = source.stat().st_size, 1000
    per_file = size + split_headroom(size, 2421, epr)
    # Room for one file in work and one cached input, no more.
    settings = edge_settings(tmp_path, per_file + size + 1000)
    precacher = Precacher(settings, IDLE_BUS)
    splitter = Splitter(settings, IDLE_BUS, store)
    evictor = Evictor(settings, precacher.space)
    peak = 0

    async def evict_and_watch() -> None:
        nonlocal peak
        while True:
            await evictor.run_once()
            peak = max(peak, (await asyncio.to_thread(precacher.space.usage)).on_disk)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(evict_and_watch())
    try:
        first = await precacher.handle_file_assigned(assigned(source, 1, "a.root", 2421, epr))
        # Pinned: a second file must wait until the first one's split is uploaded.
        second = asyncio.create_task(
            precacher.handle_file_assigned(assigned(source, 2, "b.root", 2421, epr))
        )
        third = asyncio.create_task(
            precacher.handle_file_assigned(assigned(source, 3, "c.root", 2421, epr))
        )
        await asyncio.sleep(0)
        assert not second.done() and not third.done()
        await splitter.handle_file_cached(first)
        # Each waiting download gets room once the one before it is split and uploaded.
        waiting: set[asyncio.Task[FileCached]] = {second, third}
        while waiting:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1, "two files in work at once"
            await splitter.handle_file_cached(done.pop().result())
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert peak <= settings.edge_quota_bytes
    # The first input went to make room; the last one stays, unpinned, for a later hit.
    assert evictor.evicted >= 1
    assert not cache_path(settings.edge_cache_dir, SCOPE, "a.root").exists()
    assert precacher.space.usage().held == 0
    assert not list((settings.edge_cache_dir / "pins").iterdir())


async def test_a_failed_download_leaves_no_pin_nor_reservation(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, 10 * 2**20)
    precacher = Precacher(settings, IDLE_BUS)
    gone = tmp_path / "gone.root"
    write(gone, 1000)
    event = assigned(gone, 9, "gone.root", 10, 5)
    gone.unlink()

    with pytest.raises(Exception, match="no source delivered"):
        await precacher.handle_file_assigned(event)

    usage = precacher.space.usage()
    assert (usage.used, usage.held) == (0, 0)
    assert not list((settings.edge_cache_dir / "pins").iterdir())
