"""The splitter daemon of one edge.

Consumes `file.cached.<edge>`; cuts the cached file into ranges of the request's size (with
ESS's split engine, `ess_split`, or with the operator's command template when `split_command` is
set), uploads each under its deterministic key and emits `split.done.<edge>` with every range,
its key, size and adler32. The range files are uploaded concurrently (`upload_concurrency` for
the whole process), and the splitter takes the next file while a file's ranges upload: at most
one split per worker slot runs at once, the deliveries beyond them wait for a slot. A file the
engine does not cut is delivered whole as one range or reported as failed for good, as
`split_unsplittable` says; a corrupt file fails for good at once, with how it is corrupt;
objects left out of the range files are logged. Every range file exists before the first
upload, so a failed split uploads nothing; the head is asked again just before the uploads,
so a file that moved to another edge meanwhile uploads nothing (`ess_common.work_guard`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from functools import partial
from pathlib import Path

import structlog

from ess_common import metrics, tracing
from ess_common.cache_space import unpin
from ess_common.edge_work import (
    CancelledRequests,
    cache_path,
    cached_queue,
    work_handler,
)
from ess_common.errors import PermanentError, RetryableError
from ess_common.events import FileCached, RangeInfo, SplitDone
from ess_common.messaging.bus import Bus, subscribe
from ess_common.messaging.long_work import held_briefly
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore, range_key
from ess_common.work_guard import MovedOn, WorkGuard
from ess_split.errors import SplitError
from ess_split.split import SplitResult
from ess_splitter.strategy import SplitOptions, split_file
from ess_splitter.uploads import Upload, Uploader

log = structlog.get_logger("ess.splitter")


class Splitter:
    def __init__(
        self,
        settings: EdgeSettings,
        bus: Bus,
        store: ObjectStore,
        *,
        guard: WorkGuard | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        #: What each cached file is checked with before it is split (`ess_common.work_guard`).
        self.guard = guard or WorkGuard.for_edge(settings)
        self.store = store
        self.cache_dir = settings.edge_cache_dir
        self.workers = max(1, (os.cpu_count() or 1) // 2)
        self.split_options = SplitOptions.from_settings(settings)
        self.uploader = Uploader(store, settings.upload_concurrency)
        # The CPU-bound part is bounded by the worker slots; uploads are not, so that a file's
        # uploads overlap the next file's split.
        self._split_slots = asyncio.Semaphore(self.workers)

    async def handle_file_cached(self, event: FileCached) -> SplitDone:
        work, f = event.work, event.work.file
        # The path is derived here, not taken from the message: it must be in our cache.
        source = cache_path(self.cache_dir, f.scope, f.lfn)
        if not source.is_file():
            raise RetryableError(f"{source} is no longer in the cache")
        out_dir = self.cache_dir / "split" / f"f{work.file_id}.a{work.attempt}"
        shutil.rmtree(out_dir, ignore_errors=True)
        started = time.perf_counter()
        try:
            try:
                async with self._split_slots:
                    started = time.perf_counter()
                    with tracing.span("split.file", size=f.size, events=f.n_events):
                        result = await self._split(
                            source, out_dir, work.events_per_range, f.n_events
                        )
            except SplitError as exc:
                raise PermanentError(str(exc)) from exc
            if result.whole_reason is not None:
                log.warning("file.split.whole", lfn=f.lfn, reason=result.whole_reason)
            if result.skipped:
                log.warning(
                    "file.split.skipped", lfn=f.lfn, skipped=[str(s) for s in result.skipped]
                )
            split_s = time.perf_counter() - started
            ranges = []
            for piece in result.ranges:
                key = range_key(
                    f.scope,
                    f.lfn,
                    work.events_per_range,
                    work.file_id,
                    work.attempt,
                    piece.first_event,
                    piece.last_event,
                )
                ranges.append(
                    RangeInfo(
                        first_event=piece.first_event,
                        last_event=piece.last_event,
                        key=key,
                        size=piece.size,
                        adler32=piece.adler32,
                    )
                )
            await self._still_current(event)
            # In the order of the ranges, whatever order the uploads finish in.
            uploads = [Upload(r.key, p.path) for r, p in zip(ranges, result.ranges, strict=True)]
            with tracing.span("split.upload", ranges=len(uploads)):
                await self.uploader.put_all(uploads)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        log.info(
            "file.split",
            lfn=f.lfn,
            ranges=len(ranges),
            split_s=round(split_s, 3),
            upload_s=round(time.perf_counter() - started - split_s, 3),
        )
        edge = self.settings.edge_name
        metrics.SPLIT_SECONDS.labels(edge, "prepared").observe(time.perf_counter() - started)
        metrics.SPLIT_INPUT_BYTES.labels(edge, "prepared").inc(f.size)
        metrics.SPLIT_OUTPUT_BYTES.labels(edge, "prepared").inc(sum(r.size for r in ranges))
        metrics.SPLIT_RANGES.labels(edge, "prepared").inc(len(ranges))
        # Uploaded: the input may now be evicted and the room held for the split is free.
        unpin(self.cache_dir, work.file_id, work.attempt)
        return SplitDone(work=work, ranges=ranges, correlation_id=event.correlation_id)

    async def _still_current(self, event: FileCached) -> None:
        """Raise `MovedOn` when the file moved to another edge (or attempt) while it was
        split: the stale attempt uploads no object and reports no `split.done`. A splitter
        without the edge's token takes no work from the bus (its guard refuses it), so its
        direct calls (tests, tools) have no assignment to ask about."""
        if self.guard.token is None:
            return
        if not await self.guard.still_current(event.work):
            work = event.work
            raise MovedOn(f"file {work.file_id} attempt {work.attempt} moved on while split")

    async def _split(
        self, source: Path, out_dir: Path, events_per_range: int, n_events: int
    ) -> SplitResult:
        return await split_file(source, out_dir, events_per_range, n_events, self.split_options)

    async def start(self) -> None:
        # A slow split may outlast RabbitMQ's consumer_timeout: its delivery is handed back
        # to the queue every `delivery_hold_s` while it runs.
        work = work_handler(
            self.bus,
            FileCached,
            "split",
            self.settings.max_attempts,
            self.handle_file_cached,
            edge_token=self.settings.edge_token,
            cancelled=CancelledRequests(self.cache_dir),
            # The cached input is no longer needed by this work: it may be evicted.
            dropped=lambda e: unpin(self.cache_dir, e.work.file_id, e.work.attempt),
            guard=self.guard,
        )
        await subscribe(
            self.bus,
            cached_queue(self.bus.exchange, self.settings.edge_name),
            work.wrapped(
                partial(
                    held_briefly, self.bus, hold_s=self.settings.delivery_hold_s, limit=self.workers
                )
            ),
            edge=self.settings.edge_name,
            # One more file per slot: it is split while the previous one uploads.
            prefetch=2 * self.workers,
        )

    async def stop(self) -> None:
        await self.guard.close()
