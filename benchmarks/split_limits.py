"""The splitter page's "What limits it": facts derived from the medians and the profiles.

Consumes the rows of the measured cases, the profiled breakdowns and the input; produces the
section's lines: the cost of each extra range file, compressing against inflating, what one
range file's work is made of, the workers' speed-up, the compression choices, memory and which
splits reach their targets, then the profile table.
"""

from __future__ import annotations

import os

from benchmarks.ntuple import MB, InputFile
from benchmarks.split_cases import (
    TARGET_RATIOS,
    WORKER_COMPRESSIONS,
    Row,
    ratio_to_read,
    read_row,
    serial_rows,
    worker_row,
)
from benchmarks.split_profile import Breakdown, profile_table


def _zlib_libraries() -> tuple[str, str]:
    """How the splitter compresses and inflates zlib baskets (``ess_split.format.codecs``)."""
    from ess_split.format import codecs

    if codecs._ISAL is not None:
        return (
            "python-isal's `isal_zlib.compress`, a drop-in for `zlib.compress`",
            "python-isal",
        )
    return ("the standard library's `zlib.compress`", "the standard library's zlib")


def _cores_used(row: Row) -> str:
    per_wall = row.cpu_seconds / row.seconds
    nproc = len(os.sched_getaffinity(0))
    if per_wall <= 1.05:
        # Below 1.0 the process was waiting: for the disk or for a core other processes held.
        return (
            f"{row.case.name} used at most one of the {nproc} cores ({per_wall:.2f} CPU "
            "seconds per wall second)."
        )
    return f"{row.case.name} used {per_wall:.2f} CPU seconds per wall second of the {nproc} cores."


def what_limits(rows: list[Row], breakdowns: list[Breakdown], source: InputFile) -> list[str]:
    """The 'what limits it' section: facts derived from the medians and the profiles."""
    read = read_row(rows)
    serial = serial_rows(rows)
    profiled = {b.case: b for b in breakdowns}
    facts: list[str] = []
    if len(serial) >= 2 and serial[-1].files > serial[0].files:
        coarse, fine = serial[0], serial[-1]
        extra = fine.files - coarse.files
        per_file = (fine.seconds - coarse.seconds) / extra
        per_file_bytes = (fine.output_bytes - coarse.output_bytes) / extra
        rest = coarse.seconds - per_file * coarse.files
        facts.append(
            f"- **Per-file cost.** Each extra range file costs {per_file * 1e3:.1f} ms of wall "
            f"time and {per_file_bytes / 1e3:.1f} kB of output ({fine.case.name} minus "
            f"{coarse.case.name}, over its {extra:,} extra files); a range file holds "
            f"{fine.metadata_bytes / 1e3:.1f} kB outside its baskets (header, streamers, "
            f"TTree metadata, directory). That per-file time is "
            f"{per_file * fine.files / fine.seconds:.0%} of {fine.case.name}'s wall time and "
            f"{per_file * coarse.files / coarse.seconds:.0%} of {coarse.case.name}'s. The rest, "
            f"{rest:.2f} s, is work proportional to the data: alone, in one process, it would "
            f"run at {read.seconds / rest:.2f}x the read-only MB/s."
        )
    compressor, inflater = _zlib_libraries()
    coarse_profile = profiled.get(serial[0].case.name) if serial else None
    if coarse_profile is not None and coarse_profile.inflate > 0:
        b = coarse_profile
        facts.append(
            f"- **Compression.** In the profiled {b.case} run, compressing the output baskets "
            f"at the source's zlib level 1 ({compressor}, in ROOT's blocks) takes "
            f"{b.compress:.2f} s of {b.total:.2f} s ({b.compress / b.total:.0%}), "
            f"{b.compress / b.inflate:.1f}x the {b.inflate:.2f} s of inflating the source "
            f"baskets ({inflater}). Inflating takes {b.inflate / read.seconds:.0%} of the "
            "whole read-only pass's time, which inflates with uproot's default, the standard "
            "library's zlib, and builds awkward arrays; the split never builds arrays. "
            f"{_cores_used(serial[0])}"
        )
    fine_profile = profiled.get(serial[-1].case.name) if serial else None
    if fine_profile is not None and fine_profile.files:
        b = fine_profile
        ms = 1e3 / b.files
        baskets_ms = (b.add - b.compress) * ms
        facts.append(
            f"- **Inside the per-file cost** (profiled {b.case}, cProfile milliseconds per "
            f"file, which inflate this Python-level work): opening the file "
            f"{b.open * ms:.2f} ms, patching the template's counts in, closing and renaming "
            f"{b.commit * ms:.2f} ms, building and appending its baskets' keys apart from "
            f"compressing them {baskets_ms:.2f} ms (one basket per branch per file). The "
            f"template itself (`uproot.recreate`, `mktree`, the streamers) is written once per "
            f"split: {b.template:.2f} s, {b.template / b.total:.1%} of the profiled time."
        )
    if coarse_profile is not None and fine_profile is not None:
        facts.append(
            f"- **Reading and cutting.** Reading and inflating the source baskets is "
            f"{coarse_profile.read / coarse_profile.total:.0%} of the profiled "
            f"{coarse_profile.case} time and "
            f"{fine_profile.read / fine_profile.total:.0%} of {fine_profile.case}'s; cutting "
            f"the ranges' entries out of them "
            f"{coarse_profile.cut / coarse_profile.total:.0%} and "
            f"{fine_profile.cut / fine_profile.total:.0%}."
        )
    facts += _worker_facts(rows, source)
    lines = ["## What limits it", "", *facts, ""]
    if not breakdowns:
        return lines
    return lines + profile_table(rows, breakdowns)


