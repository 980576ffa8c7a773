"""Splitting files of objects and vectors, next to ROOT's own copy of the same entries and to
uproot's read of every branch it can read.

On two inputs made with ROOT (``objects_inputs``: a PHYSLITE-like file merged from copies of
the ATLAS sample, and a ROOT-written vector ntuple) it measures, each case in a fresh process,
median of the repeats:

* ``read``: uproot's pass over every branch it can read (branches it cannot are left out and
  counted), in 64 MiB steps: the reading any split has to do, where uproot can do it;
* ``root-copy@N``: ROOT's own copy of the same ranges, ``TTree::CopyTree("", "", n, first)``
  of each range into a file of its own (what a ROOT user would write), one process;
* ``split@N``: ``split_root_file``, one process; ``split@N/cores``: ``split_root_file_parallel``
  with one worker per core, as the edge splits;

for N = 1,000 and 10,000 events per range, keeping the source's compression. Targets: at 1,000
events per range ESS at least 3x as fast as ROOT's copy; at 10,000, at least the MB/s of
uproot's read. The table is printed and written with the command, the machine and the inputs.

Usage: ``python -m benchmarks.objects_bench [--size-mb 300] [--vector-size-mb 200]
[--workdir var/bench] [--out docs/benchmarks/objects.md] [--repeat 3] [--samples DIR]
[--inputs physlite,vectors] [--cases read,split@1k,...]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.objects_inputs import MB, Input, physlite, vectors

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SIZES = (1_000, 10_000)
CASES = (
    "read",
    "root-copy@1k",
    "split@1k",
    "split@1k/cores",
    "root-copy@10k",
    "split@10k",
    "split@10k/cores",
)
# ROOT's copy is the slowest case by far: fewer repeats keep the run short.
_ROOT_COPY_REPEATS = 1


@dataclass(frozen=True)
class Sample:
    seconds: float
    cpu_seconds: float
    files: int
    output_bytes: int
    peak_rss_bytes: int
    note: str = ""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.child is not None:
        sample = _child(
            args.child, Path(args.source), args.tree, int(args.events), Path(args.scratch)
        )
        print(json.dumps(sample.__dict__))
        return 0
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    inputs = []
    for name in args.inputs.split(","):
        if name == "physlite":
            inputs.append(physlite(workdir, float(args.size_mb), Path(args.samples)))
        elif name == "vectors":
            inputs.append(vectors(workdir, float(args.vector_size_mb)))
        else:
            raise SystemExit(f"unknown input {name!r}")
    cases = args.cases.split(",")
    results: dict[tuple[str, str], list[Sample]] = {}
    for source in inputs:
        for case in cases:
            repeat = _ROOT_COPY_REPEATS if case.startswith("root-copy") else int(args.repeat)
            runs = [_run(case, source, workdir) for _ in range(repeat)]
            results[(source.name, case)] = runs
            print(
                f"{source.name:9s} {case:16s} " + " ".join(f"{r.seconds:.2f}s" for r in runs),
                file=sys.stderr,
                flush=True,
            )
    text = _page(argv, started, inputs, cases, results)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", default="300")
    parser.add_argument("--vector-size-mb", default="200")
    parser.add_argument("--workdir", default="var/bench")
    parser.add_argument("--out", default="docs/benchmarks/objects.md")
    parser.add_argument("--repeat", default="3")
    parser.add_argument(
        "--samples",
        default=os.environ.get(
            "ESS_TEST_COFFEA_SAMPLES", "/var/tmp/ess/samples/coffea-2024.11.0/samples"
        ),
    )
    parser.add_argument("--inputs", default="physlite,vectors")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child")
    parser.add_argument("--source")
    parser.add_argument("--tree")
    parser.add_argument("--events")
    parser.add_argument("--scratch")
    return parser.parse_args(argv)


def _run(case: str, source: Input, workdir: Path) -> Sample:
    scratch = workdir / f"scratch-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.objects_bench",
                "--child",
                case,
                "--source",
                str(source.path),
                "--tree",
                source.tree,
                "--events",
                str(source.events),
                "--scratch",
                str(scratch),
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env=env,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Sample(**json.loads(out.stdout.strip().splitlines()[-1]))


def _events_per_range(case: str) -> int:
    return {"1k": 1_000, "10k": 10_000}[case.split("@")[1].split("/")[0]]


def _child(case: str, source: Path, tree: str, events: int, scratch: Path) -> Sample:
    # Imports before the clock: they are per process, not per file.
    note = ""
    if case == "read":
        import uproot

        readable, unreadable = _uproot_readable(source, tree)
    elif case.startswith("root-copy"):
        import ROOT

        ROOT.gROOT.SetBatch(True)
        ROOT.gErrorIgnoreLevel = ROOT.kError
    else:
        from ess_split.parallel import split_root_file_parallel
        from ess_split.split import split_root_file
    cpu_start = _cpu()
    start = time.perf_counter()
    outputs: list[Path] = []
    if case == "read":
        with uproot.open(source, array_cache=None) as root_file:
            for block in root_file[tree].iterate(
                readable, step_size="64 MiB", library="ak", how=dict
            ):
                del block
        note = f"{len(readable)} branches read, {unreadable} left out"
    elif case.startswith("root-copy"):
        per = _events_per_range(case)
        source_file = ROOT.TFile.Open(str(source))
        source_tree = source_file.Get(tree)
        left_out = _without_dictionaries(ROOT, source_tree)
        total = source_tree.GetListOfBranches().GetEntries()
        note = f"{total - left_out} branches copied, {left_out} ROOT cannot copy here"
        for first in range(0, events, per):
            path = scratch / f"copy.{first}.root"
            out_file = ROOT.TFile(str(path), "RECREATE", "", source_file.GetCompressionSettings())
            copied = source_tree.CopyTree("", "", min(per, events - first), first)
            copied.Write()
            out_file.Close()
            outputs.append(path)
        source_file.Close()
    else:
        per = _events_per_range(case)
        if case.endswith("/cores"):
            result = split_root_file_parallel(source, scratch, per, workers=0, n_events=events)
        else:
            result = split_root_file(source, scratch, per, n_events=events)
        outputs = [r.path for r in result.ranges]
    seconds = time.perf_counter() - start
    return Sample(
        seconds=seconds,
        cpu_seconds=_cpu() - cpu_start,
        files=len(outputs),
        output_bytes=sum(p.stat().st_size for p in outputs),
        peak_rss_bytes=_peak(),
        note=note,
    )


def _without_dictionaries(root: Any, tree: Any) -> int:
    """Disable the top-level branches of classes ROOT has no dictionary for (it cannot write
    them: experiments' classes, whose libraries are not here); return how many."""
    count = 0
    for branch in tree.GetListOfBranches():
        if branch.IsA().GetName() != "TBranchElement":
            continue
        cls = root.TClass.GetClass(branch.GetClassName())
        if cls and (cls.HasDictionary() or cls.GetCollectionProxy()):
            proxy = cls.GetCollectionProxy()
            value = proxy.GetValueClass() if proxy else None
            # A collection of numbers has no value class.
            if not value or value.HasDictionary():
                continue
        name = branch.GetName()
        # A split object's branches are named after it, its name ending with a dot.
        tree.SetBranchStatus(f"{name}*" if name.endswith(".") else name, 0)
        count += 1
    return count


def _uproot_readable(source: Path, tree: str) -> tuple[list[str], int]:
    """The branches uproot reads (their first entry, as a trial), and how many it cannot."""
    import uproot

    readable = []
    unreadable = 0
    with uproot.open(source) as root_file:
        for name in root_file[tree].keys(recursive=True):
            branch = root_file[tree][name]
            if len(branch.branches):
                continue
            try:
                branch.array(entry_stop=1, library="ak")
            except Exception:
                unreadable += 1
            else:
                readable.append(name)
    return readable, unreadable


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _median(runs: list[Sample]) -> float:
    return statistics.median(r.seconds for r in runs)


def _page(
    argv: Sequence[str] | None,
    started: dt.datetime,
    inputs: list[Input],
    cases: list[str],
    results: dict[tuple[str, str], list[Sample]],
) -> str:
    command = " ".join([".venv/bin/python -m benchmarks.objects_bench", *(argv or sys.argv[1:])])
    load = os.getloadavg()[0]
    lines = [
        "# Splitting files of objects and vectors",
        "",
        "Written by `python -m benchmarks.objects_bench` (see its docstring); rerun it to "
        "refresh this page.",
        "",
        f"- command: `{command.strip()}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
        f"1-minute load average {load:.2f} at the end",
        "",
        "## Inputs",
        "",
    ]
    for source in inputs:
        lines.append(
            f"- `{source.path.name}` ({source.name}): {source.size / MB:,.1f} MB, tree "
            f"`{source.tree}` of {source.events:,} events; {source.description}"
        )
    lines += [
        "",
        "## Results",
        "",
        "Seconds are the median of the runs of each case, each in a fresh process (imports "
        "excluded); MB/s are the input file's MB over them. `vs ROOT copy` is ROOT's copy's "
        "seconds over the case's, for the same ranges; `vs read` the case's MB/s over uproot's "
        "read's.",
        "",
        "| input | case | seconds | input MB/s | files | output / input | vs ROOT copy | vs read "
        "| CPU s | peak RSS MB | runs (s) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    verdicts = []
    for source in inputs:
        read = results.get((source.name, "read"))
        for case in cases:
            runs = results[(source.name, case)]
            seconds = _median(runs)
            copy_case = None if "@" not in case else f"root-copy@{case.split('@')[1].split('/')[0]}"
            copy = results.get((source.name, copy_case)) if copy_case else None
            vs_copy = (
                "—" if copy is None or case.startswith("root") else f"{_median(copy) / seconds:.2f}"
            )
            vs_read = "—" if read is None or case == "read" else f"{_median(read) / seconds:.2f}"
            ratio = sum(r.output_bytes for r in runs) / len(runs) / source.size
            note = f" ({runs[0].note})" if runs[0].note else ""
            speed = source.size / MB / seconds
            lines.append(
                f"| {source.name} | {case}{note} | {seconds:.2f} | {speed:,.1f} "
                f"| {runs[0].files} | {ratio:.3f} | {vs_copy} | {vs_read} "
                f"| {statistics.median(r.cpu_seconds for r in runs):.2f} "
                f"| {max(r.peak_rss_bytes for r in runs) / 2**20:,.0f} "
                f"| {', '.join(f'{r.seconds:.2f}' for r in runs)} |"
            )
            if case.startswith("split@1k") and copy is not None:
                reached = _median(copy) / seconds >= 3.0
                verdicts.append(
                    f"- {source.name}, {case}: {_median(copy) / seconds:.2f}x as fast as ROOT's "
                    f"copy (target ≥ 3: {'reached' if reached else 'not reached'})"
                )
            if case.startswith("split@10k") and read is not None:
                reached = _median(read) / seconds >= 1.0
                verdicts.append(
                    f"- {source.name}, {case}: {_median(read) / seconds:.2f}x uproot's read "
                    f"MB/s (target ≥ 1.0: {'reached' if reached else 'not reached'})"
                )
    lines += ["", "## Targets", "", *verdicts, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
