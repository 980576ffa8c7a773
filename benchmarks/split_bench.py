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
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import platform
import re
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
# Events drawn from the generator at a time, and by default the events per basket (each extend
# call writes one basket per branch): 20k events make baskets of 80 kB (flat int32) to ~1 MB
# (jet floats) uncompressed, sizes ntuple writers use.
CHUNK_EVENTS = 20_000
# How a branch's basket arrays (fBasketBytes, fBasketEntry, fBasketSeek) in the TTree record
# grow when full, for files of smaller baskets: by half, as ROOT grows them. uproot's default,
# tenfold, would leave a TTree record, which uproot writes uncompressed and every reader
# fetches whole, of mostly empty slots (3 MB for 1,680 baskets a branch). The default file
# keeps uproot's growth, so that its cached copy and its figures stay as they are.
SMALL_BASKET_GROWTH = 1.5
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

# ESS_SPLIT_WORKERS's default: one worker process per core the splitter may use.
SERVICE_WORKERS = 0
# Range-file compressions measured with the workers (ESS_SPLIT_COMPRESSION values).
WORKER_COMPRESSIONS = ("source", "lz4:1", "zstd:1")
# Minimum MB/s relative to the read-only pass that the splitter aims for, by events per range.
TARGET_RATIOS = {10_000: 1.0, 1_000: 0.3}

Kind = Literal["copy", "read", "split"]


@dataclass(frozen=True)
class Case:
    name: str
    kind: Kind
    description: str
    events_per_range: int = 0
    target_ratio: float | None = None
    #: An ``ESS_SPLIT_COMPRESSION`` value; "source" keeps the source file's.
    compression: str = "source"
    #: Split with ``split_root_file_parallel`` and ``SERVICE_WORKERS``, not in this process.
    parallel: bool = False


def _split_case(events_per_range: int, parallel: bool, compression: str = "source") -> Case:
    size = f"{events_per_range // 1000}k"
    if parallel:
        return Case(
            f"split@{size}/cores/{compression}",
            "split",
            f"`split_root_file_parallel`, {events_per_range:,} events per range, "
            "one worker per core",
            events_per_range,
            TARGET_RATIOS[events_per_range],
            compression,
            parallel=True,
        )
    return Case(
        f"split@{size}",
        "split",
        f"`split_root_file`, {events_per_range:,} events per range, one process",
        events_per_range,
        TARGET_RATIOS[events_per_range],
    )


