"""The RNTuple format's parts on their own (no ROOT needed): the anchor, page lists, pages cut
in each encoding; and sources whose RNTuple is corrupt or not cut, as a split reports them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from ess_split.errors import CorruptFile, UnsplittableFile
from ess_split.format.buffer import RecordError
from ess_split.format.keys import Key
from ess_split.format.walker import Unsupported
from ess_split.rntuple import read_ntuple
from ess_split.rntuple.anchor import Anchor
from ess_split.rntuple.binary import Locator
from ess_split.rntuple.metadata import (
    ClusterRecord,
    ColumnRange,
    PageRecord,
    page_list_envelope,
    parse_page_list,
)
from ess_split.rntuple.pages import PageCodec, column_type
from ess_split.split import open_source, split_root_file

ANCHOR = Anchor(2, (1, 0, 2, 0), 258, 207, 412, 10376, 129, 160, 1 << 30)


def test_an_anchor_reads_back_as_written() -> None:
    assert Anchor.parse(ANCHOR.pack()) == ANCHOR
    assert len(ANCHOR.pack()) == 78


def test_an_anchor_failing_its_checksum_is_a_record_error() -> None:
    record = bytearray(ANCHOR.pack())
    record[20] ^= 1
    with pytest.raises(RecordError, match="checksum"):
        Anchor.parse(bytes(record))


def test_a_pre_release_anchor_is_not_cut() -> None:
    record = Anchor(2, (0, 2, 0, 0), 0, 0, 0, 0, 0, 0, 0).pack()
    with pytest.raises(Unsupported, match="epoch 0"):
        Anchor.parse(record)


def test_a_page_list_reads_back_as_written() -> None:
    pages = [PageRecord(10, True, Locator(33, 1000)), PageRecord(5, False, Locator(3**20, 2**40))]
    clusters = [
        ClusterRecord(0, 7, [ColumnRange(0, 505, pages), ColumnRange(None, 0, [])]),
        ClusterRecord(7, 3, [ColumnRange(15, 0, []), ColumnRange(None, 0, [])]),
    ]
    checksum, found = parse_page_list(page_list_envelope(1234, clusters))
    assert checksum == 1234
    assert found == clusters


def _split(values: np.ndarray, width: int) -> bytes:
    return bytes(values.view(np.uint8).reshape(-1, width).T.tobytes())


def test_a_delta_split_index_page_is_cut_and_rebased() -> None:
    codec = PageCodec(column_type(0x1B, 64), 64)
    offsets = np.array([2, 2, 5, 9, 9, 14], "<u8")
    deltas = np.diff(offsets, prepend=np.uint64(0)).astype("<u8")
    cut = codec.cut(_split(deltas, 8), 6, 2, 5, base=2)
    assert codec.offsets(cut, 3).tolist() == [3, 7, 7]


def test_a_zigzag_split_page_is_cut_by_element() -> None:
    codec = PageCodec(column_type(0x13, 32), 32)
    values = np.array([0, 2, 1, 4, 3, 6], "<u4")
    cut = codec.cut(_split(values, 4), 6, 1, 4, base=0)
    assert cut == _split(values[1:4], 4)


@pytest.mark.parametrize(("code", "bits"), [(0x00, 1), (0x1C, 20), (0x1D, 7), (0x1D, 32)])
def test_bit_packed_pages_are_cut_at_any_element(code: int, bits: int) -> None:
    codec = PageCodec(column_type(code, bits), bits)
    rng = np.random.default_rng(7)
    items = rng.integers(0, 2, size=(37, bits), dtype=np.uint8)
    page = bytes(np.packbits(items.reshape(-1), bitorder="little").tobytes())
    assert len(page) == codec.size(37)
    cut = codec.cut(page, 37, 5, 22, base=0)
    assert len(cut) == codec.size(17)
    unpacked = np.unpackbits(np.frombuffer(cut, np.uint8), bitorder="little")[: 17 * bits]
    assert np.array_equal(unpacked.reshape(17, bits), items[5:22])


def test_a_switch_page_is_rebased_per_alternative() -> None:
    codec = PageCodec(column_type(0x10, 96), 96)
    index = np.array([0, 0, 1, 1, 2, 0], "<u8")
    tags = np.array([1, 2, 1, 2, 1, 0], "<u4")
    rows = np.concatenate(
        [index.view(np.uint8).reshape(-1, 8), tags.view(np.uint8).reshape(-1, 4)], 1
    )
    cut = codec.cut(rows.tobytes(), 6, 2, 6, base={1: 1, 2: 1})
    found_index, found_tags = codec.switches(cut, 4)
    assert found_index.tolist() == [0, 0, 1, 0]
    assert found_tags.tolist() == [1, 2, 1, 0]


def _uproot_file(path: Path) -> Path:
    with uproot.recreate(path) as handle:
        handle.mkrntuple("ntpl", ak.Array({"x": np.arange(50, dtype=np.int32)}))
    return path


def _anchor_key(path: Path) -> Key:
    source = open_source(path)
    (key,) = source.top.keys
    source.uproot.close()
    return key


def _flip(path: Path, position: int, bits: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= bits
    path.write_bytes(bytes(data))


def test_an_anchor_failing_its_checksum_makes_the_file_corrupt(tmp_path: Path) -> None:
    path = _uproot_file(tmp_path / "bad.root")
    key = _anchor_key(path)
    _flip(path, key.seek_key + key.nbytes - 1, 0xFF)
    with pytest.raises(CorruptFile, match="anchor fails its checksum"):
        split_root_file(path, tmp_path / "out", 10)


def test_a_page_list_that_is_not_one_makes_the_file_corrupt(tmp_path: Path) -> None:
    path = _uproot_file(tmp_path / "bad.root")
    with uproot.open(path) as handle:
        link = handle["ntpl"].footer.cluster_group_records[0].page_list_link.locator
    _flip(path, link.offset, 0x07)
    with pytest.raises(CorruptFile, match="page list"):
        split_root_file(path, tmp_path / "out", 10)


def test_an_anchor_of_a_later_class_version_is_unsplittable(tmp_path: Path) -> None:
    path = _uproot_file(tmp_path / "later.root")
    key = _anchor_key(path)
    # The byte count (0x42 for 64 bytes of fields) claims 8 more than this version reads.
    _flip(path, key.seek_key + key.keylen + 3, 0x42 ^ 0x4A)
    with pytest.raises(UnsplittableFile, match="class version 2"):
        split_root_file(path, tmp_path / "out", 10)


def test_an_rntuple_of_the_pre_release_format_is_not_read(tmp_path: Path) -> None:
    source = open_source(_uproot_file(tmp_path / "old.root"))
    (key,) = source.top.keys
    with pytest.raises(Unsupported, match="pre-release"):
        read_ntuple(source, replace(key, classname="ROOT::Experimental::RNTuple"))
