"""Split real ROOT files from scikit-hep-testdata and read every range file back."""

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

from ess_splitter.rootsplit import (
    NoEventTree,
    RangeFile,
    UnsplittableFile,
    plan_ranges,
    split_root_file,
)


def data(name: str) -> Path:
    return Path(skhep_testdata.data_path(name))


def event_trees(path: Path) -> dict[str, int]:
    with uproot.open(path) as root_file:
        return {
            str(name): int(root_file[name].num_entries)
            for name, classname in root_file.classnames(recursive=True, cycle=False).items()
            if classname == "TTree"
        }


def counter_of(branch: Any) -> str | None:
    # A TBranch without sub-branches has len() 0, so it must not be tested for truth.
    counter = branch.count_branch
    return None if counter is None else str(counter.name)


def assert_split_matches(
    source: Path,
    out_dir: Path,
    results: list[RangeFile],
    events_per_range: int,
    sliced: list[str],
) -> None:
    n_events = event_trees(source)[sliced[0]]
    assert [(r.first_event, r.last_event) for r in results] == plan_ranges(
        n_events, events_per_range
    )
    # Cover 1..N without gaps or overlaps, in order.
    assert results[0].first_event == 1
    assert results[-1].last_event == n_events
    for before, after in itertools.pairwise(results):
        assert after.first_event == before.last_event + 1

    names = [f"range.{r.first_event:09d}-{r.last_event:09d}.root" for r in results]
    assert [r.path for r in results] == [out_dir / name for name in names]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names)

    for result in results:
        content = result.path.read_bytes()
        assert result.size == len(content)
        assert result.adler32 == f"{zlib.adler32(content):08x}"

    with uproot.open(source) as original:
        for tree_path in sliced:
            expected_tree = original[tree_path]
            expected = expected_tree.arrays(library="ak", how=dict)
            pieces: dict[str, list[ak.Array]] = {name: [] for name in expected}
            # Every file is written from the same layout; inspecting the metadata of a few is
            # enough and keeps the suite fast, while every file's data is compared.
            inspected = {0, len(results) // 2, len(results) - 1}
            for index, result in enumerate(results):
                with uproot.open(result.path) as written:
                    tree = written[tree_path]
                    assert tree.num_entries == result.last_event - result.first_event + 1
                    if index in inspected:
                        assert set(event_trees(result.path)) == set(sliced)
                        assert tree.title == expected_tree.title
                        assert tree.keys() == expected_tree.keys()
                        for branch in tree.branches:
                            source_branch = expected_tree[branch.name]
                            assert counter_of(branch) == counter_of(source_branch)
                            assert branch.typename == source_branch.typename
                    for name, array in tree.arrays(library="ak", how=dict).items():
                        pieces[name].append(array)
            for name, array in expected.items():
                joined = ak.concatenate(pieces[name])
                assert joined.type == array.type, (tree_path, name)
                assert ak.array_equal(joined, array, dtype_exact=True), (tree_path, name)


SINGLE_TREE_CASES = [
    ("uproot-HZZ.root", 7),
    ("uproot-HZZ.root", 97),
    ("uproot-HZZ.root", 10_000),
    ("uproot-Zmumu.root", 97),
    ("uproot-Zmumu.root", 10_000),
    ("uproot-HZZ-lz4.root", 97),
    ("uproot-HZZ-lzma.root", 97),
    ("uproot-HZZ-zstd.root", 97),
    ("uproot-HZZ-zlib.root", 97),
    ("uproot-HZZ-uncompressed.root", 97),
    ("uproot-Zmumu-zstd.root", 211),
    ("uproot-sample-6.20.04-lz4.root", 1),
    ("uproot-sample-6.20.04-lz4.root", 7),
    ("uproot-sample-6.20.04-lz4.root", 97),
    ("uproot-sample-6.20.04-lzma.root", 1),
    ("uproot-sample-6.20.04-zlib.root", 7),
    ("uproot-sample-6.20.04-uncompressed.root", 7),
    ("uproot-small-flat-tree.root", 1),
    ("uproot-foriter.root", 7),
]


@pytest.mark.parametrize(("name", "events_per_range"), SINGLE_TREE_CASES)
def test_split_reproduces_every_branch(name: str, events_per_range: int, tmp_path: Path) -> None:
    source = data(name)
    results = split_root_file(source, tmp_path, events_per_range)
    (main_tree,) = event_trees(source)
    assert_split_matches(source, tmp_path, results, events_per_range, [main_tree])


def test_hzz_counters_are_shared_under_source_names(tmp_path: Path) -> None:
    (result,) = split_root_file(data("uproot-HZZ.root"), tmp_path, 50, block_events=50)[:1]
    with uproot.open(result.path) as written:
        tree = written["events"]
        assert {counter_of(tree[f"{kind}_Px"]) for kind in ("Jet", "Muon", "Electron")} == {
            "NJet",
            "NMuon",
            "NElectron",
        }
        assert tree["NJet"].typename == "int32_t"
        # uproot's own counter naming ("n" + branch) must not have been used.
        branch_names: list[str] = tree.keys()
        assert not [name for name in branch_names if name.startswith("n")]


@pytest.mark.parametrize(
    ("name", "events_per_range", "block_events"),
    [
        ("uproot-sample-6.20.04-lz4.root", 7, 3),
        ("uproot-sample-6.20.04-zlib.root", 4, 6),
        ("uproot-HZZ.root", 97, 60),
        ("uproot-HZZ.root", 97, 250),
    ],
)
def test_ranges_straddling_blocks_are_assembled(
    name: str, events_per_range: int, block_events: int, tmp_path: Path
) -> None:
    source = data(name)
    results = split_root_file(source, tmp_path, events_per_range, block_events=block_events)
    (main_tree,) = event_trees(source)
    assert_split_matches(source, tmp_path, results, events_per_range, [main_tree])


def test_main_tree_is_found_among_trees_of_other_sizes(tmp_path: Path) -> None:
    # WtLoop_meta (1 entry) holds std::string branches; it is not sliced, so it does not matter.
    source = data("uproot-issue63.root")
    assert event_trees(source) == {
        "WtLoop_nominal": 9812,
        "WtLoop_Fake_nominal": 111,
        "WtLoop_meta": 1,
    }
    results = split_root_file(source, tmp_path, 2503)
    assert_split_matches(source, tmp_path, results, 2503, ["WtLoop_nominal"])


def write_multi_tree_file(path: Path) -> int:
    with uproot.open(data("uproot-sample-6.20.04-zlib.root")) as sample_file:
        sample = sample_file["sample"].arrays(library="ak", how=dict)
    n_events = len(sample["n"])
    hits = ak.Array([[float(i)] * (i % 4) for i in range(n_events)])
    with uproot.recreate(path) as out:
        events = out.mktree("events", {k: v.type.content for k, v in sample.items()}, title="ev")
        friend = out.mktree(
            "aux/deeper/friend",
            {"nHits": np.int32, "hitE": hits.type.content, "hitT": hits.type.content},
            title="per-event hits",
            counter_name=lambda counted: "nHits",
        )
        meta = out.mktree("meta", {"version": np.int64}, title="one entry")
        # Several extends give several baskets, so reads cross basket boundaries.
        for start in range(0, n_events, 8):
            events.extend({k: v[start : start + 8] for k, v in sample.items()})
            friend.extend({"hitE": hits[start : start + 8], "hitT": hits[start : start + 8] * 2})
        meta.extend({"version": np.array([3], dtype=np.int64)})
    return n_events


def test_every_tree_with_the_event_count_is_sliced_alike(tmp_path: Path) -> None:
    source = tmp_path / "multi.root"
    n_events = write_multi_tree_file(source)
    out_dir = tmp_path / "out"
    results = split_root_file(source, out_dir, 11, n_events=n_events, block_events=13)
    assert_split_matches(source, out_dir, results, 11, ["events", "aux/deeper/friend"])


def test_explicit_n_events_selects_the_tree(tmp_path: Path) -> None:
    source = tmp_path / "multi.root"
    write_multi_tree_file(source)
    out_dir = tmp_path / "out"
    results = split_root_file(source, out_dir, 5, n_events=1)
    assert_split_matches(source, out_dir, results, 5, ["meta"])


def test_n_events_matching_no_tree_names_the_trees(tmp_path: Path) -> None:
    with pytest.raises(NoEventTree, match=r"'events' \(2421 entries\)"):
        split_root_file(data("uproot-HZZ.root"), tmp_path, 7, n_events=2420)
    assert list(tmp_path.iterdir()) == []


def test_empty_tree_gives_no_ranges(tmp_path: Path) -> None:
    assert split_root_file(data("uproot-empty.root"), tmp_path, 7) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("compression", "code"),
    [(None, 101), (uproot.ZLIB(0), 100), (uproot.LZMA(3), 203), (uproot.ZSTD(2), 502)],
)
def test_compression_defaults_to_the_source_setting(
    compression: Any, code: int, tmp_path: Path
) -> None:
    # HZZ's fCompress is 1: ROOT's default algorithm (zlib) at level 1.
    source = data("uproot-HZZ.root")
    results = split_root_file(source, tmp_path, 1000, compression=compression)
    for result in results:
        with uproot.open(result.path) as written:
            assert written.file.fCompress == code
    assert_split_matches(source, tmp_path, results, 1000, ["events"])


