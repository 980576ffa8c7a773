"""Choose how a cached file becomes event-range files, and do it.

Consumes a local input file, the range size, the file's event count (from the catalogue) and
the edge's ``SplitOptions``. Produces a ``SplitResult`` in ``out_dir``, by one of three ways:

- a configured command template (``command``), run once per range, for formats that need the
  experiment's framework;
- otherwise ESS's split engine (``ess_split``), which cuts every event tree and RNTuple whatever
  its branches hold and carries the rest, its ranges shared among worker processes;
- when the engine cannot cut the file (``UnsplittableFile``, detected before anything is
  written) and the policy is "whole": the file itself, byte for byte, as one range 1..N. With
  policy "fail" the ``UnsplittableFile`` is raised, naming the container and why. A corrupt
  file (``CorruptFile``) is never delivered whole: it fails.

Every way leaves either all its range files or none.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ess_common.settings import EdgeSettings
from ess_split.errors import UnsplittableFile
from ess_split.format.codecs import Compression, parse_compression
from ess_split.parallel import split_root_file_parallel
from ess_split.split import SplitResult, plan_ranges
from ess_split.whole import deliver_whole
from ess_splitter.command import CommandTemplate, split_with_command

__all__ = ["SplitOptions", "deliver_whole", "split_file"]


@dataclass(frozen=True)
class SplitOptions:
    """How an edge splits: see ``EdgeSettings.split_*`` for the meaning of each."""

    unsplittable: Literal["whole", "fail"] = "whole"
    uncarried: Literal["skip", "unsplittable"] = "skip"
    #: The range files' compression, or None to keep the source's.
    compression: Compression | None = None
    command: CommandTemplate | None = None
    command_timeout_s: float = 600.0
    name_prefix: str = "range"
    #: Worker processes sharing one file's ranges (0: the cores this process may use).
    workers: int = 1

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> SplitOptions:
        command = settings.split_command
        return cls(
            unsplittable=settings.split_unsplittable,
            uncarried=settings.split_uncarried,
            compression=parse_compression(settings.split_compression),
            command=None if command is None else CommandTemplate.parse(command),
            command_timeout_s=settings.split_command_timeout_s,
            workers=settings.split_workers,
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
            split_root_file_parallel,
            source,
            out_dir,
            events_per_range,
            workers=options.workers,
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
