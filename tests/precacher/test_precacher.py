"""The precacher of one edge: a real ROOT file fetched from file://, from an HTTP server standing
in for a grid storage endpoint, and from the real S3 server, verified by size and adler32;
and, through both buses, `file.assigned` in, `file.cached` or `file.failed` out."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import skhep_testdata
from aiohttp import web

from ess_common.checksums import adler32_of_bytes, adler32_of_file
from ess_common.db.models import FileStatus
from ess_common.db.session import SessionMaker
from ess_common.edge_work import cache_path
from ess_common.errors import RetryableError
from ess_common.events import (
    DatasetFile,
    FileAssigned,
    FileCached,
    FileFailed,
    FileWork,
    parse_event,
)
from ess_common.messaging.bus import Bus, Delivery, publish_event
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import EdgeSettings
from ess_common.store.local import LocalStore
from ess_common.store.s3 import S3Store
from ess_precacher.service import Precacher
from tests.grid_https import grid_https
from tests.head_api.support import edge_work_at_head
from tests.helpers import S3Settings, UniqueNames, eventually, free_port

if TYPE_CHECKING:
    from tests.conftest import XRootDServer

EDGE = "edge-pc"
SCOPE = "data18_13TeV"
LFN = "NTUP.000001.uproot-HZZ.root"
#: For calling the handler directly: never started, nothing is published on it.
IDLE_BUS = MemoryBus("unused")
#: The retries the bus fixture allows (see conftest); the edge is told the same.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Original:
    path: Path
    data: bytes
    adler32: str

    @property
    def size(self) -> int:
        return len(self.data)


@pytest.fixture(scope="module")
def original() -> Original:
    path = Path(skhep_testdata.data_path("uproot-HZZ.root"))
    data = path.read_bytes()
    return Original(path, data, adler32_of_bytes(data))


@pytest.fixture
def source(tmp_path: Path, original: Original) -> Path:
    """A copy of the ROOT file on 'storage' the edge can read by file://."""
    copy = tmp_path / "storage" / LFN
    copy.parent.mkdir()
    shutil.copyfile(original.path, copy)
    return copy


def edge_settings(tmp_path: Path, **extra: Any) -> EdgeSettings:
    return EdgeSettings.model_validate(
        {
            "edge_name": EDGE,
            "edge_cache_dir": tmp_path / "cache",
            "edge_quota_bytes": 10 * 2**20,
            "download_timeout_s": 10,
            "max_attempts": MAX_ATTEMPTS,
            "retry_backoff_s": 0.05,
            **extra,
        }
    )


def assigned(
    original: Original, sources: list[str], *, size: int = 0, adler32: str = ""
) -> FileAssigned:
    work = FileWork(
        request_id="req-1",
        file_id=7,
        attempt=1,
        edge=EDGE,
        file=DatasetFile(
            scope=SCOPE,
            lfn=LFN,
            n_events=2421,
            size=size or original.size,
            adler32=adler32 or original.adler32,
            sources=sources,
        ),
        events_per_range=500,
    )
    return FileAssigned(work=work, correlation_id="req-1")


def head_store(tmp_path: Path) -> LocalStore:
    """The object store of the head the edge asks about its work (nothing is read from it)."""
    return LocalStore(tmp_path / "head-objects", "http://testserver", b"k")


def cached_files(settings: EdgeSettings) -> list[str]:
    """Everything in the cache's directory of the scope: the file, and any partial download."""
    directory = settings.edge_cache_dir / "files" / SCOPE
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def expect_cached(precacher: Precacher, event: FileAssigned, original: Original) -> None:
    result = await precacher.handle_file_assigned(event)

    assert isinstance(result, FileCached)
    assert result.work == event.work
    assert result.correlation_id == "req-1"
    target = cache_path(precacher.settings.edge_cache_dir, SCOPE, LFN)
    assert result.cache_path == str(target)
    assert target.read_bytes() == original.data
    assert cached_files(precacher.settings) == [LFN]  # no partial download left behind


# --- a grid storage endpoint over HTTP ----------------------------------------------------------


