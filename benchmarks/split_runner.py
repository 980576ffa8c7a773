"""Run the splitter benchmark's cases, each in a fresh process, and collect what they measure.

The parent (``measure``, ``profile``) starts ``python -m benchmarks.split_bench --child <case>``
for every run, so that imports and peak memory are the case's own, reads the child's one line
of JSON (a ``Sample``, and with ``--profile-out`` a ``Breakdown``) and deletes the range files
it wrote. The child (``run_child``) performs the case on the input and times it.
"""

from __future__ import annotations

import cProfile
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.ntuple import TREE, InputFile
from benchmarks.split_cases import SERVICE_WORKERS, Case, Row, Sample
from benchmarks.split_profile import Breakdown, TopEntry, breakdown_of

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: How much uproot's read-only pass reads at a time.
READ_STEP_BYTES = 64 * 2**20


def run_child(case: Case, source: Path, scratch: Path, profile_out: Path | None) -> None:
    # Imports happen before the clock starts: they are per-process, not per-file, costs.
    if case.kind != "copy":
        import uproot  # noqa: F401

        import ess_split.parallel
        import ess_split.split  # noqa: F401
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
        result["breakdown"] = asdict(breakdown_of(case.name, len(outputs), profiler.stats))
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

        with uproot.open(source, array_cache=None) as root_file:
            step = f"{READ_STEP_BYTES // 2**20} MiB"
            for block in root_file[TREE].iterate(step_size=step, library="ak", how=dict):
                # Hold one block at a time.
                del block
        return [], 1
    from ess_split.format.codecs import parse_compression
    from ess_split.parallel import (
        MIN_BYTES_PER_WORKER,
        resolve_workers,
        split_root_file_parallel,
    )
    from ess_split.split import split_root_file

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
            progress(f"run {attempt}/{repeat} {case.name}: {sample.seconds:.2f} s")
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
        progress(f"profiled {case.name}: {breakdown.total:.2f} s under cProfile")
    return breakdowns


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