def test_source_compression_is_kept(tmp_path: Path) -> None:
    (result,) = split_root_file(data("uproot-HZZ-lz4.root"), tmp_path, 10_000)
    with uproot.open(result.path) as written:
        assert written.file.fCompress == 404


@pytest.mark.parametrize(
    ("name", "tree", "branch", "typename"),
    [
        ("uproot-vectorVectorDouble.root", "t", "x", "std::vector<std::vector<double>>"),
        ("uproot-stl_containers.root", "tree", "string", "std::string"),
        ("uproot-HZZ-objects.root", "events", "jetp4", "std::vector<TLorentzVector>"),
        ("uproot-small-evnt-tree-fullsplit.root", "tree", "evt", "Event"),
        ("uproot-leaflist.root", "tree", "leaflist", "struct {double x; int32_t y; int8_t z;}"),
        ("uproot-nesteddirs.root", "three/tree", "evt", "Event"),
    ],
)
def test_unwritable_types_are_refused_before_writing(
    name: str, tree: str, branch: str, typename: str, tmp_path: Path
) -> None:
    with pytest.raises(UnsplittableFile) as raised:
        split_root_file(data(name), tmp_path, 1)
    error = raised.value
    assert (error.tree, error.branch, error.typename) == (tree, branch, typename)
    assert repr(tree) in str(error)
    assert repr(branch) in str(error)
    assert typename in str(error)
    assert list(tmp_path.iterdir()) == []


