"""uproot's view of a split: range files whose trees, objects and entries are the source's.

Beside ROOT's judgement (``judge``), what uproot reads of a range file must be what it reads of
the source: for every branch uproot can read in the source (branch by branch, so that one it
cannot read does not hide the others), the same entries with the same types; every carried
object the same stored bytes; every carried tree the same entries.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import skhep_testdata
import uproot

from ess_split.split import SplitResult, file_adler32, plan_ranges

TREE_CLASSES = ("TTree", "TNtuple", "TNtupleD")
_DIRECTORIES = ("TDirectory", "TDirectoryFile")


def data(name: str) -> Path:
    """A file of scikit-hep-testdata (a pinned dev dependency: its files are in its package)."""
    return Path(skhep_testdata.data_path(name))


def classnames(path: Path) -> dict[str, str]:
    with uproot.open(path) as root_file:
        return {
            str(k): str(v) for k, v in root_file.classnames(recursive=True, cycle=False).items()
        }


def tree_entries(path: Path) -> dict[str, int]:
    """Entries of every TTree of the file, by path."""
    with uproot.open(path) as root_file:
        return {
            name: int(root_file[name].num_entries)
            for name, classname in classnames(path).items()
            if classname in TREE_CLASSES
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


def leaf_branches(tree: Any) -> list[str]:
    """Every branch holding data of its own (no sub-branches), by full path; a path that names
    two branches (which uproot cannot tell apart) is left out."""
    names: list[str] = tree.keys(recursive=True, full_paths=True)
    found = []
    for name in names:
        if names.count(name) != 1:
            continue
        try:
            branch = tree[name]
        except uproot.KeyInFileError:
            # A path uproot cannot address (a name repeated further down).
            continue
        if len(branch.branches) == 0:
            found.append(name)
    return found


def read_branches(
    tree: Any, names: Iterable[str], start: int | None = None, stop: int | None = None
) -> tuple[dict[str, ak.Array], dict[str, str]]:
    """Entries ``start``..``stop - 1`` of each branch uproot reads, and why it read no other."""
    arrays: dict[str, ak.Array] = {}
    unread: dict[str, str] = {}
    for name in names:
        try:
            arrays[name] = tree[name].array(library="ak", entry_start=start, entry_stop=stop)
        except Exception as exc:
            unread[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return arrays, unread


def assert_same_tree(written: Any, source: Any, path: str) -> None:
    """Same title, branches, C++ types and counters (entries are compared elsewhere)."""
    assert written.title == source.title, path
    assert written.keys() == source.keys(), path
    for branch in written.branches:
        source_branch = source[branch.name]
        assert branch.typename == source_branch.typename, (path, branch.name)
        assert counter_of(branch) == counter_of(source_branch), (path, branch.name)


def assert_same_arrays(got: dict[str, ak.Array], expected: dict[str, ak.Array], path: str) -> None:
    missing = sorted(set(expected) - set(got))
    assert not missing, f"{path}: uproot reads {missing[:5]} in the source, not in the range"
    for name, array in expected.items():
        assert ak.array_equal(got[name], array, equal_nan=True, dtype_exact=True), (path, name)


def assert_same_entries(
    source: Any, written: Any, path: str, start: int | None = None, stop: int | None = None
) -> set[str]:
    """uproot reads of tree ``path`` in ``written`` what it reads of the source's entries
    ``start``..``stop - 1``, for every branch it reads in the source; returns those it does not
    read there."""
    names = leaf_branches(source[path])
    expected, unread = read_branches(source[path], names, start, stop)
    got, _ = read_branches(written[path], expected)
    assert_same_arrays(got, expected, path)
    return set(unread)


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
    expected = {p: c for p, c in classnames(source_path).items() if p not in skipped}
    assert classnames(range_path) == expected
    with uproot.open(source_path) as source, uproot.open(range_path) as written:
        for path, classname in expected.items():
            if path in sliced or classname in _DIRECTORIES or ":" in path:
                # uproot cannot address a key whose name has ':' (the lists above compare it).
                continue
            if classname in TREE_CLASSES:
                assert_same_tree(written[path], source[path], path)
                assert written[path].num_entries == source[path].num_entries, path
                assert_same_entries(source, written, path)
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
    name_prefix: str = "range",
) -> None:
    """``result`` splits ``source`` into faithful ranges of ``events_per_range`` events, as
    uproot reads them."""
    entries = tree_entries(source)
    if n_events is None:
        n_events = max(entries.values())
    sliced = {path for path, count in entries.items() if count == n_events}
    assert sliced
    ranges = result.ranges
    assert [(r.first_event, r.last_event) for r in ranges] == plan_ranges(
        n_events, events_per_range
    )
    for before, after in itertools.pairwise(ranges):
        assert after.first_event == before.last_event + 1
    names = [f"{name_prefix}.{r.first_event:09d}-{r.last_event:09d}.root" for r in ranges]
    assert [r.path for r in ranges] == [out_dir / name for name in names]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names)
    for range_file in ranges:
        assert (range_file.size, range_file.adler32) == file_adler32(range_file.path)

    # Metadata and carried objects are written alike in every file: a few are inspected.
    for index in sorted({0, len(ranges) // 2, len(ranges) - 1}):
        assert_carried(ranges[index].path, source, sliced, result)

    with uproot.open(source) as original:
        for tree_path in sorted(sliced):
            source_tree = original[tree_path]
            expected, _ = read_branches(source_tree, leaf_branches(source_tree))
            for index, range_file in enumerate(ranges):
                with uproot.open(range_file.path) as written:
                    tree = written[tree_path]
                    assert tree.num_entries == range_file.last_event - range_file.first_event + 1
                    if index == 0:
                        assert_same_tree(tree, source_tree, tree_path)
                    got, _ = read_branches(tree, expected)
                    start, stop = range_file.first_event - 1, range_file.last_event
                    assert_same_arrays(
                        got,
                        {name: array[start:stop] for name, array in expected.items()},
                        tree_path,
                    )
