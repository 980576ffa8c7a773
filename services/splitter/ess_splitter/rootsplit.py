"""Cut one ROOT file into event-range files.

Consumes a local ROOT file. Every TTree whose entry count equals the file's event count is
sliced alike; its branches must be plain numbers, fixed-size arrays, counted variable-length
arrays or C strings (anything else raises ``UnsplittableFile`` before a byte is written).
Everything else in the file is carried into every range file whole (see ``carry``).
Produces, in ``out_dir``, one ROOT file per event range, named
``<prefix>.<first:09d>-<last:09d>.root``, holding exactly those events of every sliced tree
with the same tree paths, titles, branch names, dtypes and shared counter branches, and returns
a ``SplitResult``: a ``RangeFile`` (1-based inclusive event positions, size, adler32) for each
range and the objects that could not be carried. Event positions follow PanDA's convention: the
first event of the source file is event 1.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import uproot

from ess_splitter.carry import Carrier, Skipped, plan_carry
from ess_splitter.inventory import EventTree, event_trees, list_containers
from ess_splitter.treelayout import NoEventTree, SplitError, UnsplittableFile

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "NoEventTree",
    "RangeFile",
    "Skipped",
    "SplitError",
    "SplitResult",
    "UnsplittableFile",
    "file_adler32",
    "plan_ranges",
    "range_file_name",
    "split_root_file",
]

# Uncompressed bytes of all sliced trees held in memory at once when the caller does not
# choose a block size; large enough that basket overhead of the reads is negligible.
DEFAULT_BLOCK_BYTES = 64 * 2**20

_CHECKSUM_CHUNK = 2**20


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
) -> SplitResult:
    """Write ``source``'s events to one file per range of ``events_per_range`` events.

    ``n_events`` is the expected event count (default: the entries of the TTree with the most
    entries). ``block_events`` is how many events are read and held in memory at once; by
    default a multiple of ``events_per_range`` worth about ``DEFAULT_BLOCK_BYTES``, so that no
    range straddles two reads. ``compression`` is an uproot compression (``uproot.ZLIB(0)`` for
    none); by default the source file's setting is kept. Objects that cannot be carried into
    the range files are listed in the result (``uncarried="skip"``) or make the file
    unsplittable. If an exception is raised, every file this call wrote is removed again (a
    same-named file it had already replaced included).
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

    with uproot.open(source, array_cache=None) as root_file:
        # Everything that could make the file unsplittable is decided here, before any write.
        containers = list_containers(root_file)
        trees = event_trees(str(source), containers, n_events)
        plan = plan_carry(root_file, containers, {t.path for t in trees})
        if plan.skipped and uncarried == "unsplittable":
            raise plan.skipped[0].unsplittable()
        ranges = plan_ranges(trees[0].entries, events_per_range)
        if not ranges:
            return SplitResult([], plan.skipped)
        if block_events is None:
            block_events = _default_block(source, trees, events_per_range)
        if compression is None:
            compression = _source_compression(int(root_file.file.fCompress))
        carrier = Carrier(root_file, plan)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = _write_ranges(
            trees, carrier, ranges, block_events, compression, out_dir, name_prefix
        )
        return SplitResult(written, plan.skipped)


