"""What a range file is made of: the source's own TTree and branch records with only what
describes the entries and baskets changed; source baskets that a range holds whole copied byte
for byte when the source's compression is kept; the source's streamer record as stored; the
checksum that of the bytes on disk."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

from ess_split.format.codecs import Compression
from ess_split.rangefile import _adler32_combine
from ess_split.split import file_adler32, split_root_file
from tests.split.test_parallel import TREE, write_ntuple

#: What a range file's tree record changes of the source's: entry and byte counts, baskets,
#: clusters.
TREE_CHANGED = frozenset(
    {
        "fEntries",
        "fTotBytes",
        "fZipBytes",
        "fSavedBytes",
        "fFlushedBytes",
        "fNClusterRange",
        "fClusterRangeEnd",
        "fClusterSize",
    }
)
BRANCH_CHANGED = frozenset(
    {
        "fWriteBasket",
        "fEntryNumber",
        "fMaxBaskets",
        "fEntries",
        "fTotBytes",
        "fZipBytes",
        "fBasketBytes",
        "fBasketEntry",
        "fBasketSeek",
        "fBaskets",
    }
)


@pytest.fixture(scope="module")
def ntuple(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ntuple(tmp_path_factory.mktemp("writer") / "ntuple.root", 2_000, 400)


def plain(value: Any, changed: frozenset[str], depth: int = 0) -> Any:
    """A model's members as plain values, recursively, without those named in ``changed``."""
    assert depth < 20
    members = getattr(value, "all_members", None)
    if members is not None:
        found: dict[str, Any] = {"class": type(value).__name__}
        for name, member in members.items():
            if name not in changed:
                found[name] = plain(member, changed, depth + 1)
        if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
            found["items"] = [plain(item, changed, depth + 1) for item in value]
        return found
    if isinstance(value, dict):
        return {name: plain(item, changed, depth + 1) for name, item in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [plain(item, changed, depth + 1) for item in value]
    return value


def branch_records(tree: Any) -> dict[str, Any]:
    return {
        name: plain(tree[name], BRANCH_CHANGED)
        for name in tree.keys(recursive=True, full_paths=True)
    }


def tree_record(tree: Any) -> Any:
    members = {
        name: value
        for name, value in tree.all_members.items()
        if name not in TREE_CHANGED and name not in ("fBranches", "fLeaves")
    }
    return plain(members, frozenset())


@pytest.mark.parametrize("name", ["vectors-lzma.root", "objects-zstd.root", "pool-lz4.root"])
def test_range_file_records_are_the_sources_but_for_entries_and_baskets(
    name: str, own_files: Path, tmp_path: Path
) -> None:
    source = own_files / name
    tree_path = "CollectionTree" if name.startswith("pool") else "events"
    result = split_root_file(source, tmp_path, 137, part=(2, 4))
    with uproot.open(source) as original:
        expected = original[tree_path]
        for range_file in result.ranges:
            with uproot.open(range_file.path) as written:
                tree = written[tree_path]
                assert tree.num_entries == 137
                assert tree_record(tree) == tree_record(expected)
                assert branch_records(tree) == branch_records(expected)
                if tree_path == "CollectionTree":
                    # Trees of other entry counts are carried: only where their baskets are changes.
                    for carried in ("##Params", "##Links", "MetaData"):
                        assert plain(written[carried], frozenset({"fBasketSeek"})) == plain(
                            original[carried], frozenset({"fBasketSeek"})
                        )


def test_whole_source_baskets_are_copied_byte_for_byte(ntuple: Path, tmp_path: Path) -> None:
    # Ranges of two source baskets each, keeping the source's compression.
    result = split_root_file(ntuple, tmp_path, 800)
    with uproot.open(ntuple) as original:
        source_tree = original[TREE]
        for range_file in result.ranges:
            with uproot.open(range_file.path) as written:
                tree = written[TREE]
                for branch in tree.branches:
                    source_branch = source_tree[branch.name]
                    first_basket = (range_file.first_event - 1) // 400
                    for number in range(branch.num_baskets):
                        assert stored(branch, number) == stored(
                            source_branch, first_basket + number
                        )


def stored(branch: Any, number: int) -> bytes:
    """The compressed bytes of a basket, after its key header."""
    chunk, cursor = branch.basket_chunk_cursor(number)
    key_length = int(branch.basket_key(number).fKeylen)
    size = int(branch.basket_compressed_bytes(number))
    return bytes(chunk.get(cursor.index + key_length, cursor.index + size, cursor, {}))


def streamer_record(path: Path) -> bytes:
    """The stored streamer record (after its key) of the file at ``path``."""
    with uproot.open(path) as root_file:
        start, size = int(root_file.file.fSeekInfo), int(root_file.file.fNbytesInfo)
    raw = path.read_bytes()[start : start + size]
    keylen = int.from_bytes(raw[14:16], "big")
    return raw[keylen:]


@pytest.mark.parametrize("compression", [None, Compression("lz4", 1)])
def test_streamers_are_the_sources_as_stored(
    compression: Compression | None, own_files: Path, tmp_path: Path
) -> None:
    source = own_files / "objects-lzma.root"
    (range_file, *_) = split_root_file(source, tmp_path, 500, compression=compression).ranges
    assert streamer_record(range_file.path) == streamer_record(source)
    with uproot.open(range_file.path) as written:
        assert {"EssEvent", "EssTrack", "EssHit", "TTree"} <= set(written.file.streamers)


def test_adler32_of_joined_bytes() -> None:
    rng = np.random.default_rng(1)
    for length in (0, 1, 100, 65_521, 200_000):
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        for cut in {0, length // 3, length}:
            head, tail = data[:cut], data[cut:]
            combined = _adler32_combine(zlib.adler32(head), zlib.adler32(tail), len(tail))
            assert combined == zlib.adler32(data)


def test_range_file_checksum_is_that_of_the_file(ntuple: Path, tmp_path: Path) -> None:
    lz4 = Compression("lz4", 1)
    for range_file in split_root_file(ntuple, tmp_path, 333, compression=lz4).ranges:
        assert (range_file.size, range_file.adler32) == file_adler32(range_file.path)
        content = range_file.path.read_bytes()
        assert range_file.adler32 == f"{zlib.adler32(content):08x}"
        assert os.path.getsize(range_file.path) == range_file.size
