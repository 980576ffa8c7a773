"""RNTuples among other containers, RNTuples whose fields grew while written, and RNTuples
written by uproot.

A file written by ROOT holds a TTree and an RNTuple with the file's events and, in a
subdirectory, an RNTuple of other entries: the tree and the RNTuple are cut alike, the other
RNTuple is carried whole into every range file with its pages as stored. Fields added to an
RNTuple while ROOT wrote it (inside a cluster, and after clusters were written) have deferred
columns: zeros before their first entry, which range files start where the range does. An
RNTuple written by
uproot (several cluster groups, one per ``extend``, unsplit and uncompressed columns) is cut
too. ROOT reads every range file as the source's same entries, and so does uproot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from ess_split.rntuple.ntuple import NTupleFile, read_ntuple
from ess_split.split import (
    RangeFile,
    RangeTarget,
    open_source,
    planned,
    split_root_file,
    write_ranges,
)
from tests.split.rntuple_root import (
    Dump,
    TreeDump,
    dump_ntuples,
    problems,
    uproot_judged,
    write_extended,
    write_mixed,
)

EVENTS = 500
UNSHOWN = {"ntpl": ("var", "named")}
META = 7
#: Events per range of the mixed file: ranges straddle the tree's baskets and the RNTuple's
#: pages and clusters.
PER_RANGE = 173
UPROOT_CHUNKS = ((0, 100), (100, 150), (250, 150), (400, 100))
UPROOT_EVENTS = 500


@dataclass
class Mixed:
    source: Path
    ranges: list[RangeFile]
    ntuples: list[Dump]
    trees: list[TreeDump]
    stderr: str


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Mixed:
    base = tmp_path_factory.mktemp("mixed")
    source = base / "mixed.root"
    write_mixed(source, EVENTS, META, 404)
    ranges = list(split_root_file(source, base / "out", PER_RANGE, n_events=EVENTS).ranges)
    ranges += split_root_file(source, base / "single", 1, n_events=EVENTS, part=(250, 251)).ranges
    paths = [source, *(r.path for r in ranges)]
    requests = [(path, name) for path in paths for name in ("ntpl", "aux/meta")]
    ntuples, trees, stderr = dump_ntuples(
        requests, unshown=UNSHOWN, trees=[(path, "events") for path in paths]
    )
    return Mixed(source, ranges, ntuples, trees, stderr)


def test_root_reads_the_cut_tree_and_rntuple_and_the_carried_rntuple(mixed: Mixed) -> None:
    assert mixed.stderr == ""
    source_ntuple, source_meta = mixed.ntuples[0], mixed.ntuples[1]
    source_tree = mixed.trees[0]
    assert source_ntuple.entries == EVENTS and source_tree.entries == EVENTS
    assert source_meta.entries == META
    for index, range_file in enumerate(mixed.ranges, start=1):
        first, stop = range_file.first_event - 1, range_file.last_event
        ntuple, meta = mixed.ntuples[2 * index], mixed.ntuples[2 * index + 1]
        name = range_file.path.name
        assert problems(source_ntuple.rows, first, stop, ntuple) == [], name
        assert problems(source_tree.rows, first, stop, mixed.trees[index]) == [], name
        assert problems(source_meta.rows, 0, META, meta) == [], name


def test_uproot_reads_the_cut_and_carried_containers(mixed: Mixed) -> None:
    with uproot.open(mixed.source) as handle:
        tree = handle["events"].arrays()
        meta = handle["aux/meta"].arrays()
        fields = uproot_judged(handle["ntpl"])
        ntuple = handle["ntpl"].arrays(fields)
    for range_file in mixed.ranges:
        first, stop = range_file.first_event - 1, range_file.last_event
        with uproot.open(range_file.path) as handle:
            assert ak.to_list(handle["events"].arrays()) == ak.to_list(tree[first:stop])
            assert ak.to_list(handle["ntpl"].arrays(fields)) == ak.to_list(ntuple[first:stop])
            assert ak.to_list(handle["aux/meta"].arrays()) == ak.to_list(meta)


def _meta(path: Path) -> NTupleFile:
    source = open_source(path)
    (aux,) = source.top.subdirectories
    (key,) = [k for k in aux.keys if k.classname == "ROOT::RNTuple"]
    return read_ntuple(source, key)


def test_the_carried_rntuple_keeps_its_pages_as_stored(mixed: Mixed) -> None:
    source = _meta(mixed.source)
    for range_file in mixed.ranges:
        copy = _meta(range_file.path)
        assert copy.header_stored == source.header_stored
        assert copy.entries == META
        pages = [
            (page.elements, _read(copy, page.locator.offset, page.locator.size))
            for cluster in copy.clusters
            for column in cluster.columns
            for page in column.pages
        ]
        assert pages == [
            (page.elements, _read(source, page.locator.offset, page.locator.size))
            for cluster in source.clusters
            for column in cluster.columns
            for page in column.pages
        ]


def _read(ntuple: NTupleFile, offset: int, size: int) -> bytes:
    return ntuple.source.read(offset, offset + size)


def _chunk(start: int, count: int) -> ak.Array:
    k = np.arange(start, start + count)
    return ak.Array(
        {
            "i": (k * 7 - 300).astype(np.int32),
            "l": (k - 50).astype(np.int64) * 10**12,
            "u": k.astype(np.uint16),
            "f": (k * 0.25 + 0.1).astype(np.float32),
            "d": k / 3.0,
            "b": k % 3 == 0,
            "vf": [[float(x) + j / 10 for j in range(x % 5)] for x in k],
            "vvi": [[[x * 10 + m for m in range(j)] for j in range(x % 4)] for x in k],
            "s": ["s" + "x" * (x % 11) for x in k],
            "rec": ak.zip({"x": -k.astype(np.float32), "y": k.astype(np.int64)}),
        }
    )


def test_an_rntuple_written_by_uproot_is_cut(tmp_path: Path) -> None:
    source = tmp_path / "uproot.root"
    with uproot.recreate(source) as handle:
        (start, count), *rest = UPROOT_CHUNKS
        handle.mkrntuple("ntpl", _chunk(start, count))
        for start, count in rest:
            handle["ntpl"].extend(_chunk(start, count))
    ntuple = read_ntuple(open_source(source), open_source(source).top.keys[0])
    assert len(ntuple.footer.groups) == len(UPROOT_CHUNKS)
    ranges = list(split_root_file(source, tmp_path / "out", 123, n_events=UPROOT_EVENTS).ranges)
    ranges += split_root_file(source, tmp_path / "one", 1, part=(99, 101)).ranges
    ranges += split_root_file(source, tmp_path / "whole", UPROOT_EVENTS).ranges
    dumps, _, stderr = dump_ntuples([(source, "ntpl"), *((r.path, "ntpl") for r in ranges)])
    assert stderr == ""
    assert dumps[0].entries == UPROOT_EVENTS
    with uproot.open(source) as handle:
        expected = handle["ntpl"].arrays()
    for range_file, dump in zip(ranges, dumps[1:], strict=True):
        first, stop = range_file.first_event - 1, range_file.last_event
        assert problems(dumps[0].rows, first, stop, dump) == [], range_file.path.name
        with uproot.open(range_file.path) as handle:
            assert ak.to_list(handle["ntpl"].arrays()) == ak.to_list(expected[first:stop])


#: Entries of the growing RNTuple; fields join at entries 60 and 150.
GROWN = 300
#: Ranges (0-based, stop excluded) before, across and after each addition.
GROWN_RANGES = (
    (0, 50),
    (50, 70),
    (59, 60),
    (60, 61),
    (140, 160),
    (150, 151),
    (0, GROWN),
    (155, GROWN),
    (100, 200),
)


def test_an_rntuple_whose_fields_grew_while_written_is_cut(tmp_path: Path) -> None:
    source = tmp_path / "grown.root"
    write_extended(source, GROWN, 505)
    opened = open_source(source)
    ntuple = read_ntuple(opened, opened.top.keys[0])
    assert any(column.deferred for column in ntuple.schema.columns)
    assert len(ntuple.clusters[0].columns) < len(ntuple.schema.columns)
    plan = planned(opened, GROWN)
    targets = [
        RangeTarget(first + 1, stop, tmp_path / f"range{first}-{stop}.root")
        for first, stop in GROWN_RANGES
    ]
    for target in targets:
        write_ranges(plan, [target])
    opened.uproot.close()
    dumps, _, stderr = dump_ntuples([(source, "ntpl"), *((t.path, "ntpl") for t in targets)])
    assert stderr == ""
    with uproot.open(source) as handle:
        expected = handle["ntpl"].arrays()
    for (first, stop), target, dump in zip(GROWN_RANGES, targets, dumps[1:], strict=True):
        assert problems(dumps[0].rows, first, stop, dump) == [], target.path.name
        with uproot.open(target.path) as handle:
            assert ak.to_list(handle["ntpl"].arrays()) == ak.to_list(expected[first:stop])
