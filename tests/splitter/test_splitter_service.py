"""The splitter of one edge: a cached ROOT file cut into ranges, each uploaded to the local
store or the real S3 server under its deterministic key, and `split.done` listing them; a file
the engine does not cut is delivered whole, or, when the edge is told so, fails for good
(through both buses as `file.failed`); a corrupt file fails for good at once, never whole."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import skhep_testdata
import uproot
from pydantic import SecretStr
from sqlalchemy import select, update

from ess_common.checksums import adler32_of_bytes
from ess_common.db import enrollments
from ess_common.db.models import File, FileStatus
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.edge_work import cache_path, work_handler
from ess_common.errors import PermanentError, RetryableError
from ess_common.events import (
    DatasetFile,
    FileCached,
    FileFailed,
    FileWork,
    RequestSpec,
    SplitDone,
    parse_event,
)
from ess_common.messaging.bus import (
    EDGE_SIGNATURE_HEADER,
    Bus,
    Delivery,
    edge_signature,
    publish_event,
)
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore, range_key
from ess_common.store.local import LocalStore
from ess_common.work_guard import WorkGuard
from ess_split.split import SplitResult
from ess_splitter import service
from ess_splitter.service import Splitter
from ess_splitter.strategy import split_file
from tests.head_api.support import running_head
from tests.helpers import UniqueNames, eventually

EDGE = "edge-sp"
SCOPE = "data18_13TeV"
HZZ_EVENTS = 2421
#: uproot-from-geant4.root: its 1,000-event tree was written by ROOT before 5.20, whose branch
#: records the engine does not cut.
GEANT4_EVENTS = 1000
GEANT4_REASON = "'GeneratedTracks' has type 'TTree' (branch 'Event' is a TBranch of version 8"
EVENTS_PER_RANGE = 500
FILE_ID = 11
ATTEMPT = 2
#: For calling the handler directly: never started, nothing is published on it.
IDLE_BUS = MemoryBus("unused")


def edge_settings(tmp_path: Path, **extra: Any) -> EdgeSettings:
    return EdgeSettings.model_validate(
        {
            "edge_name": EDGE,
            "edge_cache_dir": tmp_path / "cache",
            "max_attempts": 3,
            "retry_backoff_s": 0.05,
            **extra,
        }
    )


def cache(settings: EdgeSettings, name: str, lfn: str) -> Path:
    """Put a copy of a scikit-hep-testdata file where the precacher would have left it."""
    target = cache_path(settings.edge_cache_dir, SCOPE, lfn)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(skhep_testdata.data_path(name), target)
    return target


def file_cached(
    settings: EdgeSettings,
    lfn: str,
    n_events: int,
    *,
    request_id: str = "req-9",
    file_id: int = FILE_ID,
) -> FileCached:
    path = cache_path(settings.edge_cache_dir, SCOPE, lfn)
    work = FileWork(
        request_id=request_id,
        file_id=file_id,
        attempt=ATTEMPT,
        edge=EDGE,
        file=DatasetFile(
            scope=SCOPE,
            lfn=lfn,
            n_events=n_events,
            size=123,
            adler32="1",
            sources=[f"https://storage.example.org/{lfn}"],
        ),
        events_per_range=EVENTS_PER_RANGE,
    )
    return FileCached(work=work, cache_path=str(path), correlation_id=request_id)


@asynccontextmanager
async def edge_at_a_head(
    sessions: SessionMaker,
    tmp_path: Path,
    settings: EdgeSettings,
    bus: Bus,
    store: ObjectStore,
    lfns: list[str],
) -> AsyncIterator[tuple[Splitter, Callable[[str, int], Awaitable[None]]]]:
    """The head knows a request of these files, cached by this (enrolled) edge at ATTEMPT; a
    splitter that checks its work there, and a way to publish `file.cached` as the edge's
    precacher does (signed with the edge's token)."""
    spec = RequestSpec.model_validate(
        {
            "dataset": f"{SCOPE}:{SCOPE}.NTUP.split-tests",
            "idempotency_key": "split-tests",
            "events_per_range": EVENTS_PER_RANGE,
            "files": [
                {
                    "scope": SCOPE,
                    "lfn": lfn,
                    "n_events": 1,
                    "size": 123,
                    "adler32": "00000001",
                    "sources": [f"https://storage.example.org/{lfn}"],
                }
                for lfn in lfns
            ],
        }
    )
    async with unit_of_work(sessions) as session:
        token = SecretStr(await enrollments.enroll(session, EDGE))
        request, _ = await record_request(session, spec)
        await session.flush()
        await session.execute(
            update(File)
            .where(File.request_id == request.id)
            .values(status=FileStatus.CACHED, edge=EDGE, attempt=ATTEMPT)
        )
        ids = {f.lfn: f.id for f in await session.scalars(select(File))}
        request_id = request.id
    settings = settings.model_copy(update={"edge_token": token})
    local = LocalStore(tmp_path / "head-objects", "http://testserver", b"k")
    async with running_head(sessions, local) as head:
        guard = WorkGuard(EDGE, token, "http://testserver", http=head.client)
        splitter = Splitter(settings, bus, store, guard=guard)

        async def publish(lfn: str, n_events: int) -> None:
            event = file_cached(settings, lfn, n_events, request_id=request_id, file_id=ids[lfn])
            await publish_event(bus, event, signed_with=token)

        yield splitter, publish


async def test_cached_file_is_split_uploaded_and_listed(tmp_path: Path, store: ObjectStore) -> None:
    settings = edge_settings(tmp_path)
    lfn = "NTUP.000001.uproot-HZZ.root"
    source = cache(settings, "uproot-HZZ.root", lfn)
    splitter = Splitter(settings, IDLE_BUS, store)
    event = file_cached(settings, lfn, HZZ_EVENTS)

    done = await splitter.handle_file_cached(event)

    assert isinstance(done, SplitDone)
    assert done.work == event.work
    assert done.correlation_id == "req-9"
    assert done.routing_key() == f"split.done.{EDGE}"
    assert [(r.first_event, r.last_event) for r in done.ranges] == [
        (1, 500),
        (501, 1000),
        (1001, 1500),
        (1501, 2000),
        (2001, 2421),
    ]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for r in done.ranges:
        assert r.key == range_key(
            SCOPE, lfn, EVENTS_PER_RANGE, FILE_ID, ATTEMPT, r.first_event, r.last_event
        )
        stored = await store.get_bytes(r.key)
        assert r.size == len(stored)
        assert r.adler32 == adler32_of_bytes(stored)
        # What was uploaded is a ROOT file holding exactly those events.
        local = downloads / f"{r.first_event}.root"
        local.write_bytes(stored)
        with uproot.open(local) as written:
            assert written["events"].num_entries == r.last_event - r.first_event + 1
    with uproot.open(source) as original, uproot.open(downloads / "501.root") as second:
        assert second["events"]["NMuon"].array(library="np").tolist() == (
            original["events"]["NMuon"].array(library="np")[500:1000].tolist()
        )

    # The split outputs are gone from the cache; the cached input file stays.
    split_dir = settings.edge_cache_dir / "split"
    assert not split_dir.exists() or list(split_dir.iterdir()) == []
    assert source.is_file()


async def test_file_no_longer_in_the_cache_is_retryable(tmp_path: Path, store: ObjectStore) -> None:
    settings = edge_settings(tmp_path)
    splitter = Splitter(settings, IDLE_BUS, store)

    with pytest.raises(RetryableError) as raised:
        await splitter.handle_file_cached(file_cached(settings, "NTUP.wiped.root", HZZ_EVENTS))

    assert "no longer in the cache" in str(raised.value)


async def test_cache_path_in_the_message_is_not_trusted(tmp_path: Path) -> None:
    # The message names a real file outside the cache: the splitter reads its own cache only.
    settings = edge_settings(tmp_path)
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    event = file_cached(settings, "NTUP.elsewhere.root", HZZ_EVENTS)
    elsewhere = tmp_path / "elsewhere.root"
    shutil.copyfile(skhep_testdata.data_path("uproot-HZZ.root"), elsewhere)
    event = event.model_copy(update={"cache_path": str(elsewhere)})

    with pytest.raises(RetryableError):
        await Splitter(settings, IDLE_BUS, store).handle_file_cached(event)


async def test_unsplittable_file_is_delivered_whole_by_default(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path)
    assert settings.split_unsplittable == "whole"
    lfn = "NTUP.geant4.root"
    source = cache(settings, "uproot-from-geant4.root", lfn)
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()

    done = await Splitter(settings, IDLE_BUS, store).handle_file_cached(
        file_cached(settings, lfn, GEANT4_EVENTS)
    )

    (whole,) = done.ranges
    assert (whole.first_event, whole.last_event) == (1, GEANT4_EVENTS)
    assert whole.key == range_key(SCOPE, lfn, EVENTS_PER_RANGE, FILE_ID, ATTEMPT, 1, GEANT4_EVENTS)
    stored = await store.get_bytes(whole.key)
    assert stored == source.read_bytes()
    assert (whole.size, whole.adler32) == (len(stored), adler32_of_bytes(stored))


async def test_unsplittable_file_is_a_permanent_error_when_told_to_fail(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, split_unsplittable="fail")
    lfn = "NTUP.geant4.root"
    cache(settings, "uproot-from-geant4.root", lfn)
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()

    with pytest.raises(PermanentError) as raised:
        await Splitter(settings, IDLE_BUS, store).handle_file_cached(
            file_cached(settings, lfn, GEANT4_EVENTS)
        )

    assert GEANT4_REASON in str(raised.value)
    # Nothing uploaded, nothing left in the split directory.
    assert not (tmp_path / "objects" / "ranges").exists()
    split_dir = settings.edge_cache_dir / "split"
    assert not split_dir.exists() or list(split_dir.iterdir()) == []


async def watch(bus: Bus, unique: UniqueNames, binding: str) -> list[Delivery]:
    seen: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery)

    await bus.consume(unique("head"), [binding], record)
    return seen


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_through_the_bus_split_done_or_file_failed(
    bus: Bus, unique: UniqueNames, tmp_path: Path, sessions: SessionMaker
) -> None:
    settings = edge_settings(tmp_path, split_unsplittable="fail")
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    lfns = ["NTUP.geant4.root", "NTUP.good.root"]
    async with edge_at_a_head(sessions, tmp_path, settings, bus, store, lfns) as (
        splitter,
        publish,
    ):
        await splitter.start()
        done = await watch(bus, unique, f"split.done.{EDGE}")
        failed = await watch(bus, unique, f"file.failed.{EDGE}")
        cache(settings, "uproot-HZZ.root", "NTUP.good.root")
        cache(settings, "uproot-from-geant4.root", "NTUP.geant4.root")

        await publish("NTUP.geant4.root", GEANT4_EVENTS)
        await publish("NTUP.good.root", HZZ_EVENTS)
        await eventually(lambda: failed and done, message="file.failed and split.done")
        await splitter.stop()

    (failure,) = [parse_event(d.body) for d in failed]
    assert isinstance(failure, FileFailed)
    assert failure.work.file.lfn == "NTUP.geant4.root"
    assert failure.stage == "split"
    assert failure.retryable is False
    assert GEANT4_REASON in failure.reason
    (success,) = [parse_event(d.body) for d in done]
    assert isinstance(success, SplitDone)
    assert success.work.file.lfn == "NTUP.good.root"
    assert [r.last_event for r in success.ranges] == [500, 1000, 1500, 2000, 2421]


