"""Choose how a cached file becomes event-range files, and do it.

Consumes a local input file, the range size, the file's event count (from the catalogue) and
the edge's ``SplitOptions``. Produces a ``SplitResult`` in ``out_dir``, by one of three ways:

- a configured command template (``command``), run once per range, for formats that need the
  experiment's framework;
- otherwise uproot (``rootsplit``), which slices the event trees and carries the rest;
- when uproot cannot split the file faithfully (``UnsplittableFile``, detected before anything
  is written) and the policy is "whole": the file itself, byte for byte, as one range 1..N. With
  policy "fail" the ``UnsplittableFile`` is raised, naming the tree, branch and type.

Every way leaves either all its range files or none.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ess_common.settings import EdgeSettings
from ess_splitter.command import CommandTemplate, split_with_command
from ess_splitter.compression import parse_compression
from ess_splitter.rootsplit import (
    RangeFile,
    SplitResult,
    UnsplittableFile,
    check_name_prefix,
    file_adler32,
    plan_ranges,
    range_file_name,
    split_root_file,
)

__all__ = ["SplitOptions", "deliver_whole", "split_file"]


@dataclass(frozen=True)
class SplitOptions:
    """How an edge splits: see ``EdgeSettings.split_*`` for the meaning of each."""

    unsplittable: Literal["whole", "fail"] = "whole"
    uncarried: Literal["skip", "unsplittable"] = "skip"
    #: An uproot compression object, or None to keep the source's.
    compression: Any = None
    command: CommandTemplate | None = None
    command_timeout_s: float = 600.0
    name_prefix: str = "range"

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> SplitOptions:
        command = settings.split_command
        return cls(
            unsplittable=settings.split_unsplittable,
            uncarried=settings.split_uncarried,
            compression=parse_compression(settings.split_compression),
            command=None if command is None else CommandTemplate.parse(command),
            command_timeout_s=settings.split_command_timeout_s,
        )


async def split_file(
    source: Path,
    out_dir: Path,
    events_per_range: int,
    n_events: int,
    options: SplitOptions,
) -> SplitResult:
    """Cut ``source`` (holding ``n_events`` events) into ranges of ``events_per_range``."""
    if n_events < 1:
        raise ValueError(f"n_events must be at least 1, got {n_events}")
    if options.command is not None:
        written = await split_with_command(
            options.command,
            source,
            out_dir,
            plan_ranges(n_events, events_per_range),
            timeout_s=options.command_timeout_s,
            name_prefix=options.name_prefix,
        )
        return SplitResult(written)
    try:
        return await asyncio.to_thread(
            split_root_file,
            source,
            out_dir,
            events_per_range,
            n_events=n_events,
            compression=options.compression,
            name_prefix=options.name_prefix,
            uncarried=options.uncarried,
        )
    except UnsplittableFile as exc:
        if options.unsplittable == "fail":
            raise
        whole = await asyncio.to_thread(
            deliver_whole, source, out_dir, n_events, options.name_prefix
        )
        return SplitResult([whole], whole_reason=str(exc))


def deliver_whole(
    source: Path, out_dir: Path, n_events: int, name_prefix: str = "range"
) -> RangeFile:
    """``source`` itself as the one range file of events 1..n_events."""
    check_name_prefix(name_prefix)
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / range_file_name(name_prefix, 1, n_events)
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
    try:
        try:
            # A hard link is the same bytes without copying gigabytes when the cache and the
            # output share a file system; the cached file is never written to.
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
        size, adler32 = file_adler32(temp)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return RangeFile(1, n_events, final, size, adler32)
