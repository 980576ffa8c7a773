"""Every ROOT file of the corpus, split as PanDA would ask and judged by ROOT and by uproot.

The corpus: every ``.root`` file of scikit-hep-testdata 0.3.12 (the files in its package) and of
coffea 2024.11.0's ``tests/samples``. A file's event count is its event tree's entries, as PanDA
passes it (``EVENT_TREES`` names the tree where the file's trees have several entry counts:
PFNano's ``Events`` has 10 entries, its ``ParameterSets`` 10,925, carried whole). Each file is
cut into three ranges (or, for large trees, the first, a middle and the last range of 997
events), and:

- ROOT reads every range file without a warning or error of its own, with the source's entries
  of every event tree, and every other tree whole (``judge``); where ROOT cannot read the source
  itself, ROOT must still open every range file and count its entries;
- uproot reads, branch by branch, what it reads of the source: the same entries with the same
  types; carried objects are the source's bytes (``faithful``).

A file that is not split faithfully is in ``NOT_SPLIT`` or ``ROOT_CANNOT_READ`` with the reason,
reviewed; the test of such a file checks that the reason still holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import pytest
import skhep_testdata
import uproot

from ess_split.errors import NoEventTree, SplitError, UnsplittableFile
from ess_split.plan import Skipped
from ess_split.split import RangeFile, SplitResult, plan_ranges, split_root_file
from tests.split.faithful import TREE_CLASSES, assert_carried, leaf_branches, read_branches
from tests.split.judge import Case, RootJudge
from tests.split.memory_bound import bounded

SKHEP = Path(skhep_testdata.data_path("uproot-HZZ.root")).parent
COFFEA = os.environ.get("ESS_TEST_COFFEA_SAMPLES", "")
FILES = sorted(SKHEP.glob("*.root")) + sorted(Path(COFFEA).glob("*.root") if COFFEA else [])
#: Ranges of a tree larger than this are 997 events; three of them are written and judged.
LARGE = 3000

#: The event tree of files whose trees do not all have one entry count (PanDA's event count is
#: that tree's entries).
EVENT_TREES = {
    "nano_dimuon.root": "Events",
    "nano_dy.root": "Events",
    "nano_dy_SpecialTree.root": "Events",
    "nano_tree.root": "Events",
    "uproot-from-geant4.root": "GeneratedTracks",
    "uproot-issue475.root": "Event/Sim/SimHeader",
    "pfnano.root": "Events",
    "test_FCC_Spring2021.root": "events",
    "uproot-issue124.root": "KM3NET_TIMESLICE_L1",
    "uproot-issue243-new.root": "sig",
    "uproot-issue283.root": "sn_all",
    "uproot-issue371.root": "Event",
    "uproot-issue399.root": "Event",
    "uproot-issue403.root": "Event",
    "uproot-issue404.root": "Event",
    "uproot-issue407.root": "KM3NET_TIMESLICE",
    "uproot-issue408.root": "KM3NET_TIMESLICE",
    "uproot-issue431.root": "E",
    "uproot-issue433-splitlevel2.root": "KM3NET_TIMESLICE_L0",
    "uproot-issue433-splitlevel4.root": "KM3NET_TIMESLICE",
    "uproot-issue434.root": "KM3NET_TIMESLICE",
    "uproot-issue468.root": "Event",
    "uproot-issue494.root": "Event",
    "uproot-issue510b.root": "EDepSimEvents",
    "uproot-issue63.root": "WtLoop_nominal",
    "uproot-issue96.root": "tree",
    "uproot-nesteddirs.root": "one/two/tree",
}

_NO_TREE = "no TTree in the file"
#: Files the engine does not cut, and why (reviewed): the error each raises, a part of its
#: message, and the reason.
NOT_SPLIT: dict[str, tuple[type[SplitError], str, str]] = {
    **{
        name: (NoEventTree, _NO_TREE, "no TTree: histograms, functions or other objects only")
        for name in (
            "uproot-histograms.root",
            "uproot-issue-227a.root",
            "uproot-issue-227b.root",
            "uproot-issue209.root",
            "uproot-issue33.root",
            "uproot-issue38c.root",
            "uproot-issue66.root",
            "uproot-issue70.root",
            "PR554_SkipReadOnlyDirectory.root",
            "SFttbar_2016_ele_pt.root",
            "bad_delphes.root",
            "testSF2d.histo.root",
        )
    },
    "uproot-ntpl001_staff.root": (
        UnsplittableFile,
        "RNTuple",
        "an RNTuple of the experimental format before ROOT 6.34 (ROOT::Experimental::RNTuple)",
    ),
    "uproot-from-geant4.root": (
        UnsplittableFile,
        "a TBranch of version 8 (ROOT before 5.20)",
        "old TBranch version: every tree was written by ROOT before 5.20",
    ),
    "uproot-issue413.root": (
        UnsplittableFile,
        "class TLeafI version 1, which the file's streamers do not describe",
        "old TLeaf version: a TLeafI of version 1, which the file does not describe",
    ),
    "uproot-small-dy-nooffsets.root": (
        UnsplittableFile,
        "a basket whose entry offsets are not stored",
        "baskets without entry offsets (ROOT's kGenerateOffsetMap): ROOT regenerates them from "
        "the counters; the engine does not",
    ),
}

#: Files whose event tree has no entries: nothing to cut (PanDA passes no such file).
NO_EVENTS = {
    "uproot-empty.root": "its one tree has no entries",
    "uproot-issue335.root": "its one tree has no entries",
    "uproot-issue443.root": "its trees have no entries",
}

_EMULATION_CRASH = (
    "ROOT crashes reading the source's entries with classes emulated from its streamers"
)
#: Files ROOT cannot read itself (it crashes, or reports errors of its own on the source's
#: entries), and why (reviewed): uproot judges their entries; ROOT opens their range files and
#: counts entries. The flag says whether ROOT crashes (then it is not asked again).
ROOT_CANNOT_READ: dict[str, tuple[bool, str]] = {
    **{
        name: (True, _EMULATION_CRASH)
        for name in (
            "uproot-issue124.root",
            "uproot-issue213.root",
            "uproot-issue390.root",
            "uproot-issue407.root",
            "uproot-issue408.root",
            "uproot-issue431.root",
            "uproot-issue431b.root",
            "uproot-issue433-splitlevel2.root",
            "uproot-issue433-splitlevel4.root",
            "uproot-issue434.root",
            "uproot-issue465-nested.root",
            "uproot-issue475.root",
            "uproot-issue475b.root",
            "uproot-issue485.root",
            "uproot-issue486.root",
            "uproot-issue498.root",
            "uproot-issue510b.root",
            "uproot-mc10events.root",
            "uproot-stl_containers.root",
        )
    },
    "nano_dy_SpecialTree.root": (
        False,
        "ROOT reads its TLeafL records wrongly (TBufferFile::CheckByteCount: TLeafL read too many "
        "bytes) and then fails in TBasket::ReadBasketBuffers",
    ),
}

#: How the judge reports a ROOT process that stopped.
CRASH = "ROOT stopped while judging"

#: What ROOT's judge cannot compare, and why (reviewed): entries of these trees that differ are
#: not held against the range file (ROOT must still read them without an error of its own).
#: BDSIM's Geant4Data, emulated, serialises again with memory addresses in it: two reads of
#: the same entry differ.
JUDGE_LIMITS: dict[str, tuple[str, str]] = {
    name: ("Geant4Data", "ROOT serialises its emulated entries with memory addresses in them")
    for name in (
        "uproot-issue371.root",
        "uproot-issue399.root",
        "uproot-issue403.root",
        "uproot-issue404.root",
        "uproot-issue468.root",
        "uproot-issue494.root",
    )
}


_PIDF = (
    "Delphes' referenced objects write a 2-byte process number after their TObject "
    "(TObject::Streamer, kIsReferenced), which uproot reads as part of the next 4-byte fBits: "
    "it reads wrong values in the source, where the basket's size happens to fit, and refuses "
    "range files' baskets, where it does not; ROOT reads them as the source's (judged)"
)
_MEMBERWISE = (
    "vector<ElementLink<...>> written member-wise (version 0x4000 bit, 16 header bytes) that "
    "uproot reads with 10 header bytes: wrong values in the source, where the basket's size "
    "happens to fit, and a refusal in range files, where it does not; ROOT reads them as the "
    "source's (judged)"
)
#: Files where uproot misreads branches of the source itself, and so refuses the same branches
#: of range files, and why (reviewed).
UPROOT_MISREADS: dict[str, str] = {
    "uproot-issue513.root": _PIDF,
    "delphes.root": _PIDF,
    "PHYSLITE_example.root": _MEMBERWISE,
}


#: What one file's test may hold resident: the largest take about 2 GiB with the test process.
MEMORY_BOUND = 8 * 2**30


@pytest.fixture(autouse=True)
def memory_bound() -> Iterator[None]:
    with bounded(MEMORY_BOUND):
        yield


@pytest.fixture(scope="module")
def corpus_judge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootJudge]:
    """A ROOT process of the corpus' own: the classes it emulates for one file stay with it, and
    the other tests' judge is kept apart from them."""
    judge = RootJudge(tmp_path_factory.mktemp("corpus-judge") / "root.log")
    try:
        yield judge
    finally:
        judge.close()