@dataclass
class GridStorage:
    """An HTTP server holding files, counting the GETs, with broken and redirecting paths."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    async def serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.gets.append(name)
        if name.startswith("broken/"):
            return web.Response(status=503, text="pool offline")
        if name.startswith("redirect/"):
            # dCache-style: the door redirects to the pool that holds the file.
            raise web.HTTPFound(f"/{name.removeprefix('redirect/')}")
        if name not in self.files:
            return web.Response(status=404, text="no such file")
        return web.Response(body=self.files[name], content_type="application/octet-stream")


@pytest.fixture
async def grid_storage() -> AsyncIterator[GridStorage]:
    storage = GridStorage()
    app = web.Application()
    app.router.add_get("/{name:.+}", storage.serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    storage.base_url = f"http://{host}:{port}"
    try:
        yield storage
    finally:
        await runner.cleanup()


# --- directly -----------------------------------------------------------------------------------


async def test_file_source_is_cached_and_verified(
    tmp_path: Path, source: Path, original: Original
) -> None:
    precacher = Precacher(edge_settings(tmp_path), IDLE_BUS)
    await expect_cached(precacher, assigned(original, [source.as_uri()]), original)
    assert adler32_of_file(cache_path(tmp_path / "cache", SCOPE, LFN)) == original.adler32


async def test_http_source_is_cached(
    tmp_path: Path, original: Original, grid_storage: GridStorage
) -> None:
    grid_storage.files[LFN] = original.data
    precacher = Precacher(edge_settings(tmp_path), IDLE_BUS)

    await expect_cached(precacher, assigned(original, [grid_storage.url(LFN)]), original)

    assert grid_storage.gets == [LFN]


async def test_webdav_source_is_cached_over_http(
    tmp_path: Path, original: Original, grid_storage: GridStorage
) -> None:
    grid_storage.files[LFN] = original.data
    precacher = Precacher(edge_settings(tmp_path), IDLE_BUS)
    webdav = "dav" + grid_storage.url(LFN).removeprefix("http")

    await expect_cached(precacher, assigned(original, [webdav]), original)

    assert grid_storage.gets == [LFN]


async def test_grid_https_source_is_cached_with_the_sites_ca_and_token(
    tmp_path: Path, original: Original
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / LFN).write_bytes(original.data)
    scratch = tmp_path / "grid"
    scratch.mkdir()
    async with grid_https(served, scratch) as storage:
        url = "davs" + storage.base_url.removeprefix("https") + f"/{LFN}"
        settings = edge_settings(
            tmp_path, source_ca_path=storage.ca_dir, source_token_file=storage.token_file
        )

        await expect_cached(Precacher(settings, IDLE_BUS), assigned(original, [url]), original)

        without_token = edge_settings(tmp_path / "b", source_ca_path=storage.ca_dir)
        with pytest.raises(RetryableError, match="HTTP 401"):
            await Precacher(without_token, IDLE_BUS).handle_file_assigned(assigned(original, [url]))
        with pytest.raises(RetryableError, match="CERTIFICATE_VERIFY_FAILED"):
            await Precacher(edge_settings(tmp_path / "c"), IDLE_BUS).handle_file_assigned(
                assigned(original, [url])
            )


async def test_http_redirect_to_the_holding_pool_is_followed(
    tmp_path: Path, original: Original, grid_storage: GridStorage
) -> None:
    grid_storage.files[LFN] = original.data
    precacher = Precacher(edge_settings(tmp_path), IDLE_BUS)

    await expect_cached(
        precacher, assigned(original, [grid_storage.url(f"redirect/{LFN}")]), original
    )

    assert grid_storage.gets == [f"redirect/{LFN}", LFN]


async def test_s3_source_is_cached(
    tmp_path: Path, original: Original, s3_settings: S3Settings
) -> None:
    bucket = f"ess-t-src-{uuid.uuid4().hex[:12]}"
    key = f"rucio/{SCOPE}/ab/cd/{LFN}"
    storage: S3Store = s3_settings.store(bucket)
    await storage.start()
    try:
        await storage.put_file(key, original.path)
        settings = edge_settings(
            tmp_path,
            s3_endpoint_url=s3_settings.endpoint_url,
            s3_access_key=s3_settings.access_key,
            s3_secret_key=s3_settings.secret_key,
            s3_region=s3_settings.region,
        )
        precacher = Precacher(settings, IDLE_BUS)

        # A replica missing from the bucket is one more broken source.
        sources = [f"s3://{bucket}/{key}.missing", f"s3://{bucket}/{key}"]
        await expect_cached(precacher, assigned(original, sources), original)
    finally:
        await storage.delete(key)
        await storage.client.delete_bucket(Bucket=bucket)
        await storage.close()


async def test_unreachable_s3_endpoint_is_one_broken_source(
    tmp_path: Path, source: Path, original: Original, monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore's own retries of a refused connection take seconds; one attempt shows the same.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    closed_port = free_port()
    settings = edge_settings(
        tmp_path,
        s3_endpoint_url=f"http://127.0.0.1:{closed_port}",
        s3_access_key="nobody",
        s3_secret_key="nothing",
    )
    precacher = Precacher(settings, IDLE_BUS)

    sources = [f"s3://rucio/{SCOPE}/{LFN}", source.as_uri()]
    await expect_cached(precacher, assigned(original, sources), original)

    with pytest.raises(RetryableError) as raised:
        await precacher.handle_file_assigned(assigned(original, sources[:1], adler32="0badc0de"))
    assert sources[0] in str(raised.value)


async def test_xrootd_source_is_cached(
    tmp_path: Path, original: Original, xrootd: XRootDServer
) -> None:
    url, copy = xrootd.serve(original.path)
    try:
        precacher = Precacher(edge_settings(tmp_path), IDLE_BUS)
        # A replica the server does not have is one more broken source.
        sources = [f"{xrootd.url}//ess-test-none/{LFN}", url]
        await expect_cached(precacher, assigned(original, sources), original)
    finally:
        shutil.rmtree(copy.parent)


async def test_unreachable_xrootd_server_is_one_broken_source(
    tmp_path: Path, source: Path, original: Original
) -> None:
    closed_port = free_port()
    precacher = Precacher(edge_settings(tmp_path), IDLE_BUS)

    sources = [f"root://127.0.0.1:{closed_port}//rucio/{LFN}", source.as_uri()]
    await expect_cached(precacher, assigned(original, sources), original)


async def test_wrong_adler32_is_retryable_and_leaves_nothing(
    tmp_path: Path, source: Path, original: Original
) -> None:
    settings = edge_settings(tmp_path)
    precacher = Precacher(settings, IDLE_BUS)
    wrong = "0badc0de"

    with pytest.raises(RetryableError) as raised:
        await precacher.handle_file_assigned(assigned(original, [source.as_uri()], adler32=wrong))

    reason = str(raised.value)
    assert "adler32" in reason
    assert f"expected {wrong}" in reason
    assert f"got {original.adler32}" in reason
    assert source.as_uri() in reason
    assert cached_files(settings) == []


async def test_wrong_size_is_retryable_and_leaves_nothing(
    tmp_path: Path, original: Original, grid_storage: GridStorage
) -> None:
    grid_storage.files[LFN] = original.data[:-100]  # a transfer cut short
    settings = edge_settings(tmp_path)
    precacher = Precacher(settings, IDLE_BUS)

    with pytest.raises(RetryableError) as raised:
        await precacher.handle_file_assigned(assigned(original, [grid_storage.url(LFN)]))

    reason = str(raised.value)
    assert f"expected {original.size}, got {original.size - 100}" in reason
    assert cached_files(settings) == []


async def test_next_source_is_tried_when_one_is_broken(
    tmp_path: Path, source: Path, original: Original, grid_storage: GridStorage
) -> None:
    grid_storage.files[LFN] = original.data
    grid_storage.files[f"corrupt/{LFN}"] = original.data[::-1]
    precacher = Precacher(edge_settings(tmp_path), IDLE_BUS)
    sources = [
        grid_storage.url(f"broken/{LFN}"),
        (tmp_path / "gone" / LFN).as_uri(),
        grid_storage.url(f"corrupt/{LFN}"),
        grid_storage.url(LFN),
        source.as_uri(),
    ]

    await expect_cached(precacher, assigned(original, sources), original)

    # Tried in order, stopping at the first good one.
    assert grid_storage.gets == [f"broken/{LFN}", f"corrupt/{LFN}", LFN]


async def test_every_source_failing_is_retryable_with_every_reason(
    tmp_path: Path, original: Original, grid_storage: GridStorage
) -> None:
    settings = edge_settings(tmp_path)
    precacher = Precacher(settings, IDLE_BUS)
    sources = [grid_storage.url(f"broken/{LFN}"), (tmp_path / "gone" / LFN).as_uri()]

    with pytest.raises(RetryableError) as raised:
        await precacher.handle_file_assigned(assigned(original, sources))

    reason = str(raised.value)
    assert "HTTP 503" in reason
    assert "no such file" in reason
    assert all(url in reason for url in sources)
    assert cached_files(settings) == []


async def test_file_already_cached_is_not_fetched_again(
    tmp_path: Path, source: Path, original: Original, grid_storage: GridStorage
) -> None:
    precacher = Precacher(edge_settings(tmp_path), IDLE_BUS)
    await expect_cached(precacher, assigned(original, [source.as_uri()]), original)
    source.unlink()

    # Its only source is gone, and the HTTP one would count a GET: the cached copy is used.
    again = assigned(original, [source.as_uri(), grid_storage.url(LFN)])
    await expect_cached(precacher, again, original)
    assert grid_storage.gets == []


async def test_corrupt_cached_copy_is_fetched_again(
    tmp_path: Path, source: Path, original: Original
) -> None:
    settings = edge_settings(tmp_path)
    target = cache_path(settings.edge_cache_dir, SCOPE, LFN)
    target.parent.mkdir(parents=True)
    target.write_bytes(original.data[:-1] + b"\0")  # right size, wrong content
    precacher = Precacher(settings, IDLE_BUS)

    await expect_cached(precacher, assigned(original, [source.as_uri()]), original)


async def test_file_over_the_quota_is_retryable(
    tmp_path: Path, source: Path, original: Original
) -> None:
    settings = edge_settings(tmp_path, edge_quota_bytes=original.size - 1)
    precacher = Precacher(settings, IDLE_BUS)

    with pytest.raises(RetryableError) as raised:
        await precacher.handle_file_assigned(assigned(original, [source.as_uri()]))

    assert "quota" in str(raised.value)
    assert cached_files(settings) == []


async def test_quota_counts_what_the_cache_already_holds(
    tmp_path: Path, source: Path, original: Original
) -> None:
    settings = edge_settings(tmp_path, edge_quota_bytes=original.size + 1000)
    other = settings.edge_cache_dir / "files" / SCOPE / "NTUP.other.root"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x" * 2000)
    precacher = Precacher(settings, IDLE_BUS)

    with pytest.raises(RetryableError) as raised:
        await precacher.handle_file_assigned(assigned(original, [source.as_uri()]))

    assert "2000 bytes used" in str(raised.value)
    assert cached_files(settings) == ["NTUP.other.root"]


# --- through the bus ----------------------------------------------------------------------------


async def watch(bus: Bus, unique: UniqueNames, binding: str) -> list[Delivery]:
    seen: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery)

    await bus.consume(unique("head"), [binding], record)
    return seen


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_assigned_file_comes_back_as_file_cached(
    bus: Bus,
    unique: UniqueNames,
    tmp_path: Path,
    source: Path,
    original: Original,
    sessions: SessionMaker,
) -> None:
    settings = edge_settings(tmp_path)
    given = assigned(original, [source.as_uri()]).work
    async with edge_work_at_head(
        sessions, head_store(tmp_path), given, status=FileStatus.ASSIGNED
    ) as (edge, work):
        precacher = Precacher(settings, bus, guard=edge.guard)
        await precacher.start()
        cached = await watch(bus, unique, f"file.cached.{EDGE}")
        event = FileAssigned(work=work, correlation_id=work.request_id)

        await publish_event(bus, event, headers=edge.signed(event))

        await eventually(lambda: cached, message=f"file.cached.{EDGE}")
        await precacher.stop()
    (delivery,) = cached
    assert delivery.routing_key == f"file.cached.{EDGE}"
    result = parse_event(delivery.body)
    assert isinstance(result, FileCached)
    assert result.work == event.work
    assert Path(result.cache_path).read_bytes() == original.data


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_file_no_source_delivers_ends_as_retryable_file_failed(
    bus: Bus,
    unique: UniqueNames,
    tmp_path: Path,
    original: Original,
    grid_storage: GridStorage,
    sessions: SessionMaker,
) -> None:
    settings = edge_settings(tmp_path)
    sources = [grid_storage.url(f"broken/{LFN}"), (tmp_path / "gone" / LFN).as_uri()]
    given = assigned(original, sources).work
    async with edge_work_at_head(
        sessions, head_store(tmp_path), given, status=FileStatus.ASSIGNED
    ) as (edge, work):
        precacher = Precacher(settings, bus, guard=edge.guard)
        await precacher.start()
        failed = await watch(bus, unique, f"file.failed.{EDGE}")
        cached = await watch(bus, unique, f"file.cached.{EDGE}")
        event = FileAssigned(work=work, correlation_id=work.request_id)

        await publish_event(bus, event, headers=edge.signed(event))

        await eventually(lambda: failed, message=f"file.failed.{EDGE}")
        await precacher.stop()
    (delivery,) = failed
    result = parse_event(delivery.body)
    assert isinstance(result, FileFailed)
    assert result.work == event.work
    assert result.stage == "precache"
    assert result.retryable is True
    assert "HTTP 503" in result.reason and "no such file" in result.reason
    assert result.correlation_id == work.request_id
    # Reported once, after every attempt the edge is allowed (each one asked the server).
    assert grid_storage.gets == [f"broken/{LFN}"] * MAX_ATTEMPTS
    assert cached == []
