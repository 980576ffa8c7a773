"""Objects besides the event trees: carried whole into every range file, or reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import uproot

from ess_split.errors import UnsplittableFile
from ess_split.split import split_root_file
from ess_splitter.strategy import SplitOptions, split_file
from tests.split.faithful import assert_faithful, classnames, data, raw_key

N_EVENTS = 23


def write_file_with_extras(path: Path) -> None:
    """An event tree next to histograms, strings, a run tree and directories, some nested."""
    rng = np.random.default_rng(7)
    with uproot.recreate(path) as out:
        out.mktree("events", {"x": np.float64, "n": np.int32}, title="the events")
        out["events"].extend(
            {"x": rng.normal(size=N_EVENTS), "n": np.arange(N_EVENTS, dtype=np.int32)}
        )
        out["hists/h1"] = np.histogram(rng.normal(size=1000), bins=20, range=(-3, 3))
        out["hists/deeper/h2"] = np.histogram2d(
            rng.normal(size=500), rng.normal(size=500), bins=(4, 5)
        )
        out["notes"] = "generated for the carry test"
        out.mktree("runs", {"run": np.int64, "lumi": np.float32}, title="per run")
        out["runs"].extend(
            {"run": np.array([1, 2], dtype=np.int64), "lumi": np.array([0.5, 1.5], np.float32)}
        )
        out.mkdir("empty/inside")
        # uproot cannot address this key when reading; the split copies keys as they are.
        out["odd:name"] = "unreachable"


def test_other_objects_are_carried_into_every_range_file(tmp_path: Path) -> None:
    source = tmp_path / "extras.root"
    write_file_with_extras(source)
    out_dir = tmp_path / "out"
    result = split_root_file(source, out_dir, 5)
    assert result.skipped == ()
    assert_faithful(source, out_dir, result, 5)
    for range_file in result.ranges:
        names = classnames(range_file.path)
        assert names["hists/deeper/h2"] == "TH2D"
        assert names["empty/inside"] == "TDirectory"
        assert "" not in names
        with uproot.open(range_file.path) as written:
            assert written["notes"] == "generated for the carry test"
            assert written["runs"].title == "per run"
            assert written["runs"]["run"].array(library="np").tolist() == [1, 2]
            assert "odd:name;1" in written.keys(cycle=True)


def test_histograms_keep_values_edges_and_titles(tmp_path: Path) -> None:
    # Seven trees of other sizes beside TH1D and TParameter<bool/int/double>.
    source = data("uproot-issue243-new.root")
    result = split_root_file(source, tmp_path, 200, n_events=502)
    assert len(result.ranges) == 3
    with uproot.open(source) as original, uproot.open(result.ranges[-1].path) as written:
        histograms = [
            name
            for name, classname in original.classnames(cycle=False).items()
            if classname.startswith("TH1")
        ]
        assert histograms
        for name in histograms:
            assert written[name].title == original[name].title
            np.testing.assert_array_equal(
                written[name].values(flow=True), original[name].values(flow=True)
            )
            np.testing.assert_array_equal(
                written[name].axis(0).edges(), original[name].axis(0).edges()
            )
        for tree in ("fullmassplane", "control", "sideband"):
            assert written[tree].num_entries == original[tree].num_entries


def test_objects_uproot_cannot_read_are_still_copied_byte_for_byte(tmp_path: Path) -> None:
    # RooFitResult does not deserialise in uproot 5.7; its bytes and streamers are carried.
    source = data("uproot-issue49.root")
    (range_file,) = split_root_file(source, tmp_path, 1).ranges
    with uproot.open(source) as original, uproot.open(range_file.path) as written:
        for name in ("fitResult", "ProcessID0"):
            assert raw_key(written, name) == raw_key(original, name)
        assert written.file.streamer_named("RooFitResult") is not None


def test_objects_holding_a_tree_are_not_byte_copied(own_files: Path, tmp_path: Path) -> None:
    # Their baskets are records elsewhere in the source file; a copy would point nowhere.
    source = own_files / "holder.root"
    result = split_root_file(source, tmp_path, 20)
    assert [str(s) for s in result.skipped] == [
        "holder (EssHolder): its class holds a TTree, whose baskets would be left behind"
    ]
    assert_faithful(source, tmp_path, result, 20)
    for range_file in result.ranges:
        assert "holder" not in classnames(range_file.path)


def test_uncarried_objects_can_make_the_file_unsplittable(own_files: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsplittableFile) as raised:
        split_root_file(own_files / "holder.root", tmp_path, 20, uncarried="unsplittable")
    error = raised.value
    assert (error.tree, error.branch, error.typename) == ("holder", None, "EssHolder")
    assert "not carried" in str(error)
    assert list(tmp_path.iterdir()) == []


async def test_uncarried_policy_then_follows_the_unsplittable_policy(
    own_files: Path, tmp_path: Path
) -> None:
    source = own_files / "holder.root"
    options = SplitOptions(uncarried="unsplittable", unsplittable="whole")
    result = await split_file(source, tmp_path, 20, 50, options)
    (whole,) = result.ranges
    assert (whole.first_event, whole.last_event) == (1, 50)
    assert whole.path.read_bytes() == source.read_bytes()
    assert result.whole_reason is not None and "EssHolder" in result.whole_reason

    skipping = await split_file(source, tmp_path / "skip", 20, 50, SplitOptions())
    assert len(skipping.ranges) == 3
    assert [s.path for s in skipping.skipped] == ["holder"]