def cache_corrupt(settings: EdgeSettings, lfn: str) -> Path:
    """A cached copy of HZZ that ends half way: the precacher's download was cut short."""
    target = cache_path(settings.edge_cache_dir, SCOPE, lfn)
    target.parent.mkdir(parents=True, exist_ok=True)
    content = Path(skhep_testdata.data_path("uproot-HZZ.root")).read_bytes()
    target.write_bytes(content[: len(content) // 2])
    return target


async def test_corrupt_file_fails_for_good_and_is_never_delivered_whole(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path)
    assert settings.split_unsplittable == "whole"
    lfn = "NTUP.cut-short.root"
    cache_corrupt(settings, lfn)
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()

    with pytest.raises(PermanentError) as raised:
        await Splitter(settings, IDLE_BUS, store).handle_file_cached(
            file_cached(settings, lfn, HZZ_EVENTS)
        )

    assert "corrupt ROOT file: it is truncated" in str(raised.value)
    assert not (tmp_path / "objects" / "ranges").exists()
    split_dir = settings.edge_cache_dir / "split"
    assert not split_dir.exists() or list(split_dir.iterdir()) == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_through_the_bus_a_corrupt_file_fails_once_without_retries(
    bus: Bus,
    unique: UniqueNames,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sessions: SessionMaker,
) -> None:
    settings = edge_settings(tmp_path)
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    splits: list[str] = []
    real_split = split_file

    async def counted(source: Path, *args: Any) -> Any:
        splits.append(source.name)
        return await real_split(source, *args)

    monkeypatch.setattr(service, "split_file", counted)
    lfns = ["NTUP.cut-short.root", "NTUP.good.root"]
    async with edge_at_a_head(sessions, tmp_path, settings, bus, store, lfns) as (
        splitter,
        publish,
    ):
        await splitter.start()
        done = await watch(bus, unique, f"split.done.{EDGE}")
        failed = await watch(bus, unique, f"file.failed.{EDGE}")
        cache_corrupt(settings, "NTUP.cut-short.root")
        cache(settings, "uproot-HZZ.root", "NTUP.good.root")

        await publish("NTUP.cut-short.root", HZZ_EVENTS)
        await publish("NTUP.good.root", HZZ_EVENTS)
        await eventually(lambda: failed and done, message="file.failed and split.done")
        await splitter.stop()
    (failure,) = [parse_event(d.body) for d in failed]
    assert isinstance(failure, FileFailed)
    assert failure.work.file.lfn == "NTUP.cut-short.root"
    assert failure.retryable is False
    assert "corrupt ROOT file: it is truncated" in failure.reason
    # Tried once: a corrupt file is not retried as if the failure were transient.
    assert splits.count("NTUP.cut-short.root") == 1
    (success,) = [parse_event(d.body) for d in done]
    assert isinstance(success, SplitDone)
    assert success.work.file.lfn == "NTUP.good.root"
    assert not (tmp_path / "objects" / "ranges" / SCOPE / "NTUP.cut-short.root").exists()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_file_moved_away_while_split_uploads_nothing_and_reports_nothing(
    tmp_path: Path, sessions: SessionMaker
) -> None:
    """The head gives the file to another edge while this one splits it: asked again before
    the uploads, the stale attempt uploads no object and publishes no `split.done`."""
    settings = edge_settings(tmp_path)
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    bus = MemoryBus("ess-moved-test")
    await bus.start()
    await bus.declare("results", ["split.done.#", "file.failed.#"])
    lfn = "NTUP.moved.root"
    async with edge_at_a_head(sessions, tmp_path, settings, bus, store, [lfn]) as (
        splitter,
        _,
    ):
        cache(settings, "uproot-HZZ.root", lfn)
        async with sessions() as session:
            file_id = (await session.scalars(select(File.id))).one()
            request_id = (await session.scalars(select(File.request_id))).one()
        real_split = splitter._split

        async def split_then_moved(
            source: Path, out_dir: Path, events_per_range: int, n_events: int
        ) -> SplitResult:
            result = await real_split(source, out_dir, events_per_range, n_events)
            # Meanwhile the edge was declared lost: the file is another edge's now.
            async with unit_of_work(sessions) as session:
                await session.execute(
                    update(File)
                    .where(File.id == file_id)
                    .values(status=FileStatus.ASSIGNED, edge="edge-other", attempt=ATTEMPT + 1)
                )
            return result

        splitter._split = split_then_moved  # type: ignore[method-assign]
        event = file_cached(settings, lfn, HZZ_EVENTS, request_id=request_id, file_id=file_id)
        token = splitter.guard.token
        assert token is not None
        body = event.model_dump_json().encode()
        delivery = Delivery(
            "q", event.routing_key(), body, {EDGE_SIGNATURE_HEADER: edge_signature(body, token)}
        )
        handle = work_handler(
            bus, FileCached, "split", 3, splitter.handle_file_cached, guard=splitter.guard
        )
        await handle(delivery)

    assert [p for p in (tmp_path / "objects").rglob("*") if p.is_file()] == []
    assert await bus.depth("results") == 0
    await bus.close()