CASES = (
    Case("copy", "copy", "`shutil.copyfile` of the input"),
    Case("read", "read", "uproot `TTree.iterate` over all branches, 64 MiB steps"),
    _split_case(10_000, False),
    _split_case(1_000, False),
    *(
        _split_case(events, True, compression)
        for compression in WORKER_COMPRESSIONS
        for events in TARGET_RATIOS
    ),
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
    # User plus system CPU seconds of the operation, its worker processes' included: above
    # ``seconds`` only if it used threads or processes.
    cpu_seconds: float
    files: int
    output_bytes: int
    peak_rss_bytes: int
    # Bytes of the first output file outside its baskets (headers, streamers, TTree metadata).
    metadata_bytes: int = 0
    # Processes that split (1: the case's own); for more, the largest worker's peak RSS.
    workers: int = 1
    worker_peak_rss_bytes: int = 0


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
    def worker_peak_rss_bytes(self) -> float:
        return statistics.median(sample.worker_peak_rss_bytes for sample in self.samples)

    @property
    def workers(self) -> int:
        return self.samples[0].workers

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


def ensure_input(workdir: Path, size_mb: float, basket_events: int = CHUNK_EVENTS) -> InputFile:
    """The cached benchmark ntuple of about ``size_mb`` MB, generated if missing or stale.

    ``basket_events`` (a divisor of ``CHUNK_EVENTS``) writes the events of that ntuple, the
    same ones, in baskets of that many events, to a file of its own.
    """
    if basket_events < 1 or CHUNK_EVENTS % basket_events:
        raise ValueError(f"basket_events must divide {CHUNK_EVENTS}, not {basket_events}")
    stem = f"ntuple-{size_mb:g}MB"
    key: dict[str, object] = {
        "version": GENERATOR_VERSION,
        "seed": SEED,
        "chunk_events": CHUNK_EVENTS,
        "level": COMPRESSION_LEVEL,
    }
    n_events = 0
    if basket_events != CHUNK_EVENTS:
        n_events = ensure_input(workdir, size_mb).events
        stem += f"-baskets-{basket_events}"
        key |= {
            "basket_events": basket_events,
            "basket_growth": SMALL_BASKET_GROWTH,
            "events": n_events,
        }
    path = workdir / f"{stem}.root"
    meta_path = workdir / f"{stem}.json"
    if meta_path.exists() and path.exists():
        meta = json.loads(meta_path.read_text())
        if {name: meta.get(name) for name in key} == key and meta.get("size") == (
            path.stat().st_size
        ):
            return InputFile(path, int(meta["size"]), int(meta["events"]))
    workdir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    events = _generate(path, basket_events, target_bytes=int(size_mb * MB), n_events=n_events)
    size = path.stat().st_size
    meta_path.write_text(json.dumps({**key, "size": size, "events": events}))
    return InputFile(path, size, events)


def _generate(path: Path, basket_events: int, *, target_bytes: int, n_events: int) -> int:
    """Write the ntuple: ``n_events`` events, or if 0 as many as make ``target_bytes``."""
    import numpy as np
    import uproot

    rng = np.random.default_rng(SEED)
    temp = path.with_name(f".{path.name}.part")
    events = 0
    growth: dict[str, float] = {}
    if basket_events != CHUNK_EVENTS:
        growth["resize_factor"] = SMALL_BASKET_GROWTH

    def more() -> bool:
        if n_events:
            return events < n_events
        # uproot flushes every basket as it is written, so the size on disk tracks the data.
        return events == 0 or temp.stat().st_size < target_bytes

    with uproot.recreate(temp, compression=uproot.ZLIB(COMPRESSION_LEVEL)) as out:
        tree = out.mktree(
            TREE, BRANCH_TYPES, title="ESS benchmark", counter_name=_counter_name, **growth
        )
        while more():
            chunk = _chunk(rng, events, CHUNK_EVENTS)
            for start in range(0, CHUNK_EVENTS, basket_events):
                tree.extend(_events(chunk, start, basket_events))
            events += CHUNK_EVENTS
    os.replace(temp, path)
    return events


def _events(chunk: dict[str, Any], start: int, n: int) -> dict[str, Any]:
    if start == 0 and n == CHUNK_EVENTS:
        return chunk
    return {name: values[start : start + n] for name, values in chunk.items()}


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

        import ess_splitter.parallel
        import ess_splitter.rootsplit  # noqa: F401
    profiler = cProfile.Profile() if profile_out is not None else None
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    outputs, workers = _operation(case, source, scratch)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    peak = _own_peak_rss()
    # ru_maxrss is in kibibytes on Linux; for the children, it is the largest waited-for one's.
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    sample = Sample(
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        files=len(outputs),
        output_bytes=sum(path.stat().st_size for path in outputs),
        peak_rss_bytes=peak,
        metadata_bytes=_metadata_bytes(outputs[0]) if case.kind == "split" and outputs else 0,
        workers=workers,
        worker_peak_rss_bytes=worker_peak if workers > 1 else 0,
    )
    result: dict[str, Any] = {"sample": asdict(sample)}
    if profiler is not None and profile_out is not None:
        profiler.create_stats()
        profiler.dump_stats(profile_out)
        result["breakdown"] = asdict(_breakdown(case.name, len(outputs), profiler.stats))
    print(json.dumps(result))


def _own_peak_rss() -> int:
    """This process's peak resident bytes since it started running this program.

    ``ru_maxrss`` would do, but it carries over exec the peak of the process that spawned it
    (subprocess's vfork shares the parent's memory until exec); VmHWM starts afresh.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for children (the split's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _operation(case: Case, source: Path, scratch: Path) -> tuple[list[Path], int]:
    """Run the case; return the files it wrote and how many processes split."""
    if case.kind == "copy":
        target = scratch / source.name
        shutil.copyfile(source, target)
        return [target], 1
    if case.kind == "read":
        import uproot

        from ess_splitter.rootsplit import DEFAULT_BLOCK_BYTES

        with uproot.open(source, array_cache=None) as root_file:
            step = f"{DEFAULT_BLOCK_BYTES // 2**20} MiB"
            for block in root_file[TREE].iterate(step_size=step, library="ak", how=dict):
                # Hold one block at a time, as the splitter does.
                del block
        return [], 1
    from ess_splitter.compression import parse_compression
    from ess_splitter.parallel import (
        MIN_BYTES_PER_WORKER,
        resolve_workers,
        split_root_file_parallel,
    )
    from ess_splitter.rootsplit import split_root_file

    compression = parse_compression(case.compression)
    if not case.parallel:
        result = split_root_file(source, scratch, case.events_per_range, compression=compression)
        return [r.path for r in result.ranges], 1
    # As the edge's splitter does for ESS_SPLIT_WORKERS other than 1 (without its event loop).
    result = split_root_file_parallel(
        source,
        scratch,
        case.events_per_range,
        workers=SERVICE_WORKERS,
        compression=compression,
    )
    paths = [r.path for r in result.ranges]
    # The count split_root_file_parallel chose: at most the cores, the ranges, and one worker
    # per MIN_BYTES_PER_WORKER of the file.
    by_size = source.stat().st_size // MIN_BYTES_PER_WORKER + 1
    return paths, max(1, min(resolve_workers(SERVICE_WORKERS), len(paths), by_size))


def _metadata_bytes(path: Path) -> int:
    import uproot

    with uproot.open(path) as root_file:
        # compressed_bytes counts every basket with its key.
        return path.stat().st_size - int(root_file[TREE].compressed_bytes)


_Label = tuple[str, int, str]
_Stats = dict[_Label, tuple[int, int, int, int, dict[_Label, tuple[int, int, int, int]]]]

_ROOTSPLIT = "ess_splitter/rootsplit.py"
_SOURCE = "ess_splitter/sourcebaskets.py"
_WRITER = "ess_splitter/rangewriter.py"
_BASKETIO = "ess_splitter/basketio.py"


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


def _breakdown(case: str, files: int, stats: _Stats) -> Breakdown:
    """The profiled split by the splitter's own steps (``rootsplit.write_ranges``' loop)."""
    top = sorted(stats.items(), key=lambda item: float(item[1][2]), reverse=True)[:12]
    return Breakdown(
        case=case,
        files=files,
        total=_cumtime(stats, _ROOTSPLIT, "split_root_file"),
        plan=_cumtime_from(stats, _ROOTSPLIT, "plan_split", _ROOTSPLIT, "split_root_file"),
        # RangeTemplate(...), the only constructor write_ranges calls in rangewriter.
        template=_cumtime_from(stats, _WRITER, "__init__", _ROOTSPLIT, "write_ranges"),
        read=_cumtime(stats, _SOURCE, "_load"),
        inflate=_cumtime(stats, _BASKETIO, "_inflate"),
        cut=_cumtime(stats, _SOURCE, "_encoded")
        - _cumtime_from(stats, _SOURCE, "_load", _SOURCE, "_encoded"),
        add=_cumtime_from(stats, _WRITER, "add", _ROOTSPLIT, "write_ranges"),
        compress=_cumtime_from(
            stats, "uproot/compression.py", "compress", _WRITER, "_encoded_record"
        ),
        append=_cumtime_from(stats, _WRITER, "_append", _WRITER, "add"),
        open=_cumtime_from(stats, _WRITER, "open", _ROOTSPLIT, "write_ranges"),
        commit=_cumtime_from(stats, _WRITER, "commit", _ROOTSPLIT, "write_ranges"),
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
    scratch = workdir / "out" / _file_stem(case)
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


def _file_stem(case: Case) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", case.name)


def measure(source: InputFile, workdir: Path, repeat: int, cases: Sequence[Case]) -> list[Row]:
    samples: dict[str, list[Sample]] = {case.name: [] for case in cases}
    # Round-robin over the cases so that drifts of the machine affect all of them alike.
    for attempt in range(1, repeat + 1):
        for case in cases:
            sample, _ = _spawn(case, source.path, workdir)
            samples[case.name].append(sample)
            _progress(f"run {attempt}/{repeat} {case.name}: {sample.seconds:.2f} s")
    return [Row(case, samples[case.name]) for case in cases]


def profile(source: InputFile, workdir: Path, cases: Sequence[Case]) -> list[Breakdown]:
    """Profile the single-process splits (cProfile sees no worker process)."""
    breakdowns: list[Breakdown] = []
    for case in cases:
        if case.kind != "split" or case.parallel:
            continue
        profile_out = workdir / f"{_file_stem(case)}.prof"
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


def _read_row(rows: list[Row]) -> Row:
    return next(row for row in rows if row.case.kind == "read")


def _serial_rows(rows: list[Row]) -> list[Row]:
    """The single-process splits, fewest output files first."""
    return sorted(
        (row for row in rows if row.case.kind == "split" and not row.case.parallel),
        key=lambda row: row.files,
    )


def _worker_row(rows: list[Row], events_per_range: int, compression: str) -> Row | None:
    return next(
        (
            row
            for row in rows
            if row.case.parallel
            and row.case.events_per_range == events_per_range
            and row.case.compression == compression
        ),
        None,
    )


def _ratio(rows: list[Row], row: Row) -> float:
    return _read_row(rows).seconds / row.seconds


def targets(rows: list[Row]) -> list[str]:
    lines: list[str] = []
    for row in rows:
        if row.case.target_ratio is None:
            continue
        ratio = _ratio(rows, row)
        verdict = "reached" if ratio >= row.case.target_ratio else "not reached"
        fastest = min(_read_row(rows).runs) / min(row.runs)
        lines.append(
            f"- {row.case.name}: {ratio:.2f} x the read-only MB/s "
            f"(target ≥ {row.case.target_ratio:.1f}: {verdict}; fastest runs {fastest:.2f})"
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
    cases = _chosen(args.cases)
    started = dt.datetime.now(dt.UTC)
    source = ensure_input(workdir, float(args.size_mb))
    _progress(f"input: {source.path} ({source.size / MB:.1f} MB, {source.events:,} events)")
    # Other processes on the machine slow every case; the load shows how busy it was.
    load = [os.getloadavg()[0]]
    rows = measure(source, workdir, repeat, cases)
    load.append(os.getloadavg()[0])
    breakdowns = [] if args.no_profile else profile(source, workdir, cases)
    print(results_table(rows, source))
    print("\n".join(targets(rows)))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = list(sys.argv[1:] if argv is None else argv)
    out.write_text(_page(command, started, load, source, repeat, rows, breakdowns))
    _progress(f"wrote {out}")
    return 0


def _chosen(names: str | None) -> list[Case]:
    """The cases named (comma-separated), in the usual order; the read-only pass always."""
    if names is None:
        return list(CASES)
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    unknown = sorted(wanted - CASE_BY_NAME.keys())
    if unknown:
        raise SystemExit(
            f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASE_BY_NAME)}"
        )
    # Every ratio is to the read-only pass.
    wanted.add("read")
    return [case for case in CASES if case.name in wanted]


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
        *_limits(rows, breakdowns, source),
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


def _software() -> str:
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


def _zlib_libraries() -> tuple[str, str]:
    """How the splitter compresses and inflates zlib baskets (``ess_splitter.basketio``)."""
    from ess_splitter import basketio

    if basketio._ISAL is not None:
        return (
            "python-isal's `isal_zlib.compress`, a drop-in for `zlib.compress`",
            "python-isal",
        )
    return ("cramjam's zlib, a drop-in for `zlib.compress`", "the standard library's zlib")


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


def _limits(rows: list[Row], breakdowns: list[Breakdown], source: InputFile) -> list[str]:
    """The 'what limits it' section: facts derived from the medians and the profiles."""
    read = _read_row(rows)
    serial = _serial_rows(rows)
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
    return lines + _profile_lines(rows, breakdowns)


def _worker_facts(rows: list[Row], source: InputFile) -> list[str]:
    read = _read_row(rows)
    facts: list[str] = []
    speedups: list[str] = []
    for single in _serial_rows(rows):
        worker = _worker_row(rows, single.case.events_per_range, "source")
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
        base = _worker_row(rows, events, "source")
        for compression in WORKER_COMPRESSIONS:
            row = _worker_row(rows, events, compression)
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
    serial = _serial_rows(rows)
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
    met = [row.case.name for row in reached if _ratio(rows, row) >= (row.case.target_ratio or 0)]
    if reached:
        facts.append(
            f"- **Targets** (≥ {TARGET_RATIOS[10_000]:.1f} at 10,000 events per range, "
            f"≥ {TARGET_RATIOS[1_000]:.1f} at 1,000): reached by "
            + (", ".join(met) if met else "no split")
            + "."
        )
    return facts


def _profile_lines(rows: list[Row], breakdowns: list[Breakdown]) -> list[str]:
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
        ("range-file template, once per split (`RangeTemplate`)", [b.template for b in breakdowns]),
        ("read and inflate source baskets (`SourceBranch._load`)", [b.read for b in breakdowns]),
        ("… of which inflating (`basketio._inflate`)", [b.inflate for b in breakdowns]),
        ("cut the ranges' entries out (`SourceBranch._encoded`)", [b.cut for b in breakdowns]),
        ("encode and append baskets (`RangeFileWriter.add`)", [b.add for b in breakdowns]),
        (
            "… of which compressing (`uproot.compression.compress`)",
            [b.compress for b in breakdowns],
        ),
        ("… of which writing and adler32 (`_append`)", [b.append for b in breakdowns]),
        ("open a range file (`RangeTemplate.open`)", [b.open for b in breakdowns]),
        (
            "patch template, close, rename (`RangeFileWriter.commit`)",
            [b.commit for b in breakdowns],
        ),
        ("other (the loop in `write_ranges`, basket generators)", [b.other for b in breakdowns]),
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
