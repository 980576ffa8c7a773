"""Splitting one range straight from a remote file: through a presigned URL and an s3:// URL
of the real S3 server and a plain http:// server, reading a small part of the file, with the
same entries as the source; failures to reach the file are retryable."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import awkward as ak
import pytest
import uproot
from aiohttp import web
from aiohttp.test_utils import TestServer as HttpServer

from ess_common.errors import NotFound, PermanentError, RetryableError, Unauthorized
from ess_common.settings import EdgeSettings
from ess_common.source_access import SourceAccess
from ess_common.store.base import ObjectStore
from ess_common.store.s3 import S3Store
from ess_split.errors import SplitError
from ess_split.remote import (
    forget_kept,
    keep_opening,
    kept_opening,
    split_range,
    split_range_remote,
)
from ess_split.split import split_root_file
from tests.grid_https import grid_https
from tests.helpers import S3Settings, free_port
from tests.split.faithful import data, leaf_branches, read_branches, tree_entries
from tests.split.judge import Case, RootJudge
from tests.split.test_parallel import TREE, write_ntuple

if TYPE_CHECKING:
    from tests.conftest import XRootDServer

N_EVENTS = 120_000
BASKET_EVENTS = 3_000
# In the middle of the file, straddling a basket boundary.
FIRST, LAST = 59_001, 61_000
KEY = "inputs/ntuple.root"


@pytest.fixture(scope="module")
def ntuple(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 5 MB in 40 baskets per branch."""
    return write_ntuple(tmp_path_factory.mktemp("remote") / "ntuple.root", N_EVENTS, BASKET_EVENTS)


def assert_range_of(source: Path, written: Path, first: int, last: int) -> None:
    with uproot.open(source) as original, uproot.open(written) as range_file:
        expected = original[TREE].arrays(
            library="ak", how=dict, entry_start=first - 1, entry_stop=last
        )
        got = range_file[TREE].arrays(library="ak", how=dict)
    assert got.keys() == expected.keys()
    for name, array in expected.items():
        assert got[name].type == array.type, name
        assert ak.array_equal(got[name], array, dtype_exact=True), name


def assert_fetched_little(fetched: int, source: Path) -> None:
    # The range is 1/60 of the file; its two baskets per branch and the metadata are ~1/20.
    assert 0 < fetched < source.stat().st_size / 8


@pytest.fixture
async def uploaded(store: ObjectStore, ntuple: Path) -> S3Store:
    assert isinstance(store, S3Store)
    await store.put_file(KEY, ntuple)
    return store


@pytest.mark.parametrize("store", ["s3"], indirect=True)
async def test_range_from_a_presigned_url(uploaded: S3Store, ntuple: Path, tmp_path: Path) -> None:
    url = await uploaded.signed_url(KEY, 600)
    out = tmp_path / "range.root"

    written, fetched = await split_range(url, FIRST, LAST, out)

    assert (written.first_event, written.last_event, written.path) == (FIRST, LAST, out)
    assert written.size == out.stat().st_size
    assert_range_of(ntuple, out, FIRST, LAST)
    assert_fetched_little(fetched, ntuple)


@pytest.mark.parametrize("store", ["s3"], indirect=True)
async def test_range_from_an_s3_url(
    uploaded: S3Store, ntuple: Path, s3_settings: S3Settings, tmp_path: Path
) -> None:
    settings = EdgeSettings.model_validate(
        {
            "s3_endpoint_url": s3_settings.endpoint_url,
            "s3_access_key": s3_settings.access_key,
            "s3_secret_key": s3_settings.secret_key,
            "s3_region": s3_settings.region,
        }
    )
    out = tmp_path / "range.root"

    written, fetched = await split_range(
        f"s3://{uploaded.bucket}/{KEY}", FIRST, LAST, out, settings=settings, n_events=N_EVENTS
    )

    assert written.path == out
    assert_range_of(ntuple, out, FIRST, LAST)
    assert_fetched_little(fetched, ntuple)


