"""The splitter benchmark's markdown page and printed table.

Consumes the rows of the measured cases, the profiles and the input, and produces the results
table, the verdict on each split's target, and the page: the command, the machine and the
software, the input's shape, the table, and what limits the splitter (``split_limits``).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
import zlib
from pathlib import Path

from benchmarks.machine import describe_machine
from benchmarks.ntuple import CHUNK_EVENTS, MB, TREE, InputFile
from benchmarks.split_cases import SERVICE_WORKERS, Row, ratio_to_read, read_row
from benchmarks.split_limits import what_limits
from benchmarks.split_profile import Breakdown

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def results_table(rows: list[Row], source: InputFile) -> str:
    read = read_row(rows)
    lines = [
        "| case | what | seconds | input MB/s | files/s | peak RSS MB | ratio to read "
        "| fastest runs' ratio | workers | compression | output/input bytes | CPU s | runs (s) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|---|",
    ]
    for row in rows:
        rate = source.size / row.seconds
        files_per_s = f"{row.files / row.seconds:,.1f}" if row.files else "—"
        out_in = f"{row.output_bytes / source.size:.3f}" if row.files else "—"
        runs = ", ".join(f"{run:.2f}" for run in row.runs)
        peak = f"{row.peak_rss_bytes / MB:,.0f}"
        if row.workers > 1:
            peak += f" + {row.workers} x {row.worker_peak_rss_bytes / MB:,.0f}"
        compression = row.case.compression if row.case.kind == "split" else "—"
        lines.append(
            f"| {row.case.name} | {row.case.description} | {row.seconds:.2f} "
            f"| {rate / MB:,.1f} | {files_per_s} | {peak} "
            f"| {read.seconds / row.seconds:.2f} | {min(read.runs) / min(row.runs):.2f} "
            f"| {row.workers} | {compression} | {out_in} "
            f"| {row.cpu_seconds:.2f} | {runs} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    lines: list[str] = []
    for row in rows:
        if row.case.target_ratio is None:
            continue
        ratio = ratio_to_read(rows, row)
        verdict = "reached" if ratio >= row.case.target_ratio else "not reached"
        fastest = min(read_row(rows).runs) / min(row.runs)
        lines.append(
            f"- {row.case.name}: {ratio:.2f} x the read-only MB/s "
            f"(target ≥ {row.case.target_ratio:.1f}: {verdict}; fastest runs {fastest:.2f})"
        )
    return lines


def page(
    command: list[str],
    started: dt.datetime,
    load: list[float],
    source: InputFile,
    repeat: int,
    rows: list[Row],
    breakdowns: list[Breakdown],
) -> str:
    python = Path(sys.executable)
    if python.is_relative_to(PROJECT_ROOT):
        python = python.relative_to(PROJECT_ROOT)
    lines = [
        "# Splitter throughput",
        "",
        "Written by `python -m benchmarks.split_bench` (see its docstring); rerun it to refresh "
        "this page.",
        "",
        f"- command: `{shlex.join([str(python), '-m', 'benchmarks.split_bench', *command])}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {describe_machine()}; "
        f"1-minute load average {load[0]:.2f} before the timed runs, "
        f"{load[-1]:.2f} after",
        f"- software: {software()}",
        "",
        "## Input file",
        "",
        *_shape(source),
        "",
        "The file is generated once with uproot (`mktree` + `extend`, one basket per branch "
        f"per {CHUNK_EVENTS:,} events) and cached. It stays in the page cache for every case "
        "(nothing is dropped between runs), outputs go to the same disk and are deleted after "
        "each run, and nothing is fsynced: the numbers are CPU throughput, not disk "
        "throughput. MB = 10⁶ bytes.",
        "",
        f"## Results (median of {repeat} run{'s' if repeat != 1 else ''} per case)",
        "",
        "Each run is a fresh process; seconds cover the operation only (not interpreter "
        "start-up or imports). Peak RSS is the process's high-water mark (VmHWM), imports "
        "included; with workers, `own + n x w`, where w is the largest worker's `ru_maxrss` "
        "(`RUSAGE_CHILDREN`): forked workers "
        "also count the pages they share with the process that forked them, so the sum is an "
        "upper bound. Ratio to read is the case's MB/s over the read-only pass's (medians); the "
        "fastest runs' ratio compares the fastest run of each, the least disturbed by other "
        "work on the machine. CPU s is the "
        "user plus system time of the operation, the workers' included (median): close to "
        "seconds means one busy core. Workers are the processes that split: `cores` cases use "
        f"`split_root_file_parallel` with `workers={SERVICE_WORKERS}` (`ESS_SPLIT_WORKERS`'s "
        "default, one per core, at most one per 16 MiB of the file), forked from the case's "
        "process; the edge's splitter, which splits from a thread, gets them from a fork server "
        "started once. Compression is `ESS_SPLIT_COMPRESSION`: `source` keeps the source "
        "file's (zlib level 1 here) and copies source baskets that fall wholly inside a range "
        "(none do here: a source basket holds 20,000 events).",
        "",
        results_table(rows, source),
        "",
        *targets(rows),
        "",
        *_noise(rows, load),
        *what_limits(rows, breakdowns, source),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _noise(rows: list[Row], load: list[float]) -> list[str]:
    """A warning when other work on the machine made the runs of a case differ."""
    spread = [row for row in rows if row.case.kind != "copy" and len(row.runs) > 1]
    if not spread:
        return []
    row = max(spread, key=lambda row: max(row.runs) / min(row.runs))
    worst = max(row.runs) / min(row.runs)
    if max(load) < 0.5 and worst < 1.2:
        return []
    nproc = len(os.sched_getaffinity(0))
    return [
        f"The runs of one case differ by up to {worst - 1:.0%} ({row.case.name}: "
        f"{min(row.runs):.2f} to {max(row.runs):.2f} s), with a 1-minute load average of "
        f"{load[0]:.2f} before and {load[-1]:.2f} after on {nproc} cores: other work shared "
        "the machine, so the medians, the ratios between cases and the speed-ups of the "
        "workers most, carry that noise.",
        "",
    ]


def _shape(source: InputFile) -> list[str]:
    import uproot

    with uproot.open(source.path) as root_file:
        tree = root_file[TREE]
        fcompress = int(root_file.file.fCompress)
        branches = [
            (str(branch.name), str(branch.typename), int(branch.num_baskets))
            for branch in tree.branches
        ]
        uncompressed = int(tree.uncompressed_bytes)
        events = int(tree.num_entries)
    algorithm, level = divmod(fcompress, 100)
    algorithms = {1: "ZLIB", 2: "LZMA", 4: "LZ4", 5: "ZSTD"}
    baskets = sorted({count for _, _, count in branches})
    basket_text = f"{baskets[0]}" if len(baskets) == 1 else f"{baskets[0]} to {baskets[-1]}"
    listing = ", ".join(f"`{name}` ({typename})" for name, typename, _ in branches)
    return [
        f"- `{source.path.name}`: {source.size / MB:.1f} MB, one TTree `{TREE}` of "
        f"{events:,} events ({source.size / events:.0f} bytes per event on disk)",
        f"- compression: {algorithms.get(algorithm, str(algorithm))} level {level} "
        f"(fCompress {fcompress}); {uncompressed / MB:.1f} MB uncompressed, "
        f"{uncompressed / source.size:.2f}x the file size",
        f"- baskets: {basket_text} per branch, {CHUNK_EVENTS:,} events each",
        f"- {len(branches)} branches: {listing}",
    ]


def software() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import awkward
    import numpy
    import uproot

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"no {name}"

    return (
        f"Python {platform.python_version()}, uproot {uproot.__version__}, "
        f"awkward {awkward.__version__}, numpy {numpy.__version__}, "
        f"zlib {zlib.ZLIB_RUNTIME_VERSION}, {installed('isal')}, {installed('cramjam')}"
    )
