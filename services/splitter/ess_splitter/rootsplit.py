"""Cut one ROOT file into event-range files.

Consumes a ROOT file, local or opened remotely by uproot. Every TTree whose entry count equals
the file's event count is sliced alike; its branches must be plain numbers, fixed-size arrays,
counted variable-length arrays or C strings (anything else raises ``UnsplittableFile`` before a
byte is written). Everything else in the file is carried into every range file whole (see
``carry``). Produces, in ``out_dir``, one ROOT file per event range, named
``<prefix>.<first:09d>-<last:09d>.root``, holding exactly those events of every sliced tree
with the same tree paths, titles, branch names, dtypes and shared counter branches, and returns
a ``SplitResult``: a ``RangeFile`` (1-based inclusive event positions, size, adler32) for each
range and the objects that could not be carried. Event positions follow PanDA's convention: the
first event of the source file is event 1.

The events are moved as ROOT stores them, not as arrays: each source basket is decompressed
once (``sourcebaskets``), the serialised entries of a range are cut out of it and compressed again
into the range file's basket, and a source basket that lies wholly inside a range is copied
without decompressing at all when the range files keep the source's compression. The range
files' structure is written once per split (``rangewriter``). Memory holds one source basket
and one range basket per branch, whatever the file's size.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import uproot

from ess_splitter.carry import Carrier, CarryPlan, Skipped, plan_carry
from ess_splitter.inventory import EventTree, event_trees, list_containers
from ess_splitter.rangewriter import RangeFileWriter, RangeTemplate
from ess_splitter.sourcebaskets import SourceBranch, prefetch
from ess_splitter.treelayout import NoEventTree, SplitError, UnsplittableFile

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "NoEventTree",
    "RangeFile",
    "RangeTarget",
    "Skipped",
    "SplitError",
    "SplitPlan",
    "SplitResult",
    "UnsplittableFile",
    "file_adler32",
    "plan_ranges",
    "plan_split",
    "range_file_name",
    "split_root_file",
    "write_ranges",
]

# Uncompressed bytes of all sliced trees that one basket of a range file holds at most, when
# the caller does not choose: large enough that per-basket overhead is negligible.
DEFAULT_BLOCK_BYTES = 64 * 2**20

_CHECKSUM_CHUNK = 2**20
# Concurrent basket requests of a remote read: enough to hide the round trips of one range.
_FETCH_THREADS = 8


@dataclass(frozen=True)
class RangeFile:
    """A written range file holding source events first_event..last_event (1-based, inclusive)."""

    first_event: int
    last_event: int
    path: Path
    size: int
    adler32: str


@dataclass(frozen=True)
class SplitResult:
    """The range files of one split, and what they do not hold.

    ``skipped`` lists the source's objects that are in no range file. ``whole_reason`` is set
    when the file was delivered whole as a single range, and says why it was not split.
    """

    ranges: list[RangeFile]
    skipped: tuple[Skipped, ...] = ()
    whole_reason: str | None = None


@dataclass(frozen=True)
class RangeTarget:
    """One range file to write: source events first..last (1-based, inclusive) into ``path``."""

    first: int
    last: int
    path: Path


@dataclass(frozen=True)
class SplitPlan:
    """What a split of one open file does, decided before anything is written."""

    trees: list[EventTree]
    carry: CarryPlan
    n_events: int

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return self.carry.skipped


def plan_ranges(n_events: int, events_per_range: int) -> list[tuple[int, int]]:
    """Consecutive 1-based inclusive ``(first, last)`` ranges covering events 1..n_events."""
    if events_per_range < 1:
        raise ValueError(f"events_per_range must be at least 1, got {events_per_range}")
    if n_events < 0:
        raise ValueError(f"n_events must not be negative, got {n_events}")
    return [
        (first, min(first + events_per_range - 1, n_events))
        for first in range(1, n_events + 1, events_per_range)
    ]


def range_file_name(name_prefix: str, first: int, last: int) -> str:
    return f"{name_prefix}.{first:09d}-{last:09d}.root"


def check_name_prefix(name_prefix: str) -> None:
    if name_prefix in ("", ".", "..") or "/" in name_prefix or os.sep in name_prefix:
        raise ValueError(f"name_prefix must be a plain file name prefix, got {name_prefix!r}")


def plan_split(
    root_file: Any,
    file_name: str,
    n_events: int | None,
    uncarried: Literal["skip", "unsplittable"] = "skip",
) -> SplitPlan:
    """Find the event trees and what is carried; raise if the file cannot be split."""
    containers = list_containers(root_file)
    trees = event_trees(file_name, containers, n_events)
    carry = plan_carry(root_file, containers, {t.path for t in trees})
    if carry.skipped and uncarried == "unsplittable":
        raise carry.skipped[0].unsplittable()
    return SplitPlan(trees, carry, trees[0].entries)


def split_root_file(
    source: Path,
    out_dir: Path,
    events_per_range: int,
    *,
    n_events: int | None = None,
    block_events: int | None = None,
    compression: Any = None,
    name_prefix: str = "range",
    uncarried: Literal["skip", "unsplittable"] = "skip",
    part: tuple[int, int] | None = None,
) -> SplitResult:
    """Write ``source``'s events to one file per range of ``events_per_range`` events.

    ``n_events`` is the expected event count (default: the entries of the TTree with the most
    entries). ``block_events`` is the most events one basket of a range file holds, and so how
    many events of one branch are held in memory at once; by default about
    ``DEFAULT_BLOCK_BYTES`` of all sliced trees, so that a range usually gets one basket per
    branch. ``compression`` is an uproot compression (``uproot.ZLIB(0)`` for none); by default
    the source file's setting is kept, and source baskets wholly inside a range are copied.
    Objects that cannot be carried into the range files are listed in the result
    (``uncarried="skip"``) or make the file unsplittable. ``part=(i, j)`` writes only ranges
    ``i..j-1`` of the plan (workers sharing one split). If an exception is raised, every file
    this call wrote is removed again (a same-named file it had already replaced included).
    """
    if events_per_range < 1:
        raise ValueError(f"events_per_range must be at least 1, got {events_per_range}")
    if n_events is not None and n_events < 0:
        raise ValueError(f"n_events must not be negative, got {n_events}")
    if block_events is not None and block_events < 1:
        raise ValueError(f"block_events must be at least 1, got {block_events}")
    check_name_prefix(name_prefix)
    source = Path(source)
    out_dir = Path(out_dir)

    # One file handle read at each basket's position: neither an open per read (uproot's
    # default for local paths) nor a memory map, whose pages would count as the process's
    # memory for the whole file.
    with uproot.open(source, array_cache=None, handler=uproot.MultithreadedFileSource) as root_file:
        # Everything that could make the file unsplittable is decided here, before any write.
        plan = plan_split(root_file, str(source), n_events, uncarried)
        ranges = plan_ranges(plan.n_events, events_per_range)
        if part is not None:
            ranges = ranges[part[0] : part[1]]
        if not ranges:
            return SplitResult([], plan.skipped)
        targets = [
            RangeTarget(first, last, out_dir / range_file_name(name_prefix, first, last))
            for first, last in ranges
        ]
        out_dir.mkdir(parents=True, exist_ok=True)
        written = write_ranges(
            root_file,
            plan,
            targets,
            block_events=block_events,
            compression=compression,
            fallback_bytes=source.stat().st_size,
        )
        return SplitResult(written, plan.skipped)


def write_ranges(
    root_file: Any,
    plan: SplitPlan,
    targets: Sequence[RangeTarget],
    *,
    block_events: int | None = None,
    compression: Any = None,
    fallback_bytes: int = 0,
    remote: bool = False,
) -> list[RangeFile]:
    """Write each target's events of ``plan``'s trees, with the carried objects, in order.

    Targets must be in increasing event order. ``remote`` fetches what each range needs before
    writing it, with concurrent requests: the baskets it holds whole, and of the others only
    their beginning up to the range's end (see ``prefetch``). ``fallback_bytes`` (the file size) is
    the data size assumed when the file does not record its uncompressed size. If an exception
    is raised, every file this call wrote is removed again.
    """
    if block_events is None:
        block_events = _default_block(plan, fallback_bytes)
    copy = compression is None
    if compression is None:
        compression = _source_compression(int(root_file.file.fCompress))
    branches = {
        tree.path: [
            SourceBranch(tree.tree[name], copy, counter=name in tree.layout.counters.values())
            for name in tree.layout.branch_types
        ]
        for tree in plan.trees
    }
    for tree in plan.trees:
        by_name = {source.name: source for source in branches[tree.path]}
        for counted, counter in tree.layout.counters.items():
            by_name[counted].counter_branch = by_name[counter]
    layouts = [tree.layout for tree in plan.trees]
    capacity = max(
        len(source_branch.pieces(target.first - 1, target.last, block_events))
        for target in targets
        for tree_branches in branches.values()
        for source_branch in tree_branches
    )
    template = RangeTemplate(layouts, Carrier(root_file, plan.carry), compression, capacity)
    written: list[RangeFile] = []
    writer: RangeFileWriter | None = None
    pool = ThreadPoolExecutor(_FETCH_THREADS) if remote else None
    try:
        for target in targets:
            start, stop = target.first - 1, target.last
            if pool is not None:
                prefetch(pool, branches, start, stop, block_events)
            writer = template.open(target.path)
            for tree_path, tree_branches in branches.items():
                for source_branch in tree_branches:
                    for basket in source_branch.baskets(start, stop, block_events):
                        writer.add(tree_path, source_branch.name, basket)
            path, size, adler32 = writer.commit()
            writer = None
            written.append(RangeFile(target.first, target.last, path, size, adler32))
    except BaseException:
        if writer is not None:
            writer.abort()
        for range_file in written:
            range_file.path.unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return written


def _default_block(plan: SplitPlan, fallback_bytes: int) -> int:
    # Old files may not record their uncompressed size; the file size is a lower bound.
    data_bytes = max(sum(float(t.tree.uncompressed_bytes) for t in plan.trees), fallback_bytes)
    bytes_per_event = max(data_bytes / max(plan.n_events, 1), 1.0)
    return max(1, int(DEFAULT_BLOCK_BYTES // bytes_per_event))


def _source_compression(fcompress: int) -> Any:
    algorithm, level = divmod(fcompress, 100)
    if level == 0:
        return None
    if algorithm in uproot.compression.algorithm_codes:
        return uproot.compression.Compression.from_code(fcompress)
    # Algorithm 0 means ROOT's global default and 3 its pre-6 zlib; uproot maps the former to
    # "uncompressed", which would inflate every range file.
    return uproot.ZLIB(level)


def file_adler32(path: Path) -> tuple[int, str]:
    """Size in bytes and adler32 (8 lowercase hex digits) of the file at ``path``."""
    value = 1
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHECKSUM_CHUNK):
            value = zlib.adler32(chunk, value)
            size += len(chunk)
    return size, f"{value:08x}"
