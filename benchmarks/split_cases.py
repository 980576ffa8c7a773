"""What the splitter benchmark measures: its cases, one run's sample, and a case's runs.

A case is one operation on the input (copy it, read it, split it one way or another) with the
target it must reach, if any; a ``Sample`` is what one run of a case measured in its own
process, and a ``Row`` the runs of one case with their medians. The helpers at the end pick
the rows the report compares.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

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


def chosen(names: str | None) -> list[Case]:
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


def read_row(rows: list[Row]) -> Row:
    return next(row for row in rows if row.case.kind == "read")


def serial_rows(rows: list[Row]) -> list[Row]:
    """The single-process splits, fewest output files first."""
    return sorted(
        (row for row in rows if row.case.kind == "split" and not row.case.parallel),
        key=lambda row: row.files,
    )


def worker_row(rows: list[Row], events_per_range: int, compression: str) -> Row | None:
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


def ratio_to_read(rows: list[Row], row: Row) -> float:
    return read_row(rows).seconds / row.seconds
