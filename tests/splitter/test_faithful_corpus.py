"""Split many real files of scikit-hep-testdata and check that nothing changed on the way.

Splittable files: every range file read back gives, for every branch of every sliced tree,
exactly the source's entries with the same type; every other object is in every range file
unchanged (the same bytes for copied objects, the same values and edges for histograms, the
same entries for whole trees), except those the split reports as skipped. Unsplittable files:
policy "fail" names the tree, branch and type; policy "whole" yields one range file that is
the source byte for byte.
"""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import skhep_testdata
import uproot

from ess_splitter.rootsplit import SplitResult, plan_ranges, split_root_file
from ess_splitter.strategy import SplitOptions, split_file
from ess_splitter.treelayout import UnsplittableFile

_DIRECTORIES = ("TDirectory", "TDirectoryFile")


def data(name: str) -> Path:
    return Path(skhep_testdata.data_path(name))


def classnames(path: Path) -> dict[str, str]:
    with uproot.open(path) as root_file:
        return {
            str(k): str(v) for k, v in root_file.classnames(recursive=True, cycle=False).items()
        }


def tree_entries(path: Path) -> dict[str, int]:
    with uproot.open(path) as root_file:
        return {
            name: int(root_file[name].num_entries)
            for name, classname in classnames(path).items()
            if classname == "TTree"
        }


def counter_of(branch: Any) -> str | None:
    # A TBranch without sub-branches has len() 0, so it must not be tested for truth.
    counter = branch.count_branch
    return None if counter is None else str(counter.name)


def raw_key(root_file: Any, path: str) -> tuple[str, str, bytes]:
    """Class, title and stored (compressed) bytes of the object at ``path``."""
    key = root_file.key(path)
    start = key.data_cursor.index
    chunk = root_file.file.source.chunk(start, start + key.data_compressed_bytes)
    return str(key.fClassName), str(key.fTitle), chunk.raw_data.tobytes()


def assert_same_tree(written: Any, source: Any, path: str) -> None:
    """Same title, branch names, C++ types and counters (entries are compared elsewhere)."""
    assert written.title == source.title, path
    assert written.keys() == source.keys(), path
    for branch in written.branches:
        source_branch = source[branch.name]
        assert branch.typename == source_branch.typename, (path, branch.name)
        assert counter_of(branch) == counter_of(source_branch), (path, branch.name)


def assert_same_arrays(got: dict[str, ak.Array], expected: dict[str, ak.Array], path: str) -> None:
    assert got.keys() == expected.keys(), path
    for name, array in expected.items():
        assert got[name].type == array.type, (path, name)
        assert ak.array_equal(got[name], array, dtype_exact=True), (path, name)


def assert_same_histogram(written: Any, source: Any, path: str) -> None:
    assert written.title == source.title, path
    np.testing.assert_array_equal(written.values(flow=True), source.values(flow=True))
    np.testing.assert_array_equal(written.variances(flow=True), source.variances(flow=True))
    for axis in range(len(source.axes)):
        np.testing.assert_array_equal(written.axis(axis).edges(), source.axis(axis).edges())


def assert_carried(
    range_path: Path, source_path: Path, sliced: set[str], result: SplitResult
) -> None:
    """Every object of the source but the sliced trees and the skipped ones is in the range file
    unchanged, and nothing else is."""
    skipped = {s.path for s in result.skipped}
    source_classes = classnames(source_path)
    expected = {p: c for p, c in source_classes.items() if p not in skipped}
    assert classnames(range_path) == expected
    with uproot.open(source_path) as source, uproot.open(range_path) as written:
        for path, classname in expected.items():
            if path in sliced or classname in _DIRECTORIES:
                continue
            if classname == "TTree":
                assert_same_tree(written[path], source[path], path)
                assert_same_arrays(
                    written[path].arrays(library="ak", how=dict),
                    source[path].arrays(library="ak", how=dict),
                    path,
                )
                continue
            # Copied objects are the source's bytes, whatever their class.
            assert raw_key(written, path) == raw_key(source, path), path
            if classname.startswith(("TH1", "TH2", "TH3", "TProfile")):
                assert_same_histogram(written[path], source[path], path)


