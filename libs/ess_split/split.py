"""Cut one ROOT file into event-range files.

Consumes a ROOT file (local, or opened remotely by uproot) and the ranges to write. Every tree
holding the file's events is cut alike; everything else is carried whole (``plan``). Produces,
per range, a ROOT file holding exactly those events, named ``<prefix>.<first:09d>-<last:09d>.root``
and described by a ``RangeFile`` (1-based inclusive event positions, size, adler32). Event
positions follow PanDA's convention: the first event of the file is event 1.

The events move as ROOT stores them, whatever their types: a source basket that a range holds
whole is copied as stored, without inflating it (when range files keep the source's
compression); one that a range cuts is inflated once, and the range's entries are taken out of
it with their offsets counted anew (``ttree.baskets``). Memory holds one inflated basket per
branch, whatever the file's size.
"""

from __future__ import annotations

import gc
import lzma
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ess_split import uproot_io
from ess_split.errors import CorruptFile, SplitError, UnsplittableFile
from ess_split.format.buffer import RecordError
from ess_split.format.codecs import Compression, UnsupportedCompression
from ess_split.format.directory import BEGIN, FileHeader
from ess_split.format.walker import Unsupported
from ess_split.plan import Skipped, SplitPlan, plan_split
from ess_split.prefetch import prefetch
from ess_split.rangefile import CutNTuple, CutTree, FileTemplate
from ess_split.sourcefile import SourceFile
from ess_split.ttree.clusters import cluster_starts, range_clusters
from ess_split.ttree.model import TreeRecord
from ess_split.ttree.sizes import counted_branches
from ess_split.ttree.source import BranchSource, Copy
from ess_split.ttree.template import TreeTemplate

__all__ = [
    "RangeFile",
    "RangeTarget",
    "SplitResult",
    "file_adler32",
    "open_source",
    "plan_ranges",
    "range_file_name",
    "split_root_file",
    "write_ranges",
]

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


def open_source(path_or_url: str | Path, where: str | None = None, **options: Any) -> SourceFile:
    """The file opened for splitting; a file that is not sound ROOT raises ``CorruptFile``
    saying how (a local file is examined for why; a remote one that ends early or does not
    start as ROOT files do is corrupt too, while other failures to read it are raised as they
    are, for the caller to retry)."""
    where = where or str(path_or_url)
    local = None if "://" in str(path_or_url) else Path(path_or_url)
    if local is not None:
        problem = diagnose(local)
        if problem is not None:
            raise CorruptFile(where, problem)
    try:
        directory = uproot_io.open_file(path_or_url, **options)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # Before ValueError: a failed TLS handshake (aiohttp's certificate error) is both.
        if local is not None or "expected Chunk of length" in str(exc):
            raise CorruptFile(where, f"it ends early ({_first_line(exc)})") from exc
        raise
    except ValueError as exc:
        raise CorruptFile(where, _first_line(exc)) from exc
    try:
        return SourceFile(directory, where, local)
    except RecordError as exc:
        directory.close()
        raise CorruptFile(where, str(exc)) from exc
    except BaseException:
        directory.close()
        raise


def diagnose(path: Path) -> str | None:
    """What makes the local file at ``path`` plainly not a whole ROOT file, if anything."""
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            head = stream.read(BEGIN)
    except FileNotFoundError:
        return None
    if size == 0:
        return "it is empty (0 bytes)"
    if head[:4] != b"root":
        return f"it is not a ROOT file (it starts with {head[:8]!r}, not b'root')"
    try:
        header = FileHeader.parse(head)
    except RecordError as exc:
        return f"its header does not read ({exc})"
    if header.end > size:
        return f"it is truncated: {size} bytes of the {header.end} its header says it has"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def split_root_file(
    source: Path,
    out_dir: Path,
    events_per_range: int,
    *,
    n_events: int | None = None,
    compression: Compression | None = None,
    name_prefix: str = "range",
    uncarried: Literal["skip", "unsplittable"] = "skip",
    part: tuple[int, int] | None = None,
) -> SplitResult:
    """Write ``source``'s events to one file per range of ``events_per_range`` events.

    ``n_events`` is the expected event count (default: the entries of the largest tree).
    ``compression`` is that of the range files (default: the source's, and source baskets
    wholly inside a range are copied); RNTuple pages keep their own compression. Objects that
    cannot be carried are listed in the result (``uncarried="skip"``) or make the file
    unsplittable. ``part=(i, j)`` writes only
    ranges ``i..j-1`` of the plan (workers sharing one split). If an exception is raised, every
    file this call wrote is removed again.
    """
    if events_per_range < 1:
        raise ValueError(f"events_per_range must be at least 1, got {events_per_range}")
    if n_events is not None and n_events < 0:
        raise ValueError(f"n_events must not be negative, got {n_events}")
    check_name_prefix(name_prefix)
    source, out_dir = Path(source), Path(out_dir)
    opened = open_source(source, handler=uproot_io.local_handler())
    with opened:
        plan = planned(opened, n_events, uncarried)
        ranges = plan_ranges(plan.n_events, events_per_range)
        if part is not None:
            ranges = ranges[part[0] : part[1]]
        if not ranges:
            return SplitResult([], tuple(plan.skipped))
        targets = [
            RangeTarget(first, last, out_dir / range_file_name(name_prefix, first, last))
            for first, last in ranges
        ]
        out_dir.mkdir(parents=True, exist_ok=True)
        written = write_ranges(plan, targets, compression=compression)
        return SplitResult(written, tuple(plan.skipped))


