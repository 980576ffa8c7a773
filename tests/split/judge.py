"""ROOT as the judge of range files, from the tests' side.

One ROOT process per test session (``root_judge.py``, started on first use) answers
``RootJudge.check``: for each range file, whether ROOT opens it without a warning or error of
its own (one the source does not also raise), finds the expected number of entries, reads every
one of them, reads the same values as from the source's same entries, and, where the source's
tree has a TTreeIndex, finds every entry again with ``GetEntryWithIndex``. ``Verdict.problems``
lists what failed, in words, for assertion messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

_SCRIPT = Path(__file__).with_name("root_judge.py")


@dataclass(frozen=True)
class Case:
    """``range_file`` should hold entries ``first``..``stop - 1`` of ``tree`` of ``source``."""

    source: Path
    tree: str
    first: int
    stop: int
    range_file: Path
    #: False: ROOT only opens both files and counts the range file's entries (for trees whose
    #: entries ROOT cannot read even in the source).
    read: bool = True


@dataclass
class Verdict:
    case: Case
    entries: int
    status: int
    source_status: int
    messages: list[str]
    source_messages: list[str]
    differing: list[int]
    difference: dict[str, Any] | None
    #: -1 without a TTreeIndex, else the entries GetEntryWithIndex does not find again.
    index: int = -1
    source_index: int = -1
    problems: list[str] = field(default_factory=list)

    @property
    def source_reads(self) -> bool:
        """Whether ROOT reads the source's entries without an error of its own."""
        return self.source_status == 0 and not any(
            m.startswith(("TBasket::", "TBranch::GetBasket")) for m in self.source_messages
        )


class RootJudge:
    """A ROOT process judging range files; see the module's docstring."""

    def __init__(self, log: Path) -> None:
        self._log_path = log
        self._process: subprocess.Popen[str] | None = None
        self._answers: TextIO | None = None

    def _start(self) -> None:
        read, write = os.pipe()
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        # The child keeps its own descriptors of the log.
        with self._log_path.open("a") as log:
            self._process = subprocess.Popen(
                [sys.executable, str(_SCRIPT), str(write)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                text=True,
                pass_fds=(write,),
                env=env,
            )
        os.close(write)
        self._answers = os.fdopen(read, "r")

    def check(self, cases: Sequence[Case], declare: str | None = None) -> list[Verdict]:
        """Judge ``cases``; ``declare`` is C++ code ROOT reads first (classes the files use,
        which ROOT would otherwise emulate from the files' streamers)."""
        if self._process is None or self._process.poll() is not None:
            self._start()
        assert self._process is not None and self._process.stdin is not None
        assert self._answers is not None
        request = {
            "declare": declare,
            "cases": [
                {
                    "source": str(case.source),
                    "tree": case.tree,
                    "first": case.first,
                    "stop": case.stop,
                    "range": str(case.range_file),
                    "read": case.read,
                }
                for case in cases
            ],
        }
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._answers.readline()
        if not line:
            self.close()
            tail = self._log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"ROOT stopped while judging {cases[0].source}:\n{tail}")
        verdicts = []
        for case, answer in zip(cases, json.loads(line), strict=True):
            verdict = Verdict(
                case,
                int(answer["entries"]),
                int(answer["status"]),
                int(answer["source_status"]),
                list(answer["messages"]),
                list(answer["source_messages"]),
                list(answer["differing"]),
                answer["difference"],
                int(answer["index"]),
                int(answer["source_index"]),
            )
            verdict.problems = _problems(verdict)
            verdicts.append(verdict)
        return verdicts

    def close(self) -> None:
        if self._process is not None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._answers is not None:
            self._answers.close()
        self._process = None
        self._answers = None


def _problems(verdict: Verdict) -> list[str]:
    case = verdict.case
    name = f"{case.range_file.name} ({case.tree}, entries {case.first}..{case.stop - 1})"
    expected = case.stop - case.first
    problems = []
    if verdict.status == 1:
        problems.append(f"{name}: ROOT does not open it")
    elif verdict.status == 2:
        problems.append(f"{name}: ROOT finds no tree {case.tree!r}")
    else:
        if verdict.entries != expected:
            problems.append(f"{name}: GetEntries is {verdict.entries}, not {expected}")
        if verdict.status == 3:
            problems.append(f"{name}: an entry does not read")
    if verdict.messages:
        problems.append(f"{name}: ROOT says {verdict.messages[:3]}")
    if verdict.source_index >= 0 and verdict.index < 0:
        problems.append(f"{name}: the source's TTreeIndex is not in it")
    if verdict.index > 0:
        problems.append(f"{name}: GetEntryWithIndex misses {verdict.index} of its entries")
    if verdict.differing and verdict.source_reads:
        problems.append(
            f"{name}: entries {verdict.differing[:5]} differ from the source's; "
            f"first difference {verdict.difference}"
        )
    return problems
