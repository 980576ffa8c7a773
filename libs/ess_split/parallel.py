"""Split one file's ranges across worker processes.

Consumes what ``split_root_file`` consumes, plus a worker count (the edge's
``split_workers``, 0 for its cores). The file is planned once here, so that a file that cannot
be split fails before any worker starts; its ranges are then cut into one contiguous block per
worker, and each worker process splits its block with ``split_root_file(part=...)``: it opens
the file itself, writes its own copy of the range files' template and holds, like a serial
split, one inflated basket of each branch in memory. Produces the same ``SplitResult`` as a
serial split: every range in order, and, when any worker fails, no range file left behind.

Compression and decompression are what a split spends its time on, and both hold one core per
process, so the speed-up is close to the number of cores for files large enough to give every
worker several baskets to read. Smaller files are split in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

from ess_common.parent_death import die_with_parent
from ess_split.format.codecs import Compression
from ess_split.split import (
    SplitResult,
    check_name_prefix,
    open_source,
    plan_ranges,
    planned,
    split_root_file,
)
from ess_split.uproot_io import local_handler

__all__ = ["MIN_BYTES_PER_WORKER", "resolve_workers", "split_root_file_parallel"]

#: Below this much input per worker, starting processes costs more than it saves.
MIN_BYTES_PER_WORKER = 16 * 2**20

_PRELOAD = ["ess_split.split"]


def resolve_workers(setting: int) -> int:
    """The worker count a ``split_workers`` setting means: 0 is the cores this process may use."""
    if setting < 0:
        raise ValueError(f"split_workers must not be negative, got {setting}")
    if setting == 0:
        return max(1, len(os.sched_getaffinity(0)))
    return setting


def split_root_file_parallel(
    source: Path,
    out_dir: Path,
    events_per_range: int,
    *,
    workers: int = 0,
    n_events: int | None = None,
    compression: Compression | None = None,
    name_prefix: str = "range",
    uncarried: Literal["skip", "unsplittable"] = "skip",
    min_bytes_per_worker: int | None = None,
) -> SplitResult:
    """``split_root_file`` with the ranges shared among ``workers`` processes (0: the cores).

    Each worker gets at least ``min_bytes_per_worker`` of the file (default
    ``MIN_BYTES_PER_WORKER``); a file too small for two is split in this process.
    """
    if min_bytes_per_worker is None:
        min_bytes_per_worker = MIN_BYTES_PER_WORKER
    if events_per_range < 1:
        raise ValueError(f"events_per_range must be at least 1, got {events_per_range}")
    check_name_prefix(name_prefix)
    source, out_dir = Path(source), Path(out_dir)
    opened = open_source(source, handler=local_handler())
    with opened:
        plan = planned(opened, n_events, uncarried)
    n_ranges = len(plan_ranges(plan.n_events, events_per_range))
    size = source.stat().st_size
    by_size = size // min_bytes_per_worker + 1 if min_bytes_per_worker > 0 else n_ranges
    count = max(1, min(resolve_workers(workers), n_ranges, by_size))
    options: dict[str, Any] = {
        "n_events": plan.n_events,
        "compression": compression,
        "name_prefix": name_prefix,
        "uncarried": uncarried,
    }
    if count == 1:
        return split_root_file(source, out_dir, events_per_range, **options)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Contiguous blocks: each worker reads its own stretch of the file, each basket once.
    bounds = [n_ranges * index // count for index in range(count + 1)]
    results: list[SplitResult] = []
    failure: BaseException | None = None
    # Its workers die with this process, were it killed: none is left over (a pool's worker
    # forked from it would otherwise wait for work forever).
    with ProcessPoolExecutor(count, mp_context=_context(), initializer=die_with_parent) as pool:
        futures: list[Future[SplitResult]] = [
            pool.submit(
                split_root_file,
                source,
                out_dir,
                events_per_range,
                part=(bounds[index], bounds[index + 1]),
                **options,
            )
            for index in range(count)
        ]
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:
                # A failed worker removed its own files; the others' go below.
                failure = failure or exc
    if failure is not None:
        for result in results:
            for range_file in result.ranges:
                range_file.path.unlink(missing_ok=True)
        raise failure
    return SplitResult([r for result in results for r in result.ranges], tuple(plan.skipped))


def _context() -> multiprocessing.context.BaseContext:
    # fork is instant and shares the imported modules, but forking a process that runs other
    # threads (an event loop's executor, a client's pool) can copy a lock another thread holds;
    # then a fork server, started once with the splitter preloaded, hands out clean processes.
    if threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context