def planned(
    source: SourceFile, n_events: int | None, uncarried: Literal["skip", "unsplittable"] = "skip"
) -> SplitPlan:
    """``plan_split`` with the file's inconsistencies reported as ``CorruptFile``."""
    try:
        return plan_split(source, n_events, uncarried)
    except UnsupportedCompression as exc:
        raise SplitError(f"{source.where}: {exc}") from exc
    except (RecordError, zlib.error, lzma.LZMAError) as exc:
        raise CorruptFile(source.where, str(exc)) from exc


def write_ranges(
    plan: SplitPlan,
    targets: Sequence[RangeTarget],
    *,
    compression: Compression | None = None,
    remote: bool = False,
) -> list[RangeFile]:
    """Write each target's events with the carried objects, in order (targets in increasing
    event order). If an exception is raised, every file this call wrote is removed again."""
    # A split holds hundreds of thousands of small objects (a slot per basket) for its whole
    # length: the collector's passes over them would cost a fifth of the time, and find nothing.
    gc.freeze()
    try:
        return _write_ranges(plan, targets, compression, remote)
    except UnsupportedCompression as exc:
        raise SplitError(f"{plan.source.where}: {exc}") from exc
    except (RecordError, zlib.error, lzma.LZMAError) as exc:
        raise CorruptFile(plan.source.where, str(exc)) from exc
    except Unsupported as exc:
        # Sound bytes the engine does not cut, found only in a basket: the file is unsplittable
        # (delivered whole by policy), not failed.
        tree = plan.trees[0] if plan.trees else None
        path = tree.path if tree is not None else plan.source.where
        classname = tree.key.classname if tree is not None else "TFile"
        raise UnsplittableFile(path, None, classname, str(exc)) from exc
    finally:
        gc.unfreeze()


def _write_ranges(
    plan: SplitPlan,
    targets: Sequence[RangeTarget],
    compression: Compression | None,
    remote: bool,
) -> list[RangeFile]:
    source = plan.source
    copy = compression is None
    readers: list[list[BranchSource]] = []
    cut: list[CutTree] = []
    ntuples: list[CutNTuple] = []
    for container in plan.trees:
        if container.ntuple is not None:
            ntuples.append(CutNTuple(container.key, container.directory, container.ntuple))
    for tree in plan.trees:
        record = tree.record
        if record is None:
            continue
        branches = [
            BranchSource(branch, source.read, copy=copy, where=f"{source.where}: {tree.path}")
            for branch in record.branches
        ]
        capacity = max(
            (
                len(reader.overlapping(target.first - 1, target.last))
                for target in targets
                for reader in branches
            ),
            default=0,
        )
        settings = [_setting(branch.node) for branch in record.branches]
        cut.append(
            CutTree(tree.key, record, tree.directory, TreeTemplate(record, capacity), settings)
        )
        readers.append(branches)
    template = FileTemplate(
        source,
        cut,
        plan.carried_objects,
        [(c.key, c.record) for c in plan.carried_trees if c.record is not None],
        compression,
        ntuples,
        [(c.key, c.ntuple) for c in plan.carried_trees if c.ntuple is not None],
    )
    starts = [_cluster_starts(c.record) for c in cut]
    counted = [counted_branches(c.record) for c in cut] if remote else []
    written: list[RangeFile] = []
    pool = ThreadPoolExecutor(_FETCH_THREADS) if remote else None
    writer = None
    try:
        for target in targets:
            start, stop = target.first - 1, target.last
            if pool is not None:
                prefetch(pool, readers, counted, start, stop)
            writer = template.open(target.path)
            copies: list[tuple[int, int, Copy]] = []
            for tree_index, branches in enumerate(readers):
                for branch_index, reader in enumerate(branches):
                    taken, cut_pieces = reader.take(start, stop)
                    copies.extend((tree_index, branch_index, copy) for copy in taken)
                    for first, piece in cut_pieces:
                        writer.add(tree_index, branch_index, first, piece)
            writer.add_copies(copies)
            for index, cut_ntuple in enumerate(ntuples):
                writer.add_ntuple(index, start, min(stop, cut_ntuple.ntuple.entries))
            entries = [max(0, min(stop, c.record.entries) - start) for c in cut]
            clusters = [
                range_clusters(tree_starts, start, start + count)
                for tree_starts, count in zip(starts, entries, strict=True)
            ]
            done = writer.commit(start, entries, clusters)
            writer = None
            written.append(RangeFile(target.first, target.last, done.path, done.size, done.adler32))
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


def _cluster_starts(record: TreeRecord) -> list[int] | None:
    node = record.node
    auto_flush = node.find("fAutoFlush")
    ends = node.find("fClusterRangeEnd")
    sizes = node.find("fClusterSize")
    return cluster_starts(
        record.entries,
        0 if auto_flush is None else int(auto_flush.value),
        [] if ends is None or ends.value is None else [int(v) for v in ends.value],
        [] if sizes is None or sizes.value is None else [int(v) for v in sizes.value],
    )


def _setting(node: Any) -> int:
    """A branch's ``fCompress`` (-1, ROOT's "as the file", when it has none)."""
    found = node.find("fCompress")
    return -1 if found is None else int(found.value)


def file_adler32(path: Path) -> tuple[int, str]:
    """Size in bytes and adler32 (8 lowercase hex digits) of the file at ``path``."""
    value = 1
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHECKSUM_CHUNK):
            value = zlib.adler32(chunk, value)
            size += len(chunk)
    return size, f"{value:08x}"
