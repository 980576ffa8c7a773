"""The splitter daemon of one edge.

Consumes `file.cached.<edge>`; cuts the cached file into ranges of the request's size (with
uproot, or with the operator's command template when `split_command` is set), uploads each under
its deterministic key and emits `split.done.<edge>` with every range, its key, size and adler32.
A file that uproot cannot split faithfully is delivered whole as one range or reported as failed
for good, as `split_unsplittable` says; objects left out of the range files are logged. Every
range file exists before the first upload, so a failed split uploads nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import structlog

from ess_common.cache_space import unpin
from ess_common.edge_work import CancelledRequests, cache_path, cached_queue, work_handler
from ess_common.errors import PermanentError, RetryableError
from ess_common.events import FileCached, RangeInfo, SplitDone
from ess_common.messaging.bus import Bus
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore, range_key
from ess_splitter.parallel import split_file_parallel
from ess_splitter.rootsplit import SplitError, SplitResult
from ess_splitter.strategy import SplitOptions, split_file

log = structlog.get_logger("ess.splitter")


class Splitter:
    def __init__(self, settings: EdgeSettings, bus: Bus, store: ObjectStore) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.cache_dir = settings.edge_cache_dir
        self.workers = max(1, (os.cpu_count() or 1) // 2)
        self.split_options = SplitOptions.from_settings(settings)

    async def handle_file_cached(self, event: FileCached) -> SplitDone:
        work, f = event.work, event.work.file
        # The path is derived here, not taken from the message: it must be in our cache.
        source = cache_path(self.cache_dir, f.scope, f.lfn)
        if not source.is_file():
            raise RetryableError(f"{source} is no longer in the cache")
        out_dir = self.cache_dir / "split" / f"f{work.file_id}.a{work.attempt}"
        shutil.rmtree(out_dir, ignore_errors=True)
        try:
            try:
                result = await self._split(source, out_dir, work.events_per_range, f.n_events)
            except SplitError as exc:
                raise PermanentError(str(exc)) from exc
            if result.whole_reason is not None:
                log.warning("file.split.whole", lfn=f.lfn, reason=result.whole_reason)
            if result.skipped:
                log.warning(
                    "file.split.skipped", lfn=f.lfn, skipped=[str(s) for s in result.skipped]
                )
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
                await self.store.put_file(key, piece.path)
                ranges.append(
                    RangeInfo(
                        first_event=piece.first_event,
                        last_event=piece.last_event,
                        key=key,
                        size=piece.size,
                        adler32=piece.adler32,
                    )
                )
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        log.info("file.split", lfn=f.lfn, ranges=len(ranges))
        # Uploaded: the input may now be evicted and the room held for the split is free.
        unpin(self.cache_dir, work.file_id, work.attempt)
        return SplitDone(work=work, ranges=ranges, correlation_id=event.correlation_id)

    async def _split(
        self, source: Path, out_dir: Path, events_per_range: int, n_events: int
    ) -> SplitResult:
        options = self.split_options
        if self.settings.split_workers == 1 or options.command is not None:
            return await split_file(source, out_dir, events_per_range, n_events, options)
        return await split_file_parallel(
            source,
            out_dir,
            events_per_range,
            n_events,
            options,
            workers=self.settings.split_workers,
        )

    async def start(self) -> None:
        await self.bus.consume(
            cached_queue(self.bus.exchange, self.settings.edge_name),
            [f"file.cached.{self.settings.edge_name}"],
            work_handler(
                self.bus,
                FileCached,
                "split",
                self.settings.max_attempts,
                self.handle_file_cached,
                cancelled=CancelledRequests(self.cache_dir),
                # The cached input is no longer needed by this work: it may be evicted.
                dropped=lambda e: unpin(self.cache_dir, e.work.file_id, e.work.attempt),
            ),
            prefetch=self.workers,
        )

    async def stop(self) -> None:
        return None