def _worker_facts(rows: list[Row], source: InputFile) -> list[str]:
    read = read_row(rows)
    facts: list[str] = []
    speedups: list[str] = []
    for single in serial_rows(rows):
        worker = worker_row(rows, single.case.events_per_range, "source")
        if worker is None:
            continue
        if worker.workers == 1:
            speedups.append(
                f"{worker.case.name} ran in one process: the file is too small to share"
            )
            continue
        speedup = single.seconds / worker.seconds
        speedups.append(
            f"{worker.case.name} runs {speedup:.2f}x as fast as {single.case.name} with "
            f"{worker.workers} workers ({speedup / worker.workers:.0%} of linear; fastest runs "
            f"{min(single.runs) / min(worker.runs):.2f}x), at "
            f"{worker.cpu_seconds / worker.seconds:.2f} CPU seconds per wall second and "
            f"{worker.cpu_seconds - single.cpu_seconds:+.2f} CPU s over the single process"
        )
    if speedups:
        facts.append(
            "- **Workers.** "
            + "; ".join(speedups)
            + ". What the workers add: the parent plans the file before any worker starts, "
            "each worker opens the file and writes its own template, and a worker that "
            "finishes first waits for the others."
        )
    choices: list[str] = []
    for events in TARGET_RATIOS:
        base = worker_row(rows, events, "source")
        for compression in WORKER_COMPRESSIONS:
            row = worker_row(rows, events, compression)
            if row is None or base is None:
                continue
            choices.append(
                f"{row.case.name} {read.seconds / row.seconds:.2f}x the read-only MB/s, "
                f"{row.output_bytes / source.size:.3f} of the input bytes"
                + (
                    ""
                    if row is base
                    else f" ({row.output_bytes / base.output_bytes - 1:+.0%} on `source`)"
                )
            )
    if choices:
        facts.append(
            "- **Compression choices** (with the workers): "
            + "; ".join(choices)
            + ". The choice trades compressing time on the edge for bytes stored, uploaded "
            "and downloaded by the pilots."
        )
    serial = serial_rows(rows)
    parallel = [row for row in rows if row.case.parallel and row.workers > 1]
    if serial and parallel:
        own = max(row.peak_rss_bytes for row in parallel)
        worker_peak = max(row.worker_peak_rss_bytes for row in parallel)
        bound = max(
            row.peak_rss_bytes + row.workers * row.worker_peak_rss_bytes for row in parallel
        )
        facts.append(
            f"- **Memory.** A single-process split peaks at "
            f"{max(row.peak_rss_bytes for row in serial) / MB:,.0f} MB. With workers the "
            f"process that starts them peaks at {own / MB:,.0f} MB and the largest worker at "
            f"{worker_peak / MB:,.0f} MB, at most {bound / MB:,.0f} MB together (shared pages "
            "counted in each process)."
        )
    reached = [row for row in rows if row.case.target_ratio is not None]
    met = [
        row.case.name for row in reached if ratio_to_read(rows, row) >= (row.case.target_ratio or 0)
    ]
    if reached:
        facts.append(
            f"- **Targets** (≥ {TARGET_RATIOS[10_000]:.1f} at 10,000 events per range, "
            f"≥ {TARGET_RATIOS[1_000]:.1f} at 1,000): reached by "
            + (", ".join(met) if met else "no split")
            + "."
        )
    return facts
