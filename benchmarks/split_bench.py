"""Throughput of cutting a ROOT file into event-range files, next to copying and reading it.

Generates once (cached in the work directory) a zlib-compressed ntuple of about the requested
size, then measures on that one file, each case in a fresh subprocess so that the peak memory
reported is the case's own:

* ``copy``: ``shutil.copyfile`` of the file, the floor of any whole-file operation;
* ``read``: an uproot pass over every branch in blocks as large as the splitter's, the reading
  that any split has to do;
* ``split@10k`` and ``split@1k``: ``split_root_file`` at 10,000 and 1,000 events per range, in
  one process, keeping the source's compression;
* ``split@10k/cores/<compression>`` and ``split@1k/cores/<compression>``: the service's split,
  ``split_root_file_parallel`` with one worker process per core (``ESS_SPLIT_WORKERS=0``, the
  default), for the range-file compressions ``source`` (the source's zlib), ``lz4:1`` and
  ``zstd:1`` (``ESS_SPLIT_COMPRESSION``).

For each case it reports the median over the repeats of the seconds, input MB/s, output
files/s, peak resident memory (the worker processes' too), MB/s relative to the read-only pass
and output over input bytes, and whether each split reaches its target ratio. One more run of
each single-process split under cProfile shows where the time goes. The table is printed, and
written with the command, the machine and the file's shape to a markdown page.

Usage: ``python -m benchmarks.split_bench [--size-mb 200] [--workdir var/bench]
[--out docs/benchmarks/split.md] [--repeat 3] [--cases read,split@10k,...] [--no-profile]``.

The input is ``benchmarks.ntuple``'s; the cases are defined in ``split_cases``, run by
``split_runner``, profiled by ``split_profile`` and written up by ``split_report`` and
``split_limits``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.ntuple import MB, ensure_input
from benchmarks.split_cases import CASE_BY_NAME, chosen
from benchmarks.split_report import page, results_table, targets
from benchmarks.split_runner import measure, profile, progress, run_child


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.child is not None:
        profile_out = None if args.profile_out is None else Path(args.profile_out)
        run_child(CASE_BY_NAME[args.child], Path(args.source), Path(args.scratch), profile_out)
        return 0

    workdir = Path(args.workdir).resolve()
    out = Path(args.out)
    repeat = int(args.repeat)
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    cases = chosen(args.cases)
    started = dt.datetime.now(dt.UTC)
    source = ensure_input(workdir, float(args.size_mb))
    progress(f"input: {source.path} ({source.size / MB:.1f} MB, {source.events:,} events)")
    # Other processes on the machine slow every case; the load shows how busy it was.
    load = [os.getloadavg()[0]]
    rows = measure(source, workdir, repeat, cases)
    load.append(os.getloadavg()[0])
    breakdowns = [] if args.no_profile else profile(source, workdir, cases)
    print(results_table(rows, source))
    print("\n".join(targets(rows)))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = list(sys.argv[1:] if argv is None else argv)
    out.write_text(page(command, started, load, source, repeat, rows, breakdowns))
    progress(f"wrote {out}")
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.split_bench",
        description="Measure split_root_file against copying and reading the same file.",
    )
    parser.add_argument("--size-mb", type=float, default=200.0, help="input size (default 200)")
    parser.add_argument("--workdir", default="var/bench", help="cache and scratch directory")
    parser.add_argument("--out", default="docs/benchmarks/split.md", help="markdown page")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median reported)")
    parser.add_argument(
        "--cases",
        help="comma-separated cases to run (default all; read always runs): "
        + ", ".join(CASE_BY_NAME),
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    # How the parent runs one case in a fresh process.
    parser.add_argument("--child", choices=list(CASE_BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
