"""The precacher daemon of one edge.

Consumes `file.assigned.<edge>`; downloads the file into the edge's cache from the first
source that delivers it whole (size and adler32 checked), and emits `file.cached.<edge>`.
A file already in the cache with the right checksum is not fetched again.

Before a byte is fetched the file's bytes and the room its split will take are reserved in the
edge's cache account (`ess_common.cache_space`), and the work is pinned so that the evictor
leaves the input alone until the splitter has uploaded its ranges. When the room cannot be
reserved the download waits while the edge's evictor runs (up to `edge_reserve_wait_s`), else
it is refused as a passing fault: the quota is never exceeded.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import structlog

from ess_common.cache_space import CacheSpace, Pin, reserve_waiting, split_headroom, touch
from ess_common.checksums import adler32_of_file
from ess_common.edge_work import CancelledRequests, assigned_queue, cache_path, work_handler
from ess_common.errors import ChecksumMismatch, EssError, RetryableError
from ess_common.events import DatasetFile, FileAssigned, FileCached
from ess_common.messaging.bus import Bus
from ess_common.settings import EdgeSettings
from ess_precacher.fetch import fetch

log = structlog.get_logger("ess.precacher")


class Precacher:
    def __init__(self, settings: EdgeSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.cache_dir = settings.edge_cache_dir
        self.space = CacheSpace(
            self.cache_dir, settings.edge_quota_bytes, pin_ttl_s=settings.edge_pin_ttl_s
        )

    async def _verified(self, path: Path, size: int, adler32: str) -> None:
        actual_size = os.path.getsize(path)
        if actual_size != size:
            raise ChecksumMismatch(f"size of {path}", str(size), str(actual_size))
        actual = await asyncio.to_thread(adler32_of_file, path)
        if actual != adler32:
            raise ChecksumMismatch(f"adler32 of {path}", adler32, actual)

    async def _reserve(self, wanted: int, paths: list[Path], pin: Pin) -> str:
        return await reserve_waiting(
            self.space,
            wanted,
            paths,
            pin=pin,
            wait_s=self.settings.edge_reserve_wait_s,
            evictor_every_s=self.settings.edge_evict_interval_s,
        )

    async def handle_file_assigned(self, event: FileAssigned) -> FileCached:
        work, f = event.work, event.work.file
        target = cache_path(self.cache_dir, f.scope, f.lfn)
        cached = FileCached(
            work=event.work, cache_path=str(target), correlation_id=event.correlation_id
        )
        pin = Pin(
            work.file_id,
            work.attempt,
            f.scope,
            f.lfn,
            split_headroom(f.size, f.n_events, work.events_per_range),
        )
        try:
            return await self._cache(f, target, pin, cached)
        except BaseException:
            # Nothing of this work is held here: its input may go, its headroom is free.
            await asyncio.to_thread(self.space.unpin, work.file_id, work.attempt)
            raise

    async def _cache(
        self, f: DatasetFile, target: Path, pin: Pin, cached: FileCached
    ) -> FileCached:
        if target.exists():
            # Pinned first, so that the evictor cannot take the copy while it is checked.
            await self._reserve(0, [], pin)
            try:
                await self._verified(target, f.size, f.adler32)
                touch(target)
                log.info("file.cache_hit", lfn=f.lfn)
                return cached
            except ChecksumMismatch:
                target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        reservation = await self._reserve(f.size, [part, target], pin)
        problems: list[str] = []
        try:
            for url in f.sources:
                try:
                    await fetch(url, part, self.settings)
                    await self._verified(part, f.size, f.adler32)
                    os.replace(part, target)
                    log.info("file.cached", lfn=f.lfn, source=url, size=f.size)
                    return cached
                except EssError as exc:
                    log.warning("source.failed", source=url, reason=str(exc))
                    problems.append(f"{url}: {exc}")
                finally:
                    part.unlink(missing_ok=True)
        finally:
            await asyncio.to_thread(self.space.release, reservation)
        raise RetryableError("no source delivered the file: " + "; ".join(problems))

    async def start(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        await self.bus.consume(
            assigned_queue(self.bus.exchange, self.settings.edge_name),
            [f"file.assigned.{self.settings.edge_name}"],
            work_handler(
                self.bus,
                FileAssigned,
                "precache",
                self.settings.max_attempts,
                self.handle_file_assigned,
                cancelled=CancelledRequests(self.cache_dir),
            ),
        )

    async def stop(self) -> None:
        return None