def _default_block(source: Path, trees: list[EventTree], events_per_range: int) -> int:
    n_events = trees[0].entries
    # Old files may not record their uncompressed size; the file size is a lower bound.
    data_bytes = max(sum(float(t.tree.uncompressed_bytes) for t in trees), source.stat().st_size)
    bytes_per_range = max(data_bytes / n_events, 1.0) * events_per_range
    return max(1, int(DEFAULT_BLOCK_BYTES // bytes_per_range)) * events_per_range


def _source_compression(fcompress: int) -> Any:
    algorithm, level = divmod(fcompress, 100)
    if level == 0:
        return None
    if algorithm in uproot.compression.algorithm_codes:
        return uproot.compression.Compression.from_code(fcompress)
    # Algorithm 0 means ROOT's global default and 3 its pre-6 zlib; uproot maps the former to
    # "uncompressed", which would inflate every range file.
    return uproot.ZLIB(level)


def _write_ranges(
    trees: list[EventTree],
    carrier: Carrier,
    ranges: list[tuple[int, int]],
    block_events: int,
    compression: Any,
    out_dir: Path,
    name_prefix: str,
) -> list[RangeFile]:
    n_events = ranges[-1][1]
    written: list[RangeFile] = []
    writer: _RangeWriter | None = None
    next_range = 0
    try:
        for block_start in range(0, n_events, block_events):
            block_stop = min(block_start + block_events, n_events)
            blocks = [
                t.tree.arrays(
                    library="ak", how=dict, entry_start=block_start, entry_stop=block_stop
                )
                for t in trees
            ]
            position = block_start
            # A range that straddles the block boundary stays open and is extended with the
            # head of the next block.
            while position < block_stop:
                first, last = ranges[next_range]
                if writer is None:
                    name = range_file_name(name_prefix, first, last)
                    reads = (last - 1) // block_events - (first - 1) // block_events + 1
                    writer = _RangeWriter(out_dir / name, trees, carrier, compression, reads)
                stop = min(last, block_stop)
                for t, block in zip(trees, blocks, strict=True):
                    offset = position - block_start
                    chunk = {
                        branch: array[offset : stop - block_start]
                        for branch, array in block.items()
                    }
                    writer.extend(t.path, chunk)
                position = stop
                if stop == last:
                    path, size, adler32 = writer.commit()
                    writer = None
                    written.append(RangeFile(first, last, path, size, adler32))
                    next_range += 1
            # Drop this block before reading the next so that only one is held at a time.
            del blocks
    except BaseException:
        if writer is not None:
            writer.abort()
        for range_file in written:
            range_file.path.unlink(missing_ok=True)
        raise
    return written


class _RangeWriter:
    """One range file being written under a temporary name in its final directory."""

    def __init__(
        self,
        final: Path,
        trees: list[EventTree],
        carrier: Carrier,
        compression: Any,
        extends: int,
    ) -> None:
        self._final = final
        self._temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        self._file: Any = uproot.recreate(self._temp, compression=compression)
        self._trees: dict[str, Any] = {}
        try:
            # Carried objects first: they re-create the source's directories, those of the
            # event trees included.
            carrier.write_into(self._file)
            for layout in (t.layout for t in trees):
                self._trees[layout.path] = self._file.mktree(
                    layout.path,
                    layout.branch_types,
                    title=layout.title,
                    counter_name=layout.counter_name,
                    # Room for exactly the baskets this file gets (uproot needs one spare
                    # slot); the default of 10 costs 200 bytes per branch in every file.
                    initial_basket_capacity=extends + 1,
                )
        except BaseException:
            self.abort()
            raise

    def extend(self, tree_path: str, data: dict[str, Any]) -> None:
        self._trees[tree_path].extend(data)

    def commit(self) -> tuple[Path, int, str]:
        """Close, checksum and rename into place; return (final path, size, adler32)."""
        try:
            self._file.close()
            size, adler32 = file_adler32(self._temp)
            os.replace(self._temp, self._final)
        except BaseException:
            self.abort()
            raise
        return self._final, size, adler32

    def abort(self) -> None:
        # The error that made us abort matters more than one from closing a broken file.
        with contextlib.suppress(Exception):
            self._file.close()
        self._temp.unlink(missing_ok=True)


def file_adler32(path: Path) -> tuple[int, str]:
    """Size in bytes and adler32 (8 lowercase hex digits) of the file at ``path``."""
    value = 1
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHECKSUM_CHUNK):
            value = zlib.adler32(chunk, value)
            size += len(chunk)
    return size, f"{value:08x}"