def test_counted_fixed_size_arrays_are_refused(tmp_path: Path) -> None:
    # x[n][3] round-trips through neither uproot's writer nor, therefore, a split.
    source = tmp_path / "counted-fixed.root"
    with uproot.recreate(source) as out:
        out.mktree(
            "t",
            {"n": np.int32, "x": ak.types.from_datashape("var * 3 * float64", highlevel=False)},
            counter_name=lambda counted: "n",
        )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(UnsplittableFile) as raised:
        split_root_file(source, out_dir, 5)
    assert (raised.value.tree, raised.value.branch) == ("t", "x")
    assert list(out_dir.iterdir()) == []


def test_failure_midway_removes_every_written_file(tmp_path: Path) -> None:
    # A directory where the third range file belongs makes its rename fail after two ranges
    # were already written.
    blocker = tmp_path / "range.000000015-000000021.root"
    blocker.mkdir()
    with pytest.raises(OSError):
        split_root_file(data("uproot-sample-6.20.04-zlib.root"), tmp_path, 7)
    assert list(tmp_path.iterdir()) == [blocker]


def test_name_prefix_is_used(tmp_path: Path) -> None:
    results = split_root_file(data("uproot-foriter.root"), tmp_path, 20, name_prefix="EVNT.x")
    assert [r.path.name for r in results] == [
        "EVNT.x.000000001-000000020.root",
        "EVNT.x.000000021-000000040.root",
        "EVNT.x.000000041-000000046.root",
    ]


def test_plan_ranges() -> None:
    assert plan_ranges(0, 5) == []
    assert plan_ranges(3, 5) == [(1, 3)]
    assert plan_ranges(10, 3) == [(1, 3), (4, 6), (7, 9), (10, 10)]
    assert plan_ranges(4, 1) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert plan_ranges(6, 2) == [(1, 2), (3, 4), (5, 6)]


@pytest.mark.parametrize(("n_events", "events_per_range"), [(10, 0), (10, -1), (-1, 5)])
def test_plan_ranges_refuses_nonsense(n_events: int, events_per_range: int) -> None:
    with pytest.raises(ValueError):
        plan_ranges(n_events, events_per_range)


@pytest.mark.parametrize(
    ("events_per_range", "block_events", "name_prefix"),
    [(0, None, "range"), (5, 0, "range"), (5, None, "sub/range"), (5, None, "")],
)
def test_split_refuses_nonsense(
    events_per_range: int, block_events: int | None, name_prefix: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        split_root_file(
            data("uproot-foriter.root"),
            tmp_path,
            events_per_range,
            block_events=block_events,
            name_prefix=name_prefix,
        )
    assert list(tmp_path.iterdir()) == []