def assert_faithful(
    source: Path,
    out_dir: Path,
    result: SplitResult,
    events_per_range: int,
    n_events: int | None = None,
) -> None:
    """``result`` splits ``source`` into faithful ranges of ``events_per_range`` events."""
    entries = tree_entries(source)
    if n_events is None:
        n_events = max(entries.values())
    sliced = {path for path, count in entries.items() if count == n_events}
    assert sliced
    ranges = result.ranges
    assert [(r.first_event, r.last_event) for r in ranges] == plan_ranges(
        n_events, events_per_range
    )
    assert ranges[0].first_event == 1
    assert ranges[-1].last_event == n_events
    for before, after in itertools.pairwise(ranges):
        assert after.first_event == before.last_event + 1
    names = [f"range.{r.first_event:09d}-{r.last_event:09d}.root" for r in ranges]
    assert [r.path for r in ranges] == [out_dir / name for name in names]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names)
    for range_file in ranges:
        content = range_file.path.read_bytes()
        assert range_file.size == len(content)
        assert range_file.adler32 == f"{zlib.adler32(content):08x}"

    # Metadata and carried objects are written alike in every file: a few are inspected.
    for index in sorted({0, len(ranges) // 2, len(ranges) - 1}):
        assert_carried(ranges[index].path, source, sliced, result)

    with uproot.open(source) as original:
        for tree_path in sorted(sliced):
            source_tree = original[tree_path]
            branch_names: list[str] = source_tree.keys()
            pieces: dict[str, list[ak.Array]] = {name: [] for name in branch_names}
            for index, range_file in enumerate(ranges):
                with uproot.open(range_file.path) as written:
                    tree = written[tree_path]
                    assert tree.num_entries == range_file.last_event - range_file.first_event + 1
                    if index == 0:
                        assert_same_tree(tree, source_tree, tree_path)
                    for name, array in tree.arrays(library="ak", how=dict).items():
                        pieces[name].append(array)
            assert_same_arrays(
                {name: ak.concatenate(arrays) for name, arrays in pieces.items()},
                source_tree.arrays(library="ak", how=dict),
                tree_path,
            )


# (file, events per range, event count or None for "the largest tree").
# Range sizes: 1 on small files, primes (7, 13, 97, 211, 1009, 2503) and more than the file.
# Every compression variant of HZZ and Zmumu, sample files of ROOT 5.23 to 6.20 in every
# compression they come in, files with jagged branches, several trees, histograms, other
# objects and subdirectories.
SPLITTABLE = [
    ("uproot-HZZ.root", 97, None),
    ("uproot-HZZ-zlib.root", 499, None),
    ("uproot-HZZ-lz4.root", 211, None),
    ("uproot-HZZ-lzma.root", 1009, None),
    ("uproot-HZZ-zstd.root", 97, None),
    ("uproot-HZZ-uncompressed.root", 10_000, None),
    ("uproot-Zmumu.root", 61, None),
    ("uproot-Zmumu-zlib.root", 97, None),
    ("uproot-Zmumu-lz4.root", 307, None),
    ("uproot-Zmumu-lzma.root", 2304, None),
    ("uproot-Zmumu-zstd.root", 211, None),
    ("uproot-Zmumu-uncompressed.root", 5000, None),
    ("uproot-sample-5.23.02-uncompressed.root", 1, None),
    ("uproot-sample-5.23.02-zlib.root", 7, None),
    ("uproot-sample-5.26.00-zlib.root", 13, None),
    ("uproot-sample-5.29.02-uncompressed.root", 97, None),
    ("uproot-sample-5.30.00-lzma.root", 1, None),
    ("uproot-sample-6.08.04-zlib.root", 7, None),
    ("uproot-sample-6.10.05-lz4.root", 13, None),
    ("uproot-sample-6.14.00-lzma.root", 7, None),
    ("uproot-sample-6.16.00-uncompressed.root", 1, None),
    ("uproot-sample-6.18.00-lz4.root", 29, None),
    ("uproot-sample-6.20.04-zlib.root", 1, None),
    ("uproot-sample-6.20.04-lzma.root", 13, None),
    ("uproot-small-flat-tree.root", 1, None),
    ("uproot-simple.root", 1, None),
    ("uproot-foriter.root", 7, None),
    ("uproot-foriter2.root", 13, None),
    ("uproot-issue21.root", 13, None),
    ("uproot-issue30.root", 1, None),
    # zlib level 9 and a subdirectory next to the tree.
    ("uproot-issue413.root", 1, None),
    # A RooFitResult and a TProcessID next to a one-entry tree.
    ("uproot-issue49.root", 1, None),
    ("uproot-issue60.root", 997, None),
    # Three more trees of other sizes, 10 TH1D and 5 TH2D.
    ("uproot-from-geant4.root", 97, None),
    ("uproot-from-geant4.root", 13, 224),
    # Two other trees; the one-entry metadata tree holds std::string and is skipped.
    ("uproot-issue63.root", 2503, None),
    # Seven trees of other sizes, TH1D and TParameter<bool/int/double>; the largest tree holds
    # map<string,double> and is skipped when the event count selects another.
    ("uproot-issue243-new.root", 97, 502),
    # Trees in subdirectories: one sliced, one carried, one (of class Event) skipped.
    ("uproot-nesteddirs.root", 1, 4),
    # A million entries, in one range and in a few.
    ("uproot-issue412.root", 2_000_000, None),
    ("uproot-issue79.root", 333_333, None),
]


@pytest.mark.parametrize(
    ("name", "events_per_range", "n_events"),
    SPLITTABLE,
    ids=[f"{name}-{size}-{n}" for name, size, n in SPLITTABLE],
)
def test_split_is_faithful(
    name: str, events_per_range: int, n_events: int | None, tmp_path: Path
) -> None:
    source = data(name)
    result = split_root_file(source, tmp_path, events_per_range, n_events=n_events)
    assert result.whole_reason is None
    assert_faithful(source, tmp_path, result, events_per_range, n_events)


def test_corpus_reports_what_it_cannot_carry(tmp_path: Path) -> None:
    skipped = {
        name: sorted(
            str(s) for s in split_root_file(data(name), tmp_path / name, 10**7, n_events=n).skipped
        )
        for name, n in [
            ("uproot-issue63.root", None),
            ("uproot-issue243-new.root", 502),
            ("uproot-nesteddirs.root", 4),
            ("uproot-from-geant4.root", None),
        ]
    }
    assert skipped["uproot-from-geant4.root"] == []
    (meta,) = skipped["uproot-issue63.root"]
    assert meta.startswith("WtLoop_meta (TTree): ")
    assert "'initialState'" in meta and "std::string" in meta
    (trigger,) = skipped["uproot-issue243-new.root"]
    assert trigger.startswith("triggerList (TTree): ") and "map<string,double>" in trigger
    (event,) = skipped["uproot-nesteddirs.root"]
    assert event.startswith("three/tree (TTree): ") and "'Event'" in event


# (file, event count, tree, branch or None for the whole object, type)
UNSPLITTABLE = [
    ("uproot-vectorVectorDouble.root", 5, "t", "x", "std::vector<std::vector<double>>"),
    ("uproot-stl_containers.root", 5, "tree", "string", "std::string"),
    ("uproot-HZZ-objects.root", 2421, "events", "jetp4", "std::vector<TLorentzVector>"),
    ("uproot-issue57.root", 100, "outtree", "sel_lep", "std::vector<TLorentzVector>"),
    ("uproot-small-evnt-tree-fullsplit.root", 100, "tree", "evt", "Event"),
    ("uproot-small-evnt-tree-nosplit.root", 100, "tree", "evt", "Event"),
    ("uproot-mc10events.root", 10, "Events", "Info", "baconhep::TEventInfo"),
    ("uproot-leaflist.root", 5, "tree", "leaflist", "struct {double x; int32_t y; int8_t z;}"),
    ("uproot-issue501.root", 1, "T", "point", "x[15][2]:y[15][2]"),
    ("uproot-nesteddirs.root", 100, "three/tree", "evt", "Event"),
    # uproot would write a vector<float> as float[n] with an extra counter branch.
    ("uproot-issue-172.root", 10, "events", "rec_part_px", "std::vector<float>"),
    ("uproot-issue38a.root", 1, "ntupler/tree", "v_int16", "std::vector<int16_t>"),
    ("uproot-issue243.root", 7032, "triggerList", "triggerMap", "std::map<std::string, double>"),
    ("uproot-issue367.root", 2, "tree", "weights", "map<string,vector<double> >"),
    ("uproot-small-dy-nooffsets.root", 501, "tree", "nJet", "uint32_t"),
    ("uproot-double32-float16.root", 17, "tree", "double32_32", "Double32_t"),
    ("uproot-issue-tbranch-of-th2.root", 1, "g4SimHits/tree", "histogram", "TH2F"),
    ("uproot-issue510b.root", 100, "DetSimPassThru/gRooTracker", "EvtFlags", "TBits"),
    ("uproot-hepdata-example.root", 75000, "ntuple", None, "TNtuple"),
    # An RNTuple of a version uproot cannot read: its entries cannot even be counted.
    ("uproot-ntpl001_staff.root", 3354, "Staff", None, "ROOT::Experimental::RNTuple"),
]


@pytest.mark.parametrize(
    ("name", "n_events", "tree", "branch", "typename"),
    UNSPLITTABLE,
    ids=[c[0] for c in UNSPLITTABLE],
)
async def test_unsplittable_fails_naming_tree_branch_and_type(
    name: str, n_events: int, tree: str, branch: str | None, typename: str, tmp_path: Path
) -> None:
    with pytest.raises(UnsplittableFile) as raised:
        await split_file(data(name), tmp_path, 7, n_events, SplitOptions(unsplittable="fail"))
    error = raised.value
    assert (error.tree, error.branch, error.typename) == (tree, branch, typename)
    assert repr(tree) in str(error)
    assert typename in str(error)
    if branch is not None:
        assert repr(branch) in str(error)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "n_events", "tree", "branch", "typename"),
    UNSPLITTABLE,
    ids=[c[0] for c in UNSPLITTABLE],
)
async def test_unsplittable_is_delivered_whole(
    name: str, n_events: int, tree: str, branch: str | None, typename: str, tmp_path: Path
) -> None:
    source = data(name)
    result = await split_file(source, tmp_path, 7, n_events, SplitOptions(unsplittable="whole"))
    (whole,) = result.ranges
    assert (whole.first_event, whole.last_event) == (1, n_events)
    assert whole.path == tmp_path / f"range.000000001-{n_events:09d}.root"
    assert whole.path.read_bytes() == source.read_bytes()
    assert (whole.size, whole.adler32) == (
        source.stat().st_size,
        f"{zlib.adler32(source.read_bytes()):08x}",
    )
    assert result.whole_reason is not None and typename in result.whole_reason
    assert list(tmp_path.iterdir()) == [whole.path]
