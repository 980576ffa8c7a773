"""The precacher daemon of one edge.

Consumes `file.assigned.<edge>`; downloads the file into the edge's cache from the first
source that delivers it whole (size and adler32 checked), and emits `file.cached.<edge>`.
A file already in the cache with the right checksum is not fetched again.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import structlog

from ess_common.checksums import adler32_of_file
from ess_common.edge_work import assigned_queue, cache_path, cache_usage, work_handler
from ess_common.errors import ChecksumMismatch, EssError, RetryableError
from ess_common.events import FileAssigned, FileCached
from ess_common.messaging.bus import Bus
from ess_common.settings import EdgeSettings
from ess_precacher.fetch import fetch

log = structlog.get_logger("ess.precacher")


class Precacher:
    def __init__(self, settings: EdgeSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.cache_dir = settings.edge_cache_dir

    async def _verified(self, path: Path, size: int, adler32: str) -> None:
        actual_size = os.path.getsize(path)
        if actual_size != size:
            raise ChecksumMismatch(f"size of {path}", str(size), str(actual_size))
        actual = await asyncio.to_thread(adler32_of_file, path)
        if actual != adler32:
            raise ChecksumMismatch(f"adler32 of {path}", adler32, actual)

    async def handle_file_assigned(self, event: FileAssigned) -> FileCached:
        f = event.work.file
        target = cache_path(self.cache_dir, f.scope, f.lfn)
        cached = FileCached(
            work=event.work, cache_path=str(target), correlation_id=event.correlation_id
        )
        if target.exists():
            try:
                await self._verified(target, f.size, f.adler32)
                log.info("file.cache_hit", lfn=f.lfn)
                return cached
            except ChecksumMismatch:
                target.unlink(missing_ok=True)
        used = await asyncio.to_thread(cache_usage, self.cache_dir)
        if used + f.size > self.settings.edge_quota_bytes:
            raise RetryableError(
                f"cache quota: {used} bytes used of {self.settings.edge_quota_bytes}, "
                f"{f.size} more do not fit"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        problems: list[str] = []
        for url in f.sources:
            part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
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
            ),
        )

    async def stop(self) -> None:
        return None