_ROOT_OWN = ("T", "ROOT::", "std::", "vector", "map", "set", "list", "deque", "pair", "bitset")


def own_classes(path: Path) -> bool:
    """Whether the file describes classes of its own (not ROOT's nor the standard library's)."""
    with uproot.open(path) as root_file:
        return any(not str(name).startswith(_ROOT_OWN) for name in root_file.file.streamers)


def event_trees(path: Path) -> tuple[int, dict[str, int]] | None:
    """The file's event count and its trees' entries, or None without a tree."""
    with uproot.open(path) as root_file:
        names = root_file.classnames(recursive=True, cycle=False)
        trees = {
            str(name): int(root_file[name].num_entries)
            for name, classname in names.items()
            if classname in TREE_CLASSES
        }
    if not trees:
        return None
    chosen = EVENT_TREES.get(path.name)
    if chosen is not None:
        return trees[chosen], trees
    counts = set(trees.values())
    assert len(counts) == 1, f"{path.name}: trees of several sizes {trees}: add it to EVENT_TREES"
    return counts.pop(), trees


def split_for_judging(source: Path, out: Path, n_events: int) -> SplitResult:
    """Three ranges: all of them for small trees, else the first, a middle and the last."""
    per_range = n_events // 3 + 1 if n_events < LARGE else 997
    ranges = plan_ranges(n_events, per_range)
    if len(ranges) <= 3:
        return split_root_file(source, out, per_range, n_events=n_events)
    written: list[RangeFile] = []
    skipped: tuple[Skipped, ...] = ()
    for index in (0, len(ranges) // 2, len(ranges) - 1):
        part = split_root_file(source, out, per_range, n_events=n_events, part=(index, index + 1))
        written += part.ranges
        skipped = part.skipped
    return SplitResult(written, skipped)


def judge_with_root(
    root_judge: RootJudge,
    source: Path,
    trees: dict[str, int],
    n_events: int,
    ranges: list[RangeFile],
    read: bool,
) -> list[str]:
    cases = [
        Case(source, tree, r.first_event - 1, r.last_event, r.path, read)
        for r in ranges
        for tree, count in trees.items()
        if count == n_events
    ]
    cases += [
        Case(source, tree, 0, count, ranges[0].path, read)
        for tree, count in trees.items()
        if count != n_events
    ]
    try:
        judged = root_judge.check(cases)
    except AssertionError as exc:
        if CRASH not in str(exc):
            raise
        # Once more, in a new ROOT process: the classes another file's entries made ROOT
        # emulate stay in the process.
        try:
            judged = root_judge.check(cases)
        except AssertionError as again:
            return [str(again).splitlines()[0]]
    problems = [p for v in judged for p in v.problems]
    if read:
        unread = [f"{v.case.tree}: {v.source_messages[:2]}" for v in judged if not v.source_reads]
        assert not unread, f"ROOT does not read the source {unread}: add it to ROOT_CANNOT_READ"
    return problems


def judge_with_uproot(
    source: Path, trees: dict[str, int], n_events: int, result: SplitResult
) -> dict[str, str]:
    """Compare what uproot reads; return the branches it reads in the source and not (or not
    alike) in a range file, with why."""
    ranges = result.ranges
    sliced = {tree for tree, count in trees.items() if count == n_events}
    assert_carried(ranges[0].path, source, sliced, result)
    misread: dict[str, str] = {}
    with uproot.open(source) as original:
        for tree in sorted(sliced):
            expected, _ = read_branches(original[tree], leaf_branches(original[tree]))
            failed: set[str] = set()
            for r in ranges:
                # A branch uproot did not read in one range file is not tried in the next.
                tried = [n for n in expected if n not in failed]
                with uproot.open(r.path) as written:
                    got, unread = read_branches(written[tree], tried)
                start, stop = r.first_event - 1, r.last_event
                failed.update(unread)
                misread.update({f"{r.path.name}: {tree}/{n}": why for n, why in unread.items()})
                for name, array in got.items():
                    if not same(array, array_slice(expected[name], start, stop)):
                        misread[f"{r.path.name}: {tree}/{name}"] = "other values"
    return misread


def array_slice(array: Any, start: int, stop: int) -> Any:
    return array[start:stop]


def same(got: Any, expected: Any) -> bool:
    return bool(ak.array_equal(got, expected, equal_nan=True, dtype_exact=True))


# The largest files take a minute on an idle machine; a loaded one may need several.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("source", FILES, ids=[path.name for path in FILES])
def test_corpus_file(source: Path, corpus_judge: RootJudge, tmp_path: Path) -> None:
    assert COFFEA, "ESS_TEST_COFFEA_SAMPLES must name coffea's samples (scripts/test.sh)"
    found = event_trees(source)
    if source.name in NOT_SPLIT:
        error, says, _ = NOT_SPLIT[source.name]
        with pytest.raises(error) as raised:
            split_root_file(source, tmp_path, 10, n_events=None if found is None else found[0])
        assert says in str(raised.value)
        assert list(tmp_path.iterdir()) == []
        return
    assert found is not None, f"{source.name} has no TTree: add it to NOT_SPLIT"
    n_events, trees = found
    if source.name in NO_EVENTS:
        assert n_events == 0
        assert split_root_file(source, tmp_path, 10, n_events=0).ranges == []
        return
    assert n_events > 0, f"{source.name} has no events: add it to NO_EVENTS"
    result = split_for_judging(source, tmp_path, n_events)
    if own_classes(source):
        # A ROOT process of its own: ROOT keeps the classes it emulates from a file's streamers,
        # and another file's classes of the same names but other layouts would read this one's
        # entries wrongly, or crash ROOT.
        corpus_judge.close()
    cannot_read = ROOT_CANNOT_READ.get(source.name)
    problems = judge_with_root(
        corpus_judge, source, trees, n_events, result.ranges, cannot_read is None
    )
    if source.name in JUDGE_LIMITS:
        tree, _ = JUDGE_LIMITS[source.name]
        problems = [p for p in problems if f"({tree}, entries" not in p or "differ" not in p]
    assert problems == []
    misread = judge_with_uproot(source, trees, n_events, result)
    if source.name in UPROOT_MISREADS:
        assert misread, f"uproot reads {source.name}'s range files now: off UPROOT_MISREADS"
    else:
        assert misread == {}, "uproot reads otherwise: " + str(list(misread.items())[:3])
    if cannot_read is not None and not cannot_read[0]:
        # Still so: ROOT reports errors of its own on the source's entries.
        verdicts = corpus_judge.check(
            [Case(source, tree, 0, count, source) for tree, count in trees.items() if count]
        )
        assert not all(v.source_reads for v in verdicts), (
            f"ROOT reads {source.name} now: take it off ROOT_CANNOT_READ"
        )


def test_the_expectation_lists_name_corpus_files() -> None:
    names = {path.name for path in FILES}
    assert set(NOT_SPLIT) <= names
    assert set(ROOT_CANNOT_READ) <= names
    assert set(EVENT_TREES) <= names
    assert set(NO_EVENTS) <= names
    assert set(UPROOT_MISREADS) <= names
    assert set(JUDGE_LIMITS) <= names
    assert not set(NOT_SPLIT) & set(ROOT_CANNOT_READ)
