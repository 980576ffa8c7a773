"""zlib range files are compressed by python-isal: the same zlib format in ROOT's "ZL" blocks,
read back by uproot (with the standard library's zlib) exactly as the source. Without isal the
splitter falls back on the standard library's zlib, with the same result."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import isal.isal_zlib
import pytest
import uproot

from ess_split.format import codecs
from ess_split.format.codecs import Compression, compress, parse_compression
from ess_split.split import split_root_file
from tests.split.faithful import assert_faithful, data

_KEY_START = struct.Struct(">ihiIh")


def test_isal_is_the_zlib_compressor() -> None:
    assert codecs._ISAL is isal.isal_zlib
    payload = b"".join(i.to_bytes(4, "big") for i in range(50_000))
    stored = compress(payload, Compression("zlib", 1))
    # ROOT's block header: "ZL", method 8 (deflate), the compressed and uncompressed sizes.
    assert stored[:3] == b"ZL\x08"
    assert int.from_bytes(stored[3:6], "little") == len(stored) - 9
    assert int.from_bytes(stored[6:9], "little") == len(payload)
    assert stored[9:] == isal.isal_zlib.compress(payload, 1)
    # A zlib stream (header and adler32 trailer), as ROOT's and uproot's readers expect.
    assert zlib.decompress(stored[9:]) == payload


def _first_basket_stored(path: Path, tree_path: str) -> bytes:
    """The stored bytes (after the TKey) of the first basket of the tree's first branch."""
    with uproot.open(path) as root_file:
        branch = root_file[tree_path].branches[0]
        chunk, cursor = branch.basket_chunk_cursor(0)
        stop = cursor.index + int(branch.basket_compressed_bytes(0))
        key = bytes(chunk.get(cursor.index, stop, cursor, {}))
    key_length = _KEY_START.unpack_from(key, 0)[4]
    return key[key_length:]


def _counting_isal(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    compress: Callable[..., bytes] = isal.isal_zlib.compress

    def counted(data: Any, level: int = 2) -> bytes:
        calls.append(len(data))
        return compress(data, level)

    monkeypatch.setattr(isal.isal_zlib, "compress", counted)
    return calls


@pytest.mark.parametrize("spec", ["source", "zlib:1"])
def test_isal_range_files_read_back_as_the_source(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting_isal(monkeypatch)
    # HZZ is zlib level 1 (fCompress 1), so "source" re-encodes its cut baskets at zlib:1 too.
    source = data("uproot-HZZ.root")
    result = split_root_file(source, tmp_path, 700, compression=parse_compression(spec))
    assert calls, "no basket was compressed by isal"
    assert_faithful(source, tmp_path, result, 700)
    stored = _first_basket_stored(result.ranges[0].path, "events")
    # ROOT's zlib block header: "ZL", method 8 (deflate), then the two 3-byte sizes.
    assert stored[:3] == b"ZL\x08"
    with uproot.open(result.ranges[0].path) as written:
        assert written.file.fCompress == 101


def test_without_isal_the_range_files_are_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = data("uproot-HZZ.root")
    zlib1 = Compression("zlib", 1)
    with_isal = split_root_file(source, tmp_path / "isal", 700, compression=zlib1)
    calls = _counting_isal(monkeypatch)
    monkeypatch.setattr(codecs, "_ISAL", None)
    without = split_root_file(source, tmp_path / "zlib", 700, compression=zlib1)
    assert not calls
    assert_faithful(source, tmp_path / "zlib", without, 700)
    for first, second in zip(with_isal.ranges, without.ranges, strict=True):
        with uproot.open(first.path) as a, uproot.open(second.path) as b:
            left = a["events"].arrays(library="ak")
            right = b["events"].arrays(library="ak")
            assert ak.array_equal(left, right, dtype_exact=True)
