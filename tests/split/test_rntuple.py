"""RNTuples written by ROOT 6.40 with each compression, cut into range files by entry, read back
by ROOT and by uproot and compared with the source's same entries.

Sources hold every kind of column a cut handles (split, delta and zigzag encoded integers and
offsets, bits, truncated, quantized and half-precision reals, strings, nested vectors, a struct,
an array, a bitset, a variant, an optional, a streamed TNamed) in pages of at most 64 bytes and
clusters of about 6 kB, so that ranges straddle both.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import pytest
import uproot

from ess_split.errors import CorruptFile
from ess_split.rntuple.metadata import PageRecord
from ess_split.rntuple.ntuple import NTupleFile, read_ntuple
from ess_split.split import RangeFile, open_source, split_root_file
from tests.split.rntuple_root import (
    Dump,
    NTupleSpec,
    dump_ntuples,
    problems,
    uproot_judged,
    write_ntuples,
)

COMPRESSIONS = {"none": 0, "zlib": 101, "lzma": 207, "lz4": 404, "zstd": 505}
ENTRIES = 1000
UNSHOWN = {"ntpl": ("var", "named")}
#: Events per range: ranges that start and end inside pages and clusters.
STRADDLING = 137
#: The 0-based entries of the one-entry ranges: the first, one inside a page, the last.
SINGLES = (0, 500, ENTRIES - 1)


@dataclass
class Judged:
    source: Path
    ranges: list[RangeFile]
    source_dump: Dump
    dumps: list[Dump]
    stderr: str


def _split_all(source: Path, out: Path) -> list[RangeFile]:
    ranges = list(split_root_file(source, out / "straddling", STRADDLING, n_events=ENTRIES).ranges)
    for entry in SINGLES:
        ranges += split_root_file(
            source, out / "single", 1, n_events=ENTRIES, part=(entry, entry + 1)
        ).ranges
    ranges += split_root_file(source, out / "whole", 2 * ENTRIES, n_events=ENTRIES).ranges
    return ranges


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Judged]:
    base = tmp_path_factory.mktemp("rntuple")
    specs = {name: NTupleSpec(base / f"{name}.root", code) for name, code in COMPRESSIONS.items()}
    write_ntuples(list(specs.values()))
    ranges = {name: _split_all(spec.path, base / name) for name, spec in specs.items()}
    requests = []
    for name, spec in specs.items():
        requests.append((spec.path, "ntpl"))
        requests += [(r.path, "ntpl") for r in ranges[name]]
    dumps, _, stderr = dump_ntuples(requests, unshown=UNSHOWN)
    judged = {}
    at = 0
    for name, spec in specs.items():
        count = len(ranges[name])
        judged[name] = Judged(
            spec.path, ranges[name], dumps[at], dumps[at + 1 : at + 1 + count], stderr
        )
        at += 1 + count
    return judged


def _ntuple(path: Path) -> NTupleFile:
    source = open_source(path)
    (key,) = [k for k in source.top.keys if k.classname == "ROOT::RNTuple"]
    return read_ntuple(source, key)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_sources_have_clusters_and_pages_that_ranges_straddle(
    judged: dict[str, Judged], compression: str
) -> None:
    ntuple = _ntuple(judged[compression].source)
    assert ntuple.entries == ENTRIES
    assert len(ntuple.clusters) >= 3
    starts = {cluster.first_entry for cluster in ntuple.clusters}
    spans = [(r.first_event - 1, r.last_event) for r in judged[compression].ranges]
    assert any(first not in starts for first, _ in spans)
    assert any(first < start < stop for first, stop in spans for start in starts)
    assert max(len(c.pages) for cluster in ntuple.clusters for c in cluster.columns) >= 3


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_root_reads_every_range_as_the_source_entries(
    judged: dict[str, Judged], compression: str
) -> None:
    case = judged[compression]
    assert case.stderr == ""
    source = case.source_dump
    assert source.error is None and source.entries == ENTRIES == source.via_key
    assert "var=0:0" in source.rows[0] and "named=n0/" in source.rows[0]
    for range_file, dump in zip(case.ranges, case.dumps, strict=True):
        first, stop = range_file.first_event - 1, range_file.last_event
        assert problems(source.rows, first, stop, dump) == [], range_file.path.name
        assert dump.via_key == stop - first


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_uproot_reads_every_range_as_the_source_entries(
    judged: dict[str, Judged], compression: str
) -> None:
    case = judged[compression]
    with uproot.open(case.source) as handle:
        fields = uproot_judged(handle["ntpl"])
        source = handle["ntpl"].arrays(fields)
    for range_file in case.ranges:
        first, stop = range_file.first_event - 1, range_file.last_event
        with uproot.open(range_file.path) as handle:
            cut = handle["ntpl"].arrays(fields)
        assert ak.to_list(cut) == ak.to_list(source[first:stop]), range_file.path.name


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_range_of_the_whole_file_carries_every_page_as_stored(
    judged: dict[str, Judged], compression: str
) -> None:
    case = judged[compression]
    (whole,) = [r for r in case.ranges if r.first_event == 1 and r.last_event == ENTRIES]
    source, copy = _ntuple(case.source), _ntuple(whole.path)
    assert copy.header_stored == source.header_stored
    assert [(c.first_entry, c.entries) for c in copy.clusters] == [
        (c.first_entry, c.entries) for c in source.clusters
    ]
    for theirs, ours in zip(source.clusters, copy.clusters, strict=True):
        for column_theirs, column_ours in zip(theirs.columns, ours.columns, strict=True):
            assert column_ours.first_element == column_theirs.first_element
            assert column_ours.compression == column_theirs.compression
            assert len(column_ours.pages) == len(column_theirs.pages)
            for page_theirs, page_ours in zip(column_theirs.pages, column_ours.pages, strict=True):
                assert page_ours.elements == page_theirs.elements
                assert _stored(copy, page_ours) == _stored(source, page_theirs)


def _stored(ntuple: NTupleFile, page: PageRecord) -> bytes:
    locator = page.locator
    return ntuple.source.read(locator.offset, locator.offset + locator.size)


def test_a_range_shifted_by_one_entry_is_caught(judged: dict[str, Judged]) -> None:
    case = judged["zstd"]
    for range_file, dump in zip(case.ranges, case.dumps, strict=True):
        first, stop = range_file.first_event - 1, range_file.last_event
        if stop < ENTRIES:
            assert problems(case.source_dump.rows, first + 1, stop + 1, dump) != []


def test_a_truncated_range_file_is_caught(judged: dict[str, Judged], tmp_path: Path) -> None:
    case = judged["zstd"]
    chosen = [r for r in case.ranges if r.last_event - r.first_event + 1 == STRADDLING][1]
    truncated = tmp_path / "truncated.root"
    shutil.copyfile(chosen.path, truncated)
    with truncated.open("r+b") as stream:
        stream.truncate(chosen.size * 2 // 3)
    (dump,), _, _ = dump_ntuples([(truncated, "ntpl")], unshown=UNSHOWN)
    first, stop = chosen.first_event - 1, chosen.last_event
    assert problems(case.source_dump.rows, first, stop, dump) != []


def test_a_page_failing_its_checksum_makes_the_file_corrupt(
    judged: dict[str, Judged], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.root"
    shutil.copyfile(judged["zlib"].source, corrupt)
    ntuple = _ntuple(corrupt)
    cluster = ntuple.clusters[len(ntuple.clusters) // 2]
    page = max((p for c in cluster.columns for p in c.pages), key=lambda p: p.locator.size)
    assert page.checksum
    data = bytearray(corrupt.read_bytes())
    data[page.locator.offset + page.locator.size // 2] ^= 0x10
    corrupt.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match="fails its checksum"):
        split_root_file(corrupt, tmp_path / "out", 2 * ENTRIES, n_events=ENTRIES)
