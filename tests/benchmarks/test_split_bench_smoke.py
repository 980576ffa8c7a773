"""The splitter benchmark runs end to end on a tiny input and writes its page (no timings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.split_bench import main
from benchmarks.split_cases import CASES


def test_tiny_run_prints_and_writes_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "split.md"
    argv = ["--size-mb", "2", "--workdir", str(tmp_path / "work"), "--out", str(page)]

    assert main([*argv, "--repeat", "1"]) == 0

    printed = capsys.readouterr().out
    text = page.read_text()
    header = "| case | what | seconds | input MB/s | files/s | peak RSS MB | ratio to read"
    assert header in printed
    assert header in text
    for case in CASES:
        assert f"| {case.name} |" in printed
        assert f"| {case.name} |" in text
    assert "--size-mb 2" in text
    assert "## What limits it" in text
    assert "`zlib.compress`" in text
    # The generated input stays in the work directory for the next run to reuse.
    cached = sorted(p.name for p in (tmp_path / "work").glob("ntuple-2MB.*"))
    assert cached == ["ntuple-2MB.json", "ntuple-2MB.root"]
