"""ROOT judges the range files of the tests' own ROOT files (``root_writer.py``): vectors, nested
vectors, strings, counted and fixed arrays, leaf lists, C strings; objects of a declared class at
split levels 0 and 99 whose entries refer back into their baskets, TClonesArrays; a POOL-like
file; each with ZLIB, LZMA, LZ4 and ZSTD. Ranges of one event (at the start, in the middle and at
the end), ranges of 137 events (which straddle baskets) and one range holding the whole file.

The negative controls show that the same checks catch a range judged against the neighbouring
events, a truncated range file, and, where entries refer into their basket, range files whose
cut baskets leave behind the bytes before the range (which those references may point into),
with or without the entries' original positions.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from ess_split.split import RangeFile, split_root_file
from ess_split.ttree import baskets
from tests.split.judge import Case, RootJudge, Verdict

ENTRIES = 1000
COMPRESSIONS = ("zlib", "lzma", "lz4", "zstd")
KINDS = ("vectors", "objects", "pool")
FILES = [f"{kind}-{compression}.root" for kind in KINDS for compression in COMPRESSIONS]
#: Trees cut into ranges, and trees of other entry counts carried whole, by kind of file.
CUT = {"vectors": ("events",), "objects": ("events",), "pool": ("CollectionTree", "POOLContainer")}
CARRIED = {"vectors": {}, "objects": {}, "pool": {"##Params": 7, "##Links": 7, "MetaData": 1}}
STRADDLING = 137


def kind_of(name: str) -> str:
    return name.split("-")[0]


def split_for_judging(source: Path, out: Path) -> list[RangeFile]:
    """Ranges of one event at the start, middle and end; every range of 137; the whole file."""
    written: list[RangeFile] = []
    for index in (0, ENTRIES // 2, ENTRIES - 1):
        written += split_root_file(source, out / "one", 1, part=(index, index + 1)).ranges
    written += split_root_file(source, out / "straddling", STRADDLING).ranges
    written += split_root_file(source, out / "whole", ENTRIES).ranges
    return written


def cases_of(source: Path, ranges: list[RangeFile]) -> list[Case]:
    kind = kind_of(source.name)
    cases = [
        Case(source, tree, r.first_event - 1, r.last_event, r.path)
        for r in ranges
        for tree in CUT[kind]
    ]
    cases += [
        Case(source, tree, 0, count, ranges[-1].path) for tree, count in CARRIED[kind].items()
    ]
    return cases


@pytest.fixture(scope="module")
def split_files(own_files: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("judged")
    return {name: split_for_judging(own_files / name, out / name) for name in FILES}


@pytest.fixture(scope="module")
def verdicts(
    own_files: Path, split_files: dict[str, list[RangeFile]], root_judge: RootJudge
) -> dict[str, list[Verdict]]:
    """Every case of every file, judged in one request."""
    cases = {name: cases_of(own_files / name, ranges) for name, ranges in split_files.items()}
    judged = iter(root_judge.check([case for name in FILES for case in cases[name]]))
    return {name: [next(judged) for _ in cases[name]] for name in FILES}


@pytest.mark.parametrize("name", FILES)
def test_root_reads_the_sources_entries_in_every_range_file(
    name: str, verdicts: dict[str, list[Verdict]]
) -> None:
    judged = verdicts[name]
    # One-event ranges, every straddling range and the whole file, for every tree cut.
    ranges = 3 + -(-ENTRIES // STRADDLING) + 1
    kind = kind_of(name)
    assert len(judged) == ranges * len(CUT[kind]) + len(CARRIED[kind])
    assert all(v.source_reads for v in judged)
    assert [p for v in judged for p in v.problems] == []


def test_a_range_judged_against_its_neighbouring_events_is_caught(
    own_files: Path, split_files: dict[str, list[RangeFile]], root_judge: RootJudge
) -> None:
    cases = []
    for name in ("vectors-zstd.root", "objects-lz4.root", "pool-lzma.root"):
        tree = CUT[kind_of(name)][0]
        for r in split_files[name][:4]:
            # The range file's own events, but the source's read from one event further on.
            cases.append(Case(own_files / name, tree, r.first_event, r.last_event + 1, r.path))
    judged = root_judge.check(cases)
    assert [v.case for v in judged if not any("differ" in p for p in v.problems)] == []


def test_a_truncated_range_file_is_caught(
    own_files: Path,
    split_files: dict[str, list[RangeFile]],
    root_judge: RootJudge,
    tmp_path: Path,
) -> None:
    cases = []
    for name in ("vectors-zlib.root", "objects-zstd.root"):
        whole = split_files[name][-1]
        for keep in (0.3, 0.9, 0.999):
            cut = tmp_path / f"{keep}-{name}"
            shutil.copyfile(whole.path, cut)
            with cut.open("r+b") as stream:
                stream.truncate(int(whole.size * keep))
            cases.append(Case(own_files / name, "events", 0, ENTRIES, cut))
    judged = root_judge.check(cases)
    assert [v.case for v in judged if not v.problems] == []


@pytest.mark.parametrize("keep_positions", [True, False])
@pytest.mark.parametrize("name", [f"objects-{c}.root" for c in COMPRESSIONS])
def test_range_files_without_the_bytes_before_the_range_are_caught(
    name: str,
    keep_positions: bool,
    own_files: Path,
    root_judge: RootJudge,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``unsplit`` branch's entries refer into their basket (TNamed objects written through
    pointers, their class then referred to by position, also from later entries). A cut basket
    that leaves the bytes before the range behind breaks those references: with the entries'
    original positions ROOT finds nothing there, without them it reads the wrong bytes."""
    cut = baskets.Decoded.cut

    def without_lead(self: baskets.Decoded, start: int, stop: int, track: bool) -> Any:
        piece = cut(self, start, stop, False)
        if track and keep_positions and self.offsets is not None:
            originals = self.originals
            if originals is None:
                originals = self.offsets[:-1] + self.keylen
            piece = dataclasses.replace(piece, originals=originals[start:stop])
        return piece

    source = own_files / name
    faithful = split_root_file(source, tmp_path / "faithful", STRADDLING, part=(1, 4)).ranges
    monkeypatch.setattr(baskets.Decoded, "cut", without_lead)
    broken = split_root_file(source, tmp_path / "broken", STRADDLING, part=(1, 4)).ranges
    judged = root_judge.check(
        [
            Case(source, "events", r.first_event - 1, r.last_event, r.path)
            for r in [*faithful, *broken]
        ]
    )
    assert [v.problems for v in judged[: len(faithful)]] == [[]] * len(faithful)
    assert all(v.problems for v in judged[len(faithful) :])


def test_trefs_resolve_through_the_range_files_tbranchref(
    own_files: Path, root_judge: RootJudge, tmp_path: Path
) -> None:
    """refs.root: a TRef per entry to an object of a TClonesArray, which ROOT resolves through
    the TBranchRef's table of that entry."""
    source = own_files / "refs.root"
    written = split_root_file(source, tmp_path / "one", 1, part=(250, 251)).ranges
    written += split_root_file(source, tmp_path / "straddling", STRADDLING).ranges
    written += split_root_file(source, tmp_path / "whole", 500).ranges
    judged = root_judge.check(
        [Case(source, "events", r.first_event - 1, r.last_event, r.path) for r in written]
    )
    assert all(v.source_reads for v in judged)
    assert [p for v in judged for p in v.problems] == []
