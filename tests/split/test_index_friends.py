"""Trees with a TTreeIndex or friends: the index is rebuilt for each range and ROOT finds every
entry of a range file again with ``GetEntryWithIndex``; a tree with friends (whose entries would
not line up with a range's) is refused up front, naming the tree and why, and then delivered
whole or failed as the edge's policy says."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from ess_split.errors import UnsplittableFile
from ess_split.split import split_root_file
from ess_splitter.strategy import SplitOptions, split_file
from tests.split.judge import Case, RootJudge


@pytest.mark.parametrize("events_per_range", [1, 7, 30, 100])
def test_indexed_tree_ranges_keep_an_index_root_finds_entries_by(
    events_per_range: int, own_files: Path, root_judge: RootJudge, tmp_path: Path
) -> None:
    source = own_files / "index.root"
    ranges = split_root_file(source, tmp_path, events_per_range).ranges
    assert ranges[-1].last_event == 100
    chosen = ranges if len(ranges) <= 10 else [*ranges[:3], ranges[len(ranges) // 2], ranges[-1]]
    judged = root_judge.check(
        [Case(source, "events", r.first_event - 1, r.last_event, r.path) for r in chosen]
    )
    assert all(v.source_index == 0 for v in judged)
    assert [v.index for v in judged] == [0] * len(judged)
    assert [p for v in judged for p in v.problems] == []


def test_tree_with_friends_is_refused_naming_it(own_files: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsplittableFile) as raised:
        split_root_file(own_files / "friends.root", tmp_path, 10)
    error = raised.value
    assert (error.tree, error.branch, error.typename) == ("events", None, "TTree")
    assert "friend" in error.reason
    assert "'events'" in str(error)
    assert list(tmp_path.iterdir()) == []


async def test_tree_with_friends_is_delivered_whole_or_fails_as_told(
    own_files: Path, tmp_path: Path
) -> None:
    source = own_files / "friends.root"
    result = await split_file(source, tmp_path / "whole", 10, 100, SplitOptions())
    (whole,) = result.ranges
    content = source.read_bytes()
    assert whole.path.read_bytes() == content
    assert (whole.first_event, whole.last_event) == (1, 100)
    assert (whole.size, whole.adler32) == (len(content), f"{zlib.adler32(content):08x}")
    assert result.whole_reason is not None and "friend" in result.whole_reason

    with pytest.raises(UnsplittableFile, match="friend"):
        await split_file(source, tmp_path / "fail", 10, 100, SplitOptions(unsplittable="fail"))
    assert not (tmp_path / "fail").exists() or list((tmp_path / "fail").iterdir()) == []