@pytest.fixture
async def http_root(tmp_path: Path, ntuple: Path) -> AsyncIterator[tuple[str, Path]]:
    """A plain HTTP server (aiohttp's static files, with byte ranges) serving a directory."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "ntuple.root").write_bytes(ntuple.read_bytes())
    app = web.Application()
    app.router.add_static("/files", served)
    server = HttpServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/files", served
    finally:
        await server.close()


async def test_range_from_a_plain_http_server(
    http_root: tuple[str, Path], ntuple: Path, tmp_path: Path
) -> None:
    base, _ = http_root
    out = tmp_path / "out" / "range.root"

    written, fetched = await split_range(f"{base}/ntuple.root", FIRST, LAST, out)

    assert written.path == out
    assert_range_of(ntuple, out, FIRST, LAST)
    assert_fetched_little(fetched, ntuple)
    # The first and the last range of the file too.
    for first, last in [(1, 10), (N_EVENTS - 9, N_EVENTS)]:
        edge = tmp_path / f"edge-{first}.root"
        await split_range(f"{base}/ntuple.root", first, last, edge)
        assert_range_of(ntuple, edge, first, last)


async def test_a_webdav_url_is_read_over_http(
    http_root: tuple[str, Path], ntuple: Path, tmp_path: Path
) -> None:
    """Rucio's dav:// (davs://) replicas are read with HTTP (HTTPS) byte-range GETs."""
    base, _ = http_root
    out = tmp_path / "range.root"
    _, over_http = await split_range(f"{base}/ntuple.root", FIRST, LAST, tmp_path / "http.root")

    _, fetched = await split_range(f"dav{base.removeprefix('http')}/ntuple.root", FIRST, LAST, out)

    assert_range_of(ntuple, out, FIRST, LAST)
    assert fetched == over_http


async def test_grid_storage_over_https_with_its_ca_and_a_token(
    ntuple: Path, tmp_path: Path
) -> None:
    """davs:// storage signed by a grid CA and wanting a bearer token: read with both, refused
    without the token (401), unverifiable without the CA."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "ntuple.root").write_bytes(ntuple.read_bytes())
    scratch = tmp_path / "grid"
    scratch.mkdir()
    async with grid_https(served, scratch) as storage:
        url = "davs" + storage.base_url.removeprefix("https") + "/ntuple.root"
        out = tmp_path / "range.root"

        _, fetched = await split_range(url, FIRST, LAST, out, access=storage.access())

        assert_range_of(ntuple, out, FIRST, LAST)
        assert_fetched_little(fetched, ntuple)
        # A bundle does as well as a directory of hashed certificates.
        bundle = SourceAccess(storage.ca_file, storage.token_file)
        await split_range(url, 1, 10, tmp_path / "bundle.root", access=bundle)
        assert_range_of(ntuple, tmp_path / "bundle.root", 1, 10)
        with pytest.raises(Unauthorized):
            await split_range(url, 1, 10, tmp_path / "r.root", access=storage.access(token=False))
        asked = len(storage.requests)
        with pytest.raises(RetryableError, match="certificate"):
            await split_range(url, 1, 10, tmp_path / "r.root", access=storage.access(ca=False))
        # The handshake failed: nothing reached the server.
        assert len(storage.requests) == asked


@pytest.mark.parametrize(
    ("compression", "prefix"),
    [
        (uproot.ZLIB(1), True),
        (uproot.LZMA(1), True),
        (uproot.ZLIB(0), True),
        # An LZ4 block cannot be inflated from its start alone: such baskets are read whole
        # (uproot stores the incompressible ones, random floats, uncompressed).
        (uproot.LZ4(1), False),
    ],
)
async def test_only_the_start_of_a_basket_is_fetched(
    compression: Any, prefix: bool, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = http_root
    source = write_ntuple(served / "big-baskets.root", 12_000, 6_000, compression=compression)
    first, last = 6_001, 6_300
    with uproot.open(source) as root_file:
        # What reading the range's baskets whole costs.
        whole = sum(branch.basket_compressed_bytes(1) for branch in root_file[TREE].branches)
    out = tmp_path / "range.root"

    _, fetched = await split_range(f"{base}/big-baskets.root", first, last, out)

    assert_range_of(source, out, first, last)
    if prefix:
        assert fetched < whole / 2


@pytest.mark.parametrize(
    ("name", "per_range", "index", "n_events"),
    [
        # Embedded baskets, LZMA and ZSTD, many one-entry baskets, a tree in a subdirectory;
        # ROOT's own files: strings and vectors, and objects referring into their baskets.
        ("uproot-issue60.root", 997, 1, None),
        ("uproot-sample-6.14.00-lzma.root", 7, 2, None),
        ("uproot-HZZ-zstd.root", 500, 2, None),
        ("uproot-nesteddirs.root", 1, 2, 4),
        ("vectors-lz4.root", 137, 3, None),
        ("objects-zlib.root", 137, 3, None),
    ],
)
async def test_remote_range_is_the_local_splits(
    name: str,
    per_range: int,
    index: int,
    n_events: int | None,
    http_root: tuple[str, Path],
    own_files: Path,
    root_judge: RootJudge,
    tmp_path: Path,
) -> None:
    base, served = http_root
    source = served / name
    original = own_files / name if (own_files / name).exists() else data(name)
    source.write_bytes(original.read_bytes())
    local = split_root_file(source, tmp_path / "local", per_range, n_events=n_events).ranges[index]
    out = tmp_path / "remote.root"

    await split_range(f"{base}/{name}", local.first_event, local.last_event, out, n_events=n_events)

    assert file_arrays(out) == file_arrays(local.path)
    entries = tree_entries(original)
    events = n_events if n_events is not None else max(entries.values())
    cases = [
        Case(original, tree, local.first_event - 1, local.last_event, out)
        for tree, count in entries.items()
        if count == events
    ]
    assert [p for v in root_judge.check(cases) for p in v.problems] == []


def file_arrays(path: Path) -> dict[str, tuple[dict[str, list[Any]], set[str]]]:
    """Every TTree's entries, by path and branch, as far as uproot reads them, and the branches
    it does not read."""
    found = {}
    with uproot.open(path) as root_file:
        for tree_path, classname in root_file.classnames(cycle=False, recursive=True).items():
            if classname != "TTree":
                continue
            tree = root_file[tree_path]
            arrays, unread = read_branches(tree, leaf_branches(tree))
            found[tree_path] = ({n: a.tolist() for n, a in arrays.items()}, set(unread))
    return found


async def test_a_range_beyond_the_file_is_refused(
    http_root: tuple[str, Path], tmp_path: Path
) -> None:
    base, _ = http_root
    out = tmp_path / "range.root"
    with pytest.raises(SplitError, match=f"holds {N_EVENTS} events"):
        await split_range(f"{base}/ntuple.root", N_EVENTS, N_EVENTS + 1, out)
    assert not out.exists()
    with pytest.raises(ValueError):
        await split_range(f"{base}/ntuple.root", 0, 10, out)


async def test_a_missing_file_is_not_found(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    with pytest.raises(NotFound):
        await split_range(f"{base}/missing.root", 1, 10, tmp_path / "range.root")


async def test_an_unreachable_server_is_retryable(tmp_path: Path) -> None:
    # A port nobody listens on: the connection is refused at once.
    port = free_port()
    out = tmp_path / "range.root"
    with pytest.raises(RetryableError):
        await split_range(f"http://127.0.0.1:{port}/ntuple.root", 1, 10, out)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def on_xrootd(xrootd: XRootDServer, ntuple: Path) -> Iterator[str]:
    """The ntuple's root:// URL on the XRootD server."""
    url, copy = xrootd.serve(ntuple)
    try:
        yield url
    finally:
        shutil.rmtree(copy.parent)


