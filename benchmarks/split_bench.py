"""Throughput of cutting a ROOT file into event-range files, next to copying and reading it.

Generates once (cached in the work directory) a zlib-compressed ntuple of about the requested
size, then measures on that one file, each case in a fresh subprocess so that the peak memory
reported is the case's own:

* ``copy``: ``shutil.copyfile`` of the file, the floor of any whole-file operation;
* ``read``: an uproot pass over every branch in blocks as large as the splitter's, the reading
  that any split has to do;
* ``split@10k`` and ``split@1k``: ``split_root_file`` at 10,000 and 1,000 events per range.

For each case it reports the median over the repeats of the seconds, input MB/s, output
files/s, peak resident memory, MB/s relative to the read-only pass and output over input
bytes. One more run of each split under cProfile shows where the time goes. The table is
printed, and written with the command, the machine and the file's shape to a markdown page.

Usage: ``python -m benchmarks.split_bench [--size-mb 200] [--workdir var/bench]
[--out docs/benchmarks/split.md] [--repeat 3] [--no-profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from benchmarks.machine import describe_machine

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MB = 10**6

TREE = "Events"
# Each extend call writes one basket per branch, so this sets the basket size: 20k events make
# baskets of 80 kB (flat int32) to ~1 MB (jet floats) uncompressed, sizes ntuple writers use.
CHUNK_EVENTS = 20_000
# fCompress 101, ROOT's long-standing default for ntuples.
COMPRESSION_LEVEL = 1
SEED = 20_240_601
# Part of the cache key: changing the generated content must rebuild a cached file.
GENERATOR_VERSION = 1

BRANCH_TYPES: dict[str, str] = {
    "run": "int32",
    "luminosityBlock": "int32",
    "event": "int64",
    "PV_npvs": "int32",
    "genWeight": "float64",
    "MET_pt": "float32",
    "MET_phi": "float32",
    "Jet_pt": "var * float32",
    "Jet_eta": "var * float32",
    "Jet_phi": "var * float32",
    "Jet_mass": "var * float32",
    "Muon_pt": "var * float32",
    "Muon_eta": "var * float32",
}

Kind = Literal["copy", "read", "split"]


@dataclass(frozen=True)
class Case:
    name: str
    kind: Kind
    description: str
    events_per_range: int = 0
    # Minimum MB/s relative to the read-only pass that the splitter aims for.
    target_ratio: float | None = None


CASES = (
    Case("copy", "copy", "`shutil.copyfile` of the input"),
    Case("read", "read", "uproot `TTree.iterate` over all branches, 64 MiB steps"),
    Case("split@10k", "split", "`split_root_file`, 10,000 events per range", 10_000, 1.0),
    Case("split@1k", "split", "`split_root_file`, 1,000 events per range", 1_000, 0.3),
)
CASE_BY_NAME = {case.name: case for case in CASES}


@dataclass(frozen=True)
class InputFile:
    path: Path
    size: int
    events: int


@dataclass(frozen=True)
class Sample:
    """One run of one case, measured inside its own process."""

    seconds: float
    # User plus system CPU seconds of the operation: above ``seconds`` only if it used threads.
    cpu_seconds: float
    files: int
    output_bytes: int
    peak_rss_bytes: int
    # Bytes of the first output file outside its baskets (headers, streamers, TTree metadata).
    metadata_bytes: int = 0


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
    read: float
    decompress: float
    slicing: float
    create: float
    mktree: float
    metadata_sums: float
    extend: float
    compress: float
    close: float
    checksum: float
    top: list[TopEntry]

    @property
    def per_file(self) -> float:
        """Seconds of the steps done once per output file, whatever its size."""
        return self.create + self.mktree + self.close

    @property
    def other(self) -> float:
        return self.total - (
            self.read
            + self.slicing
            + self.create
            + self.mktree
            + self.extend
            + self.close
            + self.checksum
        )


@dataclass(frozen=True)
class Row:
    """The repeats of one case."""

    case: Case
    samples: list[Sample]

    @property
    def runs(self) -> list[float]:
        return [sample.seconds for sample in self.samples]

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(sample.cpu_seconds for sample in self.samples)

    @property
    def peak_rss_bytes(self) -> float:
        return statistics.median(sample.peak_rss_bytes for sample in self.samples)

    @property
    def files(self) -> int:
        return self.samples[0].files

    @property
    def output_bytes(self) -> int:
        return self.samples[0].output_bytes

    @property
    def metadata_bytes(self) -> int:
        return self.samples[0].metadata_bytes


# ---------------------------------------------------------------------------------------------
# The input file


def ensure_input(workdir: Path, size_mb: float) -> InputFile:
    """The cached benchmark ntuple of about ``size_mb`` MB, generated if missing or stale."""
    stem = f"ntuple-{size_mb:g}MB"
    path = workdir / f"{stem}.root"
    meta_path = workdir / f"{stem}.json"
    key = {
        "version": GENERATOR_VERSION,
        "seed": SEED,
        "chunk_events": CHUNK_EVENTS,
        "level": COMPRESSION_LEVEL,
    }
    if meta_path.exists() and path.exists():
        meta = json.loads(meta_path.read_text())
        if {name: meta.get(name) for name in key} == key and meta.get("size") == (
            path.stat().st_size
        ):
            return InputFile(path, int(meta["size"]), int(meta["events"]))
    workdir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    events = _generate(path, int(size_mb * MB))
    size = path.stat().st_size
    meta_path.write_text(json.dumps({**key, "size": size, "events": events}))
    return InputFile(path, size, events)


def _generate(path: Path, target_bytes: int) -> int:
    import numpy as np
    import uproot

    rng = np.random.default_rng(SEED)
    temp = path.with_name(f".{path.name}.part")
    events = 0
    with uproot.recreate(temp, compression=uproot.ZLIB(COMPRESSION_LEVEL)) as out:
        tree = out.mktree(TREE, BRANCH_TYPES, title="ESS benchmark", counter_name=_counter_name)
        # uproot flushes every basket as it is written, so the size on disk tracks the data.
        while events == 0 or temp.stat().st_size < target_bytes:
            tree.extend(_chunk(rng, events, CHUNK_EVENTS))
            events += CHUNK_EVENTS
    os.replace(temp, path)
    return events


def _counter_name(branch: str) -> str:
    # Jet_pt, Jet_eta, ... all share nJet, as in NanoAOD-like ntuples.
    return "n" + branch.split("_", 1)[0]


def _chunk(rng: Any, first: int, n: int) -> dict[str, Any]:
    import awkward as ak
    import numpy as np

    n_jet = rng.poisson(8.0, n).astype(np.int32)
    n_muon = rng.poisson(1.5, n).astype(np.int32)
    jets = int(n_jet.sum())
    muons = int(n_muon.sum())
    position = first + np.arange(n, dtype=np.int64)
    return {
        "run": (362_000 + position // 500_000).astype(np.int32),
        "luminosityBlock": (1 + position // 1_000).astype(np.int32),
        "event": 10**10 + 37 * position + rng.integers(0, 37, n),
        "PV_npvs": rng.poisson(35.0, n).astype(np.int32),
        "genWeight": np.where(rng.random(n) < 0.1, -0.5839, 0.5839),
        "MET_pt": rng.exponential(40.0, n).astype(np.float32),
        "MET_phi": _truncated(rng.uniform(-np.pi, np.pi, n)),
        "Jet_pt": ak.unflatten((20.0 + rng.exponential(30.0, jets)).astype(np.float32), n_jet),
        "Jet_eta": ak.unflatten(_truncated(rng.normal(0.0, 1.6, jets)), n_jet),
        "Jet_phi": ak.unflatten(_truncated(rng.uniform(-np.pi, np.pi, jets)), n_jet),
        "Jet_mass": ak.unflatten(_truncated(rng.exponential(8.0, jets)), n_jet),
        "Muon_pt": ak.unflatten((5.0 + rng.exponential(20.0, muons)).astype(np.float32), n_muon),
        "Muon_eta": ak.unflatten(_truncated(rng.normal(0.0, 1.2, muons)), n_muon),
    }


def _truncated(values: Any, mantissa_bits: int = 10) -> Any:
    # Angles and masses are stored with 10 mantissa bits, as NanoAOD does, which is what makes
    # real ntuples compress better than random floats.
    import numpy as np

    bits = values.astype(np.float32).view(np.uint32)
    mask = np.uint32((0xFFFFFFFF << (23 - mantissa_bits)) & 0xFFFFFFFF)
    return (bits & mask).view(np.float32)


# ---------------------------------------------------------------------------------------------
# One case, in the child process


def _child(case: Case, source: Path, scratch: Path, profile_out: Path | None) -> None:
    # Imports happen before the clock starts: they are per-process, not per-file, costs.
    if case.kind != "copy":
        import uproot  # noqa: F401

        import ess_splitter.rootsplit  # noqa: F401
    profiler = cProfile.Profile() if profile_out is not None else None
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    outputs = _operation(case, source, scratch)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    # ru_maxrss is in kibibytes on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sample = Sample(
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        files=len(outputs),
        output_bytes=sum(path.stat().st_size for path in outputs),
        peak_rss_bytes=peak,
        metadata_bytes=_metadata_bytes(outputs[0]) if case.kind == "split" and outputs else 0,
    )
    result: dict[str, Any] = {"sample": asdict(sample)}
    if profiler is not None and profile_out is not None:
        profiler.create_stats()
        profiler.dump_stats(profile_out)
        result["breakdown"] = asdict(_breakdown(case.name, len(outputs), profiler.stats))
    print(json.dumps(result))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _operation(case: Case, source: Path, scratch: Path) -> list[Path]:
    """Run the case; return the files it wrote."""
    if case.kind == "copy":
        target = scratch / source.name
        shutil.copyfile(source, target)
        return [target]
    if case.kind == "read":
        import uproot

        from ess_splitter.rootsplit import DEFAULT_BLOCK_BYTES

        with uproot.open(source, array_cache=None) as root_file:
            step = f"{DEFAULT_BLOCK_BYTES // 2**20} MiB"
            for block in root_file[TREE].iterate(step_size=step, library="ak", how=dict):
                # Hold one block at a time, as the splitter does.
                del block
        return []
    from ess_splitter.rootsplit import split_root_file

    return [r.path for r in split_root_file(source, scratch, case.events_per_range).ranges]


def _metadata_bytes(path: Path) -> int:
    import uproot

    with uproot.open(path) as root_file:
        # compressed_bytes counts every basket with its key.
        return path.stat().st_size - int(root_file[TREE].compressed_bytes)


_Label = tuple[str, int, str]
_Stats = dict[_Label, tuple[int, int, int, int, dict[_Label, tuple[int, int, int, int]]]]

_ROOTSPLIT = "ess_splitter/rootsplit.py"


def _cumtime(stats: _Stats, file_suffix: str, function: str) -> float:
    return sum(
        float(entry[3])
        for label, entry in stats.items()
        if label[0].endswith(file_suffix) and label[2] == function
    )


def _builtin_tottime(stats: _Stats, function: str) -> float:
    return sum(float(entry[2]) for label, entry in stats.items() if label[2] == function)


def _cumtime_from(
    stats: _Stats, file_suffix: str, function: str, caller_file: str, caller_function: str = ""
) -> float:
    """Cumulative seconds of ``function`` spent in calls made from the given caller(s)."""
    return sum(
        float(by_caller[3])
        for label, entry in stats.items()
        if label[0].endswith(file_suffix) and label[2] == function
        for caller, by_caller in entry[4].items()
        if caller[0].endswith(caller_file) and caller_function in ("", caller[2])
    )


def _breakdown(case: str, files: int, stats: _Stats) -> Breakdown:
    commit = _cumtime(stats, _ROOTSPLIT, "commit")
    checksum = _cumtime(stats, _ROOTSPLIT, "file_adler32")
    top = sorted(stats.items(), key=lambda item: float(item[1][2]), reverse=True)[:12]
    return Breakdown(
        case=case,
        files=files,
        total=_cumtime(stats, _ROOTSPLIT, "split_root_file"),
        read=_cumtime_from(stats, "uproot/behaviors/TBranch.py", "arrays", _ROOTSPLIT),
        decompress=_builtin_tottime(stats, "<built-in method zlib.decompress>"),
        slicing=_cumtime_from(stats, "awkward/highlevel.py", "__getitem__", _ROOTSPLIT),
        create=_cumtime_from(stats, "uproot/writing/writable.py", "recreate", _ROOTSPLIT),
        mktree=_cumtime_from(stats, "uproot/writing/writable.py", "mktree", _ROOTSPLIT),
        metadata_sums=_cumtime_from(
            stats, "~", "<built-in method builtins.sum>", "_cascadetree.py", "_build_out"
        ),
        extend=_cumtime(stats, _ROOTSPLIT, "extend"),
        compress=_builtin_tottime(stats, "<built-in method zlib.compress>"),
        close=commit - checksum,
        checksum=checksum,
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


# ---------------------------------------------------------------------------------------------
# The parent: repeat the cases, each in a fresh process


def _spawn(
    case: Case, source: Path, workdir: Path, profile_out: Path | None = None
) -> tuple[Sample, Breakdown | None]:
    scratch = workdir / "out" / case.name.replace("@", "-")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.split_bench",
        "--child",
        case.name,
        "--source",
        str(source),
        "--scratch",
        str(scratch),
    ]
    if profile_out is not None:
        command += ["--profile-out", str(profile_out)]
    try:
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
        )
    finally:
        # Outputs are never read back; keeping them would only fill the disk.
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"case {case.name} failed with exit code {done.returncode}:\n{done.stderr[-4000:]}"
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    sample = Sample(**result["sample"])
    breakdown = None
    if "breakdown" in result:
        raw = dict(result["breakdown"])
        raw["top"] = [TopEntry(**entry) for entry in raw["top"]]
        breakdown = Breakdown(**raw)
    return sample, breakdown


def measure(source: InputFile, workdir: Path, repeat: int) -> list[Row]:
    samples: dict[str, list[Sample]] = {case.name: [] for case in CASES}
    # Round-robin over the cases so that drifts of the machine affect all of them alike.
    for attempt in range(1, repeat + 1):
        for case in CASES:
            sample, _ = _spawn(case, source.path, workdir)
            samples[case.name].append(sample)
            _progress(f"run {attempt}/{repeat} {case.name}: {sample.seconds:.2f} s")
    return [Row(case, samples[case.name]) for case in CASES]


def profile(source: InputFile, workdir: Path) -> list[Breakdown]:
    breakdowns: list[Breakdown] = []
    for case in CASES:
        if case.kind != "split":
            continue
        profile_out = workdir / f"{case.name.replace('@', '-')}.prof"
        _, breakdown = _spawn(case, source.path, workdir, profile_out)
        assert breakdown is not None
        breakdowns.append(breakdown)
        _progress(f"profiled {case.name}: {breakdown.total:.2f} s under cProfile")
    return breakdowns


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The report


def results_table(rows: list[Row], source: InputFile) -> str:
    read = _read_row(rows)
    lines = [
        "| case | what | seconds | input MB/s | files/s | peak RSS MB | ratio to read "
        "| output/input bytes | CPU s | runs (s) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        rate = source.size / row.seconds
        files_per_s = f"{row.files / row.seconds:,.1f}" if row.files else "—"
        out_in = f"{row.output_bytes / source.size:.3f}" if row.files else "—"
        runs = ", ".join(f"{run:.2f}" for run in row.runs)
        lines.append(
            f"| {row.case.name} | {row.case.description} | {row.seconds:.2f} "
            f"| {rate / MB:,.1f} | {files_per_s} | {row.peak_rss_bytes / MB:,.0f} "
            f"| {read.seconds / row.seconds:.2f} | {out_in} | {row.cpu_seconds:.2f} | {runs} |"
        )
    return "\n".join(lines)


def _read_row(rows: list[Row]) -> Row:
    return next(row for row in rows if row.case.kind == "read")


def _split_rows(rows: list[Row]) -> list[Row]:
    """The split cases, fewest output files first."""
    return sorted((row for row in rows if row.case.kind == "split"), key=lambda row: row.files)


def targets(rows: list[Row]) -> list[str]:
    read = _read_row(rows)
    lines: list[str] = []
    for row in rows:
        if row.case.target_ratio is None:
            continue
        ratio = read.seconds / row.seconds
        verdict = "reached" if ratio >= row.case.target_ratio else "not reached"
        lines.append(
            f"- {row.case.name}: {ratio:.2f} x the read-only MB/s "
            f"(target ≥ {row.case.target_ratio:.1f}: {verdict})"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.child is not None:
        profile_out = None if args.profile_out is None else Path(args.profile_out)
        _child(CASE_BY_NAME[args.child], Path(args.source), Path(args.scratch), profile_out)
        return 0

    workdir = Path(args.workdir).resolve()
    out = Path(args.out)
    repeat = int(args.repeat)
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    started = dt.datetime.now(dt.UTC)
    source = ensure_input(workdir, float(args.size_mb))
    _progress(f"input: {source.path} ({source.size / MB:.1f} MB, {source.events:,} events)")
    # Other processes on the machine slow every case; the load shows how busy it was.
    load = [os.getloadavg()[0]]
    rows = measure(source, workdir, repeat)
    load.append(os.getloadavg()[0])
    breakdowns = [] if args.no_profile else profile(source, workdir)
    print(results_table(rows, source))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = list(sys.argv[1:] if argv is None else argv)
    out.write_text(_page(command, started, load, source, repeat, rows, breakdowns))
    _progress(f"wrote {out}")
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
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    # How the parent runs one case in a fresh process.
    parser.add_argument("--child", choices=list(CASE_BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _page(
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
        f"- software: {_software()}",
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
        "start-up or imports); peak RSS is the process's `ru_maxrss`, imports included. "
        "Ratio to read is the case's MB/s over the read-only pass's. CPU s is the user plus "
        "system time of the operation (median): close to seconds means one busy core.",
        "",
        results_table(rows, source),
        "",
        *targets(rows),
        "",
        *_limits(rows, breakdowns),
    ]
    return "\n".join(lines).rstrip() + "\n"


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


def _software() -> str:
    import awkward
    import numpy
    import uproot

    return (
        f"Python {platform.python_version()}, uproot {uproot.__version__}, "
        f"awkward {awkward.__version__}, numpy {numpy.__version__}, "
        f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
    )


def _cores_used(row: Row) -> str:
    per_wall = row.cpu_seconds / row.seconds
    nproc = len(os.sched_getaffinity(0))
    if per_wall <= 1.05:
        # Below 1.0 the process was waiting: for the disk or for a core other processes held.
        return (
            f"It used at most one of the {nproc} cores ({per_wall:.2f} CPU seconds per wall "
            "second): compression and everything else run serially."
        )
    return f"It used {per_wall:.2f} CPU seconds per wall second of the {nproc} cores."


def _limits(rows: list[Row], breakdowns: list[Breakdown]) -> list[str]:
    """The 'what limits it' section: facts derived from the medians and the profiles."""
    read = _read_row(rows)
    splits = _split_rows(rows)
    profiled = {b.case: b for b in breakdowns}
    facts: list[str] = []
    if len(splits) >= 2 and splits[-1].files > splits[0].files:
        coarse, fine = splits[0], splits[-1]
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
            f"{rest:.2f} s, is work proportional to the data: alone it would run at "
            f"{read.seconds / rest:.2f}x the read-only MB/s."
        )
    coarse_profile = profiled.get(splits[0].case.name) if splits else None
    if coarse_profile is not None and coarse_profile.decompress > 0:
        b = coarse_profile
        row = splits[0]
        facts.append(
            f"- **Recompression.** In the profiled {b.case} run, `zlib.compress` of the output "
            f"baskets takes {b.compress:.2f} s of {b.total:.2f} s ({b.compress / b.total:.0%}), "
            f"{b.compress / b.decompress:.1f}x the {b.decompress:.2f} s of `zlib.decompress` "
            f"spent reading the same data; compression alone takes "
            f"{b.compress / read.seconds:.1f}x the whole unprofiled read-only pass: the split "
            "encodes every byte again at the source's zlib level, where the read-only pass "
            f"only inflates. {_cores_used(row)}"
        )
    fine_profile = profiled.get(splits[-1].case.name) if splits else None
    if fine_profile is not None and fine_profile.files:
        b = fine_profile
        ms = 1e3 / b.files
        facts.append(
            f"- **Inside the per-file cost** (profiled {b.case}, cProfile seconds per file, "
            f"which inflate this Python-level work): `mktree` {b.mktree * ms:.1f} ms, of which "
            f"{b.metadata_sums * ms:.1f} ms is Python `sum()` over generator expressions in "
            f"uproot's `_build_out` while it serialises the TTree and branch metadata; "
            f"`uproot.recreate` {b.create * ms:.1f} ms; close and rename {b.close * ms:.1f} ms; "
            f"`extend` apart from `zlib.compress` {(b.extend - b.compress) * ms:.1f} ms "
            f"(converting and writing each basket, one per branch per file). `mktree` alone "
            f"is {b.mktree / b.total:.0%} of the profiled time."
        )
    if coarse_profile is not None and fine_profile is not None:
        facts.append(
            f"- **Reading and slicing.** Reading the source blocks, the work of the read-only "
            f"pass, is {coarse_profile.read / coarse_profile.total:.0%} of the profiled "
            f"{coarse_profile.case} time ({coarse_profile.decompress:.2f} s of it in "
            f"`zlib.decompress`), slicing them into ranges "
            f"{coarse_profile.slicing / coarse_profile.total:.0%} there and "
            f"{fine_profile.slicing / fine_profile.total:.0%} in {fine_profile.case}."
        )
    lines = ["## What limits it", "", *facts, ""]
    if not breakdowns:
        return lines
    inflation = ", ".join(
        f"{b.total / next(r.seconds for r in splits if r.case.name == b.case):.1f}x for {b.case}"
        for b in breakdowns
    )
    lines += [
        "Profiles: one more run of each split under cProfile (`.prof` files in the work "
        "directory), seconds inside `split_root_file`. Profiled time over the unprofiled "
        f"median: {inflation}; cProfile slows Python-level code much more than C calls such as "
        "zlib, so the shares of Python work are upper bounds.",
        "",
        "| part | " + " | ".join(b.case for b in breakdowns) + " |",
        "|---|" + "--:|" * len(breakdowns),
    ]
    parts: list[tuple[str, list[float]]] = [
        ("total", [b.total for b in breakdowns]),
        ("read source blocks (`TTree.arrays`)", [b.read for b in breakdowns]),
        ("… of which `zlib.decompress`", [b.decompress for b in breakdowns]),
        ("slice blocks into ranges (awkward `__getitem__`)", [b.slicing for b in breakdowns]),
        ("create range file (`uproot.recreate`)", [b.create for b in breakdowns]),
        ("`mktree` (TTree metadata)", [b.mktree for b in breakdowns]),
        ("… of which `sum()` in `_build_out`", [b.metadata_sums for b in breakdowns]),
        ("`extend` (serialise, compress, write baskets)", [b.extend for b in breakdowns]),
        ("… of which `zlib.compress`", [b.compress for b in breakdowns]),
        ("close range file and rename", [b.close for b in breakdowns]),
        ("adler32 of the range file", [b.checksum for b in breakdowns]),
        ("other", [b.other for b in breakdowns]),
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


if __name__ == "__main__":
    raise SystemExit(main())
