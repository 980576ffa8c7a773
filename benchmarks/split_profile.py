"""Where a profiled split spends its time, by the splitter's own steps.

Consumes the cProfile statistics of one ``split_root_file`` run (taken in the case's own
process) and produces a ``Breakdown``: the cumulative seconds of planning, writing the
template, reading and inflating source baskets, cutting, compressing and appending, opening
and committing range files, and the functions with the most own time; then the markdown table
of the breakdowns side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.split_cases import Row

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TopEntry:
    function: str
    calls: int
    tottime: float
    cumtime: float


@dataclass(frozen=True)
class Breakdown:
    """Seconds of one profiled split, by the part of the work they were spent on."""

    case: str
    files: int
    total: float
    plan: float
    template: float
    read: float
    inflate: float
    cut: float
    add: float
    compress: float
    append: float
    open: float
    commit: float
    top: list[TopEntry]

    @property
    def per_file(self) -> float:
        """Seconds of the steps done once per output file, whatever its size."""
        return self.open + self.commit

    @property
    def other(self) -> float:
        return self.total - (
            self.plan + self.template + self.read + self.cut + self.add + self.open + self.commit
        )


_Label = tuple[str, int, str]
_Stats = dict[_Label, tuple[int, int, int, int, dict[_Label, tuple[int, int, int, int]]]]

_ROOTSPLIT = "ess_split/split.py"
_PLAN = "ess_split/plan.py"
_SOURCE = "ess_split/ttree/source.py"
_WRITER = "ess_split/rangefile.py"
_BASKETIO = "ess_split/format/codecs.py"


def _cumtime(stats: _Stats, file_suffix: str, function: str) -> float:
    return sum(
        float(entry[3])
        for label, entry in stats.items()
        if label[0].endswith(file_suffix) and label[2] == function
    )


def _cumtime_from(
    stats: _Stats, file_suffix: str, function: str, caller_file: str, caller_function: str
) -> float:
    """Cumulative seconds of ``function`` spent in calls made from the given caller."""
    return sum(
        float(by_caller[3])
        for label, entry in stats.items()
        if label[0].endswith(file_suffix) and label[2] == function
        for caller, by_caller in entry[4].items()
        if caller[0].endswith(caller_file) and caller[2] == caller_function
    )


def breakdown_of(case: str, files: int, stats: _Stats) -> Breakdown:
    """The profiled split by the splitter's own steps (``split._write_ranges``' loop)."""
    top = sorted(stats.items(), key=lambda item: float(item[1][2]), reverse=True)[:12]
    read = _cumtime(stats, _SOURCE, "_raw")
    inflate = _cumtime(stats, _BASKETIO, "_inflate")
    return Breakdown(
        case=case,
        files=files,
        total=_cumtime(stats, _ROOTSPLIT, "split_root_file"),
        plan=_cumtime_from(stats, _PLAN, "plan_split", _ROOTSPLIT, "planned"),
        # FileTemplate(...), written once per split.
        template=_cumtime_from(stats, _WRITER, "__init__", _ROOTSPLIT, "_write_ranges"),
        read=read,
        inflate=inflate,
        cut=_cumtime_from(stats, _SOURCE, "pieces", _ROOTSPLIT, "_write_ranges") - read,
        add=_cumtime_from(stats, _WRITER, "add", _ROOTSPLIT, "_write_ranges"),
        compress=_cumtime_from(stats, _BASKETIO, "compress", _WRITER, "_encoded"),
        append=_cumtime_from(stats, _WRITER, "_append", _WRITER, "add"),
        open=_cumtime_from(stats, _WRITER, "open", _ROOTSPLIT, "_write_ranges"),
        commit=_cumtime_from(stats, _WRITER, "commit", _ROOTSPLIT, "_write_ranges"),
        top=[
            TopEntry(_short(label), int(entry[1]), float(entry[2]), float(entry[3]))
            for label, entry in top
        ],
    )


def _short(label: _Label) -> str:
    path, line, function = label
    if path == "~":
        return function
    for marker in ("site-packages/", f"{PROJECT_ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{line}({function})"


def profile_table(rows: list[Row], breakdowns: list[Breakdown]) -> list[str]:
    inflation = ", ".join(
        f"{b.total / next(r.seconds for r in rows if r.case.name == b.case):.1f}x for {b.case}"
        for b in breakdowns
    )
    lines = [
        "Profiles: one more run of each single-process split under cProfile (`.prof` files in "
        "the work directory), seconds inside `split_root_file`, by the splitter's own steps. "
        f"Profiled time over the unprofiled median: {inflation}; cProfile slows Python-level "
        "code much more than C calls such as zlib, so the shares of Python work are upper "
        "bounds.",
        "",
        "| part | " + " | ".join(b.case for b in breakdowns) + " |",
        "|---|" + "--:|" * len(breakdowns),
    ]
    parts: list[tuple[str, list[float]]] = [
        ("total (`split_root_file`)", [b.total for b in breakdowns]),
        ("plan the split (`plan_split`)", [b.plan for b in breakdowns]),
        ("range-file template, once per split (`FileTemplate`)", [b.template for b in breakdowns]),
        ("read source baskets (`BranchSource._raw`)", [b.read for b in breakdowns]),
        ("inflate source baskets (`codecs._inflate`)", [b.inflate for b in breakdowns]),
        (
            "cut the ranges' entries out (`BranchSource.pieces`, reads aside)",
            [b.cut for b in breakdowns],
        ),
        ("encode and append baskets (`RangeFileWriter.add`)", [b.add for b in breakdowns]),
        (
            "… of which compressing (`codecs.compress`)",
            [b.compress for b in breakdowns],
        ),
        ("… of which writing and adler32 (`_append`)", [b.append for b in breakdowns]),
        ("open a range file (`FileTemplate.open`)", [b.open for b in breakdowns]),
        (
            "patch template, close, rename (`RangeFileWriter.commit`)",
            [b.commit for b in breakdowns],
        ),
        ("other (the loop in `_write_ranges`)", [b.other for b in breakdowns]),
    ]
    for name, values in parts:
        cells = [
            f"{value:.2f} ({value / b.total:.0%})"
            for value, b in zip(values, breakdowns, strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for b in breakdowns:
        lines += [
            f"Top functions by own time, {b.case} ({b.files:,} files):",
            "",
            "| function | calls | own s | cumulative s |",
            "|---|--:|--:|--:|",
            *(
                f"| `{entry.function}` | {entry.calls:,} | {entry.tottime:.2f} "
                f"| {entry.cumtime:.2f} |"
                for entry in b.top
            ),
            "",
        ]
    return lines
