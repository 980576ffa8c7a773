"""Splitting one file's ranges across worker processes: the same range files as a serial split,
none left behind when a worker fails, the unsplittable policy applied before any worker starts,
and the edge's `split_workers` setting reaching the splitter service."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from pydantic import ValidationError

from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore
from ess_split import parallel
from ess_split.errors import UnsplittableFile
from ess_split.format.codecs import Compression
from ess_split.parallel import resolve_workers, split_root_file_parallel
from ess_split.split import split_root_file
from ess_splitter.service import Splitter
from ess_splitter.strategy import SplitOptions, split_file
from tests.split.faithful import assert_faithful
from tests.splitter.test_splitter_service import (
    HZZ_EVENTS,
    IDLE_BUS,
    cache,
    edge_settings,
    file_cached,
)

TREE = "Events"


def write_ntuple(
    path: Path,
    n_events: int,
    basket_events: int,
    *,
    compression: Any = None,
    seed: int = 7,
) -> Path:
    """An ntuple (zlib level 1 by default) with every writable kind of branch, one basket per
    ``basket_events``."""
    rng = np.random.default_rng(seed)
    if compression is None:
        compression = uproot.ZLIB(1)
    types: dict[str, Any] = {
        "event": np.int64,
        "weight": np.float64,
        "vtx": np.dtype((np.float32, (3,))),
        "nJet": np.int32,
        "Jet_pt": "var * float32",
        "tag": "string",
    }
    with uproot.recreate(path, compression=compression) as out:
        tree = out.mktree(
            TREE,
            {
                name: ak.types.from_datashape(kind, highlevel=False)
                if isinstance(kind, str)
                else kind
                for name, kind in types.items()
            },
            title="test ntuple",
            counter_name=lambda counted: "nJet",
        )
        for start in range(0, n_events, basket_events):
            n = min(basket_events, n_events - start)
            counts = rng.poisson(4.0, n).astype(np.int32)
            tree.extend(
                {
                    "event": np.arange(start, start + n, dtype=np.int64),
                    "weight": rng.normal(1.0, 0.1, n),
                    "vtx": rng.normal(0.0, 1.0, (n, 3)).astype(np.float32),
                    "Jet_pt": ak.unflatten(
                        rng.exponential(30.0, int(counts.sum())).astype(np.float32), counts
                    ),
                    "tag": ak.Array([f"run{start + i}" * (i % 3) for i in range(n)]),
                }
            )
    return path


@pytest.fixture(scope="module")
def ntuple(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ntuple(tmp_path_factory.mktemp("ntuple") / "ntuple.root", 5_000, 400)


def range_contents(paths: list[Path]) -> list[dict[str, list[Any]]]:
    contents = []
    for path in paths:
        with uproot.open(path) as root_file:
            arrays = root_file[TREE].arrays(library="ak", how=dict)
        contents.append({name: array.tolist() for name, array in arrays.items()})
    return contents


@pytest.mark.parametrize("compression", [None, Compression("lz4", 1)])
def test_workers_write_the_ranges_of_a_serial_split(
    ntuple: Path, compression: Compression | None, tmp_path: Path
) -> None:
    parallel_dir, serial_dir = tmp_path / "parallel", tmp_path / "serial"
    result = split_root_file_parallel(
        ntuple, parallel_dir, 700, workers=3, compression=compression, min_bytes_per_worker=0
    )
    serial = split_root_file(ntuple, serial_dir, 700, compression=compression)

    assert_faithful(ntuple, parallel_dir, result, 700)
    assert [(r.first_event, r.last_event, r.path.name) for r in result.ranges] == [
        (r.first_event, r.last_event, r.path.name) for r in serial.ranges
    ]
    assert range_contents([r.path for r in result.ranges]) == range_contents(
        [r.path for r in serial.ranges]
    )


def test_a_failing_worker_leaves_no_range_file(ntuple: Path, tmp_path: Path) -> None:
    # A directory where a range file of the last worker's block belongs makes its rename fail
    # after the other workers have written theirs.
    blocker = tmp_path / "range.000004501-000005000.root"
    blocker.mkdir()
    with pytest.raises(OSError):
        split_root_file_parallel(ntuple, tmp_path, 500, workers=2, min_bytes_per_worker=0)
    assert list(tmp_path.iterdir()) == [blocker]


def test_unsplittable_file_fails_before_any_worker(own_files: Path, tmp_path: Path) -> None:
    # A tree with a friend is refused when planned.
    source = own_files / "friends.root"
    out_dir = tmp_path / "out"
    with pytest.raises(UnsplittableFile):
        split_root_file_parallel(source, out_dir, 10, workers=2, min_bytes_per_worker=0)
    assert not out_dir.exists()


async def test_unsplittable_file_is_delivered_whole(own_files: Path, tmp_path: Path) -> None:
    source = own_files / "friends.root"
    result = await split_file(
        source, tmp_path, 10, 100, SplitOptions(unsplittable="whole", workers=2)
    )
    (whole,) = result.ranges
    assert (whole.first_event, whole.last_event) == (1, 100)
    assert whole.path.read_bytes() == source.read_bytes()
    assert result.whole_reason is not None


def test_small_files_and_few_ranges_stay_in_process(ntuple: Path, tmp_path: Path) -> None:
    # One range (or a file below the per-worker minimum) is not worth a process.
    result = split_root_file_parallel(ntuple, tmp_path, 10_000, workers=4)
    assert_faithful(ntuple, tmp_path, result, 10_000)


def test_workers_setting() -> None:
    assert resolve_workers(0) >= 1
    assert resolve_workers(3) == 3
    with pytest.raises(ValueError):
        resolve_workers(-1)
    assert EdgeSettings().split_workers == 0
    with pytest.raises(ValidationError, match="split_workers"):
        EdgeSettings(split_workers=-1)


@pytest.mark.parametrize("workers", [0, 2])
async def test_splitter_service_splits_with_its_workers(
    workers: int, tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any file is large enough to share here, so that worker processes really run.
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_WORKER", 0)
    settings = edge_settings(tmp_path, split_workers=workers)
    lfn = "NTUP.000002.uproot-HZZ.root"
    cache(settings, "uproot-HZZ.root", lfn)
    splitter = Splitter(settings, IDLE_BUS, store)
    done = await splitter.handle_file_cached(file_cached(settings, lfn, HZZ_EVENTS))

    assert [(r.first_event, r.last_event) for r in done.ranges] == [
        (1, 500),
        (501, 1000),
        (1001, 1500),
        (1501, 2000),
        (2001, 2421),
    ]
    for info in done.ranges:
        content = await store.get_bytes(info.key)
        assert (len(content), f"{zlib.adler32(content):08x}") == (info.size, info.adler32)