async def test_range_from_an_xrootd_server(on_xrootd: str, ntuple: Path, tmp_path: Path) -> None:
    out = tmp_path / "range.root"
    _, fetched = await split_range(on_xrootd, FIRST, LAST, out)
    assert_range_of(ntuple, out, FIRST, LAST)
    assert_fetched_little(fetched, ntuple)

    # With the file's identity, the next range fetches neither the opening nor its baskets'
    # beginnings again.
    identity = f"user.ess:ntuple.root:{ntuple.stat().st_size}:xrootd"
    _, cold = await split_range(on_xrootd, FIRST, LAST, tmp_path / "a.root", identity=identity)
    _, warm = await split_range(on_xrootd, FIRST, LAST, tmp_path / "b.root", identity=identity)
    assert_range_of(ntuple, tmp_path / "b.root", FIRST, LAST)
    # A basket read again from further on is not fetched again from its start either.
    assert cold <= fetched
    assert 0 <= warm < cold / 2


async def test_a_file_the_xrootd_server_lacks_is_not_found(
    xrootd: XRootDServer, tmp_path: Path
) -> None:
    with pytest.raises(NotFound):
        await split_range(f"{xrootd.url}//ess-test-none/missing.root", 1, 10, tmp_path / "r.root")


async def test_an_unreachable_xrootd_server_is_retryable(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(RetryableError):
        await split_range(f"root://127.0.0.1:{port}//data/f.root", 1, 10, tmp_path / "r.root")
    assert list(tmp_path.iterdir()) == []


def test_root_urls_need_fsspec_xrootd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edge installed without the XRootD client says so."""
    find_spec = importlib.util.find_spec

    def without_xrootd(name: str, package: str | None = None) -> Any:
        return None if name == "fsspec_xrootd" else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_xrootd)
    with pytest.raises(PermanentError, match="fsspec-xrootd"):
        split_range_remote("root://eos.example.org//data/f.root", 1, 10, tmp_path / "r.root")


def test_unknown_schemes_and_unsigned_s3_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        split_range_remote("ftp://example.org/f.root", 1, 10, tmp_path / "r.root")
    with pytest.raises(ValueError, match="settings"):
        split_range_remote("s3://bucket/f.root", 1, 10, tmp_path / "r.root")


async def test_the_next_range_of_the_same_file_does_not_fetch_its_opening_again(
    http_root: tuple[str, Path], ntuple: Path, tmp_path: Path
) -> None:
    base, _ = http_root
    identity = f"user.ess:ntuple.root:{ntuple.stat().st_size}"
    first_out, second_out = tmp_path / "first.root", tmp_path / "second.root"

    _, cold = await split_range(f"{base}/ntuple.root", 1, 2000, first_out, identity=identity)
    _, warm = await split_range(f"{base}/ntuple.root", 1, 2000, second_out, identity=identity)
    _, other = await split_range(
        f"{base}/ntuple.root", FIRST, LAST, tmp_path / "other.root", identity=identity
    )

    assert_range_of(ntuple, second_out, 1, 2000)
    assert_range_of(ntuple, tmp_path / "other.root", FIRST, LAST)
    # The opening (header, directory, streamers, TTree record) came from the process's keep.
    assert warm < 0.9 * cold
    assert other > 0
    # Without an identity nothing is kept or reused.
    _, again = await split_range(f"{base}/ntuple.root", 1, 2000, tmp_path / "again.root")
    _, once_more = await split_range(f"{base}/ntuple.root", 1, 2000, tmp_path / "more.root")
    assert once_more == again >= cold


async def test_the_next_range_of_a_basket_fetches_only_what_the_earlier_did_not(
    http_root: tuple[str, Path], tmp_path: Path
) -> None:
    """Ranges one after the other through 6,000-event zlib baskets: each fetches the part of
    its baskets past the end of the range before it, not their beginnings again."""
    base, served = http_root
    source = write_ntuple(served / "big-baskets.root", 12_000, 6_000)
    url = f"{base}/big-baskets.root"
    identity = f"user.ess:big-baskets.root:{source.stat().st_size}"
    spans = [(6_001 + k * 500, 6_500 + k * 500) for k in range(6)]
    kept = []
    for first, last in spans:
        out = tmp_path / f"kept-{first}.root"
        _, fetched = await split_range(url, first, last, out, identity=identity)
        assert_range_of(source, out, first, last)
        kept.append(fetched)
    first, last = spans[-1]
    _, cold = await split_range(url, first, last, tmp_path / "cold.root")

    # The sixth range alone inflates its baskets from their start: six ranges' worth.
    assert kept[-1] < cold / 3
    # All six together fetched about what the sixth alone does.
    assert sum(kept[1:]) < 1.5 * cold


async def test_an_opening_handed_to_another_process_is_not_fetched_again(
    http_root: tuple[str, Path], ntuple: Path, tmp_path: Path
) -> None:
    """What `kept_opening` gives is enough for `keep_opening` elsewhere (here: after the keep is
    forgotten) to split any range of the file without fetching its opening."""
    base, _ = http_root
    url = f"{base}/ntuple.root"
    identity = f"user.ess:ntuple.root:{ntuple.stat().st_size}:handed"
    forget_kept()
    assert kept_opening(identity) is None
    _, cold = await split_range(url, 1, 2000, tmp_path / "cold.root", identity=identity)
    runs = kept_opening(identity)
    assert runs is not None and runs[0][0] == 0

    forget_kept()
    keep_opening(identity, runs)
    out = tmp_path / "handed.root"
    _, handed = await split_range(url, FIRST, LAST, out, identity=identity)
    assert_range_of(ntuple, out, FIRST, LAST)

    forget_kept()
    _, fresh = await split_range(url, FIRST, LAST, tmp_path / "fresh.root", identity=identity)
    opening = sum(len(data) for _, data in runs)
    assert 0 < handed <= fresh - opening + 1024
    assert cold > 0
