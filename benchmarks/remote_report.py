"""The remote-split benchmark's tables and markdown page.

Consumes the measured ``Layout``s and produces, per layout, the table of its ranges and the
verdict on each target (under a second, under three times the range's share fetched), and the
page: the command, the machine, the inputs, the tables, and what limits a remote split,
derived from the numbers.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from pathlib import Path

from benchmarks.machine import describe_machine
from benchmarks.ntuple import CHUNK_EVENTS, MB
from benchmarks.remote_cases import Layout, Row, basket_prefixes
from benchmarks.split_report import software

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 1.0
TARGET_FETCHED_RATIO = 3.0


def table(layout: Layout) -> str:
    lines = [
        "| range | events | seconds (median) | bytes fetched | range's share of the input "
        "| fetched / share | least a reader fetches | fetched / least | range file bytes "
        "| runs (s) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in layout.rows:
        share = layout.share(row.case)
        least = layout.least(row)
        runs = ", ".join(f"{s.seconds:.3f}" for s in row.samples)
        lines.append(
            f"| {row.case.name} | {row.case.first:,} to {row.case.last:,} | {row.seconds:.3f} "
            f"| {row.fetched / MB:.3f} MB | {share / MB:.3f} MB | {row.fetched / share:.1f} "
            f"| {least / MB:.3f} MB | {row.fetched / least:.2f} "
            f"| {row.range_bytes / MB:.3f} MB | {runs} |"
        )
    return "\n".join(lines)


def page(
    command: list[str],
    started: dt.datetime,
    load: list[float],
    repeat: int,
    layouts: list[Layout],
    xrootd: str | None = None,
) -> str:
    python = Path(sys.executable)
    if python.is_relative_to(PROJECT_ROOT):
        python = python.relative_to(PROJECT_ROOT)
    endpoint = os.environ.get("ESS_S3_ENDPOINT_URL", "http://127.0.0.1:8080")
    lines = [
        "# Splitting one range from S3",
        "",
        "Written by `python -m benchmarks.remote_bench` (see its docstring); rerun it to refresh "
        "this page.",
        "",
        f"- command: `{shlex.join([str(python), '-m', 'benchmarks.remote_bench', *command])}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {describe_machine()}; 1-minute load average {load[0]:.2f} before the "
        f"timed runs, {load[-1]:.2f} after",
        f"- software: {software()}",
        f"- S3 server: {endpoint} (OpenStack Swift's S3 API on the same machine: no network "
        "latency, so the seconds are mostly this process's own work and the server's)",
        *([f"- XRootD server: {xrootd} (on the same machine)"] if xrootd is not None else []),
        *(f"- input: {_input(layout)}" for layout in layouts),
        "",
        "The inputs hold the same generated events (`benchmarks.ntuple`'s generator, "
        f"drawn {CHUNK_EVENTS:,} at a time), zlib level 1, written with uproot in baskets of "
        "different sizes: the splitter benchmark's file, and the same events in the smaller "
        "baskets that files meant for reading a few events at a time are written with (their "
        "TTree record's basket arrays grown by half when full, as ROOT grows them, not tenfold "
        "as uproot does by default). Each "
        "run presigns a GET URL with the S3 store and calls `ess_split.remote.split_range` "
        "on it (the rows 'from XRootD': on the file's root:// URL): uproot opens the file "
        "through fsspec's HTTP filesystem (fsspec-xrootd) and the splitter fetches what the "
        "range needs. Bytes fetched are the HTTP response bodies received, counted by "
        "an aiohttp trace as they arrive (from XRootD, the bytes requested, which it returns "
        "exactly). The range's share is the input size times the range's "
        "fraction of the events: what the range's events occupy, compressed, in the source, "
        "the file's own overhead spread over all events. The least a reader fetches is what "
        "any reader of the file must: opening it (as measured alone, unless kept from an "
        "earlier range) and, of every branch, the stored bytes from the start of each basket "
        "holding the range to the range's end (of a basket the range before it began, from "
        "that range's end), taking the compression as uniform within a basket. "
        "MB = 10⁶ bytes.",
        "",
        f"## Results (median of {repeat} run{'s' if repeat != 1 else ''})",
        "",
    ]
    for layout in layouts:
        lines += [
            f"### Source baskets of {layout.shape.basket:,} events (`{layout.source.path.name}`)",
            "",
            table(layout),
            "",
            *(_verdict(layout, row) for row in layout.rows),
            "",
        ]
    lines += [
        "## What limits it",
        "",
        "Every split first opens the file and plans the split: the file's header, its "
        "directory, the streamers and the TTree record, which lists every basket of every "
        "branch (20 bytes a slot: size, first entry, position), so the record grows as the "
        "baskets shrink. Then, a compressed basket can only be inflated from its beginning, so "
        "a range costs, for every branch, the stored bytes from the start of the basket that "
        "holds it to the range's end (fetched by estimate from the branch's compression ratio, "
        "then extended if short); a basket wholly inside the range is copied as it is. LZ4 or "
        "ZSTD baskets, which cannot be inflated from a prefix, are fetched whole. Given the "
        "file's identity (as the edge's on-demand pool gives it), what a split fetched is kept "
        "by the process: a later range of the same file fetches neither the opening (the rows "
        "'opening kept', after the file's first range) nor, when it follows an earlier range "
        "into the same baskets, their beginnings again, only what lies past the earlier "
        "range's end (the rows 'after the range before it', as when pilots ask for a file's "
        "ranges in turn). An edge hands the opening one of its on-demand slots read to the "
        "others, so the file's ranges on any slot fetch it once.",
        "",
        "Half a basket on, no reader of the file can fetch less than the beginnings of its "
        "baskets (the column 'least a reader fetches'). A DEFLATE stream can only be entered "
        "where one of its blocks begins, with the 32 KiB of output before it: zlib at level 1 "
        "ends a block every 16,383 symbols (`lit_bufsize - 1`, at its default memory level), "
        "so at least 16 KB of output, over 4,000 events of a 4-byte branch. An index of "
        "entry points kept beside the file (built by inflating every basket once) would "
        "still cost, for every branch, the output from the block's start to the range's "
        "(half a block on average) and a window of up to 32 KiB: for a 4-byte branch, several "
        "times its part of the range. The target is reached at a basket start and for ranges "
        "that follow one another; a single range in the middle of large DEFLATE baskets is "
        "bounded by the format, and the splitter stays within the margin of its estimate of "
        "that bound (the column 'fetched / least').",
        "",
        *(_limit(layout) for layout in layouts),
        _targets(layouts),
        "",
    ]
    return "\n".join(lines)


def _input(layout: Layout) -> str:
    source, found = layout.source, layout.shape
    return (
        f"`{source.path.name}`, {source.size / MB:.1f} MB, {source.events:,} events, "
        f"{found.baskets:,} basket{'s' if found.baskets != 1 else ''} of {found.basket:,} "
        f"events per branch, TTree record {found.record_bytes / MB:.3f} MB"
    )


def _verdict(layout: Layout, row: Row) -> str:
    ratio = layout.ratio(row)
    share = layout.share(row.case)
    opening = 0.0 if row.case.kept else layout.opening.fetched / share
    where = (
        "nothing of the opening nor of the beginnings of the baskets up to where the range "
        "before it ended, kept from that range"
        if row.case.follows
        else "nothing of the opening, kept from the file's first range"
        if row.case.kept
        else f"{opening:.1f}x opening the file"
    )
    return (
        f"- {row.case.name}: {row.seconds:.3f} s (target < {TARGET_SECONDS:.0f} s: "
        f"{_reached(row.seconds < TARGET_SECONDS)}), {ratio:.1f}x the range's share fetched: "
        f"{where}, {ratio - opening:.1f}x the rest (target "
        f"< {TARGET_FETCHED_RATIO:.0f}x: {_reached(ratio < TARGET_FETCHED_RATIO)})"
    )


def _limit(layout: Layout) -> str:
    opening = layout.opening
    found = layout.shape
    share = layout.share(layout.rows[0].case)
    facts = []
    for row in layout.rows:
        if row.case.kept:
            continue
        rest = row.fetched - opening.fetched
        prefixes = basket_prefixes(layout.source.path, row.case)
        facts.append(
            f"{row.case.name}, {rest / MB:.3f} MB more ({rest / share:.1f}x the share), of "
            "which the beginnings of the baskets holding the range, up to its end, are about "
            f"{prefixes / MB:.3f} MB; the rest is the estimate's margin"
        )
    record = (
        ""
        if found.record_compressed
        else (
            f"; uproot writes it uncompressed: zlib level 1, as ROOT stores its objects, would "
            f"make it {found.record_zlib_bytes / MB:.3f} MB "
            f"({found.record_zlib_bytes / share:.1f}x the share). Reading only the basket slots "
            "around the range would save most of it, but each branch's place in the record "
            "follows from the one before it, so it would take a request per branch, one after "
            "the other: over a WAN more time than the bytes saved. The record is read in one "
            "request and kept (the rows 'opening kept')"
        )
    )
    seconds = [row.seconds for row in layout.rows]
    return (
        f"- Baskets of {found.basket:,} events: opening the file and planning the split "
        f"fetches {opening.fetched / MB:.3f} MB ({opening.fetched / share:.1f}x a range's "
        f"share), in {opening.seconds:.3f} s (one run; the splits take {min(seconds):.3f} to "
        f"{max(seconds):.3f} s). The TTree record is {found.record_bytes / MB:.3f} MB of it, "
        f"{found.basket_slots:,} basket slots for each of its branches{record}. Then the "
        "split fetches, for " + "; ".join(facts) + "."
    )


def _targets(layouts: list[Layout]) -> str:
    parts = []
    for layout in layouts:
        reached = []
        for row in layout.rows:
            fast = row.seconds < TARGET_SECONDS
            small = layout.ratio(row) < TARGET_FETCHED_RATIO
            status = {
                (True, True): "both",
                (True, False): "the time only",
                (False, True): "the bytes only",
                (False, False): "neither",
            }[fast, small]
            reached.append(f"{row.case.name} {status}")
        parts.append(f"{layout.shape.basket:,}-event baskets: " + ", ".join(reached))
    return (
        f"- Targets (< {TARGET_SECONDS:.0f} s, < {TARGET_FETCHED_RATIO:.0f}x the share "
        "fetched) reached: "
        + "; ".join(parts)
        + ". Here the seconds are this process's work and the local server's; on a WAN each "
        "round trip adds its latency, and opening the file takes several, one after the other."
    )


def _reached(reached: bool) -> str:
    return "reached" if reached else "not reached"
