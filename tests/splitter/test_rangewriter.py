"""Range files written from a template are the files uproot's own writer makes: the same TTree,
TBranch and TLeaf numbers and the same baskets for the same entries; source baskets that a
range holds whole are copied byte for byte; the checksum is that of the bytes on disk."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

from ess_splitter.rangewriter import _adler32_combine
from ess_splitter.rootsplit import split_root_file
from tests.splitter.test_faithful_corpus import counter_of
from tests.splitter.test_parallel import TREE, write_ntuple

BRANCH_MEMBERS = ("fEntries", "fEntryNumber", "fWriteBasket", "fTotBytes", "fZipBytes")
LEAF_MEMBERS = ("fLen", "fLenType", "fIsRange", "fMinimum", "fMaximum")


@pytest.fixture(scope="module")
def ntuple(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ntuple(tmp_path_factory.mktemp("writer") / "ntuple.root", 2_000, 400)


def uproot_written(source: Path, path: Path, first: int, last: int, block: int) -> Path:
    """Events first..last of ``source`` written by uproot, one extend per ``block`` events."""
    with uproot.open(source) as original:
        tree = original[TREE]
        arrays = tree.arrays(library="ak", how=dict, entry_start=first - 1, entry_stop=last)
        types = {name: array.type.content for name, array in arrays.items()}
        counters = {b.name: counter_of(b) for b in tree.branches if counter_of(b) is not None}
    with uproot.recreate(path, compression=uproot.ZLIB(0)) as out:
        written = out.mktree(
            TREE,
            types,
            title="test ntuple",
            counter_name=counters.__getitem__,
            initial_basket_capacity=(last - first) // block + 2,
        )
        for start in range(0, last - first + 1, block):
            written.extend({name: array[start : start + block] for name, array in arrays.items()})
    return path


def members(model: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: model.member(name) for name in names}


def test_range_file_metadata_and_baskets_are_uproots(ntuple: Path, tmp_path: Path) -> None:
    # Uncompressed, so that every size is determined by the entries alone; 3 baskets a range.
    result = split_root_file(
        ntuple, tmp_path / "ours", 700, block_events=300, compression=uproot.ZLIB(0)
    )
    for range_file in result.ranges:
        reference = uproot_written(
            ntuple,
            tmp_path / f"uproot-{range_file.first_event}.root",
            range_file.first_event,
            range_file.last_event,
            300,
        )
        with uproot.open(range_file.path) as ours, uproot.open(reference) as theirs:
            ours_tree, their_tree = ours[TREE], theirs[TREE]
            for name in ("fEntries", "fTotBytes", "fZipBytes"):
                assert ours_tree.member(name) == their_tree.member(name), name
            assert ours_tree.keys() == their_tree.keys()
            for branch in ours_tree.branches:
                their = their_tree[branch.name]
                assert members(branch, BRANCH_MEMBERS) == members(their, BRANCH_MEMBERS)
                n = branch.num_baskets
                np.testing.assert_array_equal(
                    branch.member("fBasketBytes")[:n], their.member("fBasketBytes")[:n]
                )
                np.testing.assert_array_equal(
                    branch.member("fBasketEntry")[: n + 1], their.member("fBasketEntry")[: n + 1]
                )
                assert members(branch.member("fLeaves")[0], LEAF_MEMBERS) == members(
                    their.member("fLeaves")[0], LEAF_MEMBERS
                ), branch.name
                for number in range(n):
                    mine, reference_basket = branch.basket(number), their.basket(number)
                    assert mine.data.tobytes() == reference_basket.data.tobytes()
                    for field in ("fKeylen", "fObjlen", "fNbytes", "fNevBuf", "fLast"):
                        assert mine.member(field) == reference_basket.member(field), field


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


def test_streamers_are_stored_compressed_and_read_back(ntuple: Path, tmp_path: Path) -> None:
    (range_file, *_) = split_root_file(ntuple, tmp_path, 1_000).ranges
    with uproot.open(range_file.path) as written:
        assert {"TTree", "TBranch", "TLeafI", "TLeafC"} <= set(written.file.streamers)
        info = written.file.fNbytesInfo
    # uproot alone writes these streamers as some 20 kB, uncompressed.
    assert info < 8_000


def test_adler32_of_joined_bytes() -> None:
    rng = np.random.default_rng(1)
    for length in (0, 1, 100, 65_521, 200_000):
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        for cut in {0, length // 3, length}:
            head, tail = data[:cut], data[cut:]
            combined = _adler32_combine(zlib.adler32(head), zlib.adler32(tail), len(tail))
            assert combined == zlib.adler32(data)


def test_range_file_checksum_is_that_of_the_file(ntuple: Path, tmp_path: Path) -> None:
    for range_file in split_root_file(ntuple, tmp_path, 333, compression=uproot.LZ4(1)).ranges:
        content = range_file.path.read_bytes()
        assert (range_file.size, range_file.adler32) == (
            len(content),
            f"{zlib.adler32(content):08x}",
        )
        assert os.path.getsize(range_file.path) == range_file.size
