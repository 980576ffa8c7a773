"""The precacher daemon of one edge.

Consumes `file.assigned.<edge>`; downloads the file into the edge's cache from the first
source that delivers it whole (size and adler32 checked), and emits `file.cached.<edge>`.
A file already in the cache with the right checksum is not fetched again. The copies at the
edge's own site are read first, then those in its region, then the rest, in the catalogue's
order; when every one fails and a catalogue (Rucio) is configured, the file's replicas are
looked up again and those not yet tried are read. With `rucio_subscribe`, the edge first asks
Rucio for a replication rule of the file's dataset to the RSE serving its site (once per
dataset), and reads the file from that RSE as soon as the copy is there, waiting at most
`rucio_subscription_wait_s` before it reads the others.

Before a byte is fetched the file's bytes and the room its split will take are reserved in the
edge's cache account (`ess_common.cache_space`), and the work is pinned so that the evictor
leaves the input alone until the splitter has uploaded its ranges. When the room cannot be
reserved the download waits while the edge's evictor runs (up to `edge_reserve_wait_s`), else
it is refused as a passing fault: the quota is never exceeded.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from ess_common import metrics, tracing
from ess_common.cache_space import CacheSpace, Pin, reserve_waiting, split_headroom, touch
from ess_common.catalogue import Catalogue, CatalogueUnavailable, order_sources
from ess_common.checksums import adler32_of_file
from ess_common.edge_work import (
    CancelledRequests,
    assigned_queue,
    cache_path,
    work_handler,
)
from ess_common.errors import ChecksumMismatch, EssError, RetryableError
from ess_common.events import DatasetFile, FileAssigned, FileCached
from ess_common.messaging.bus import Bus, subscribe
from ess_common.messaging.long_work import held_briefly
from ess_common.settings import EdgeSettings
from ess_common.work_guard import WorkGuard
from ess_precacher.fetch import fetch

log = structlog.get_logger("ess.precacher")


class Precacher:
    def __init__(
        self,
        settings: EdgeSettings,
        bus: Bus,
        catalogue: Catalogue | None = None,
        *,
        guard: WorkGuard | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        #: What each assignment is checked with before any download (`ess_common.work_guard`).
        self.guard = guard or WorkGuard.for_edge(settings)
        #: Where the file's replicas are looked up again when every known one failed, and where
        #: this edge's site subscribes to datasets (`rucio_subscribe`).
        self.catalogue = catalogue
        #: The replication rule of each dataset to this edge's RSE, once asked for.
        self._rules: dict[str, str] = {}
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
            return await self._cache(f, target, pin, cached, work.dataset)
        except BaseException:
            # Nothing of this work is held here: its input may go, its headroom is free.
            await asyncio.to_thread(self.space.unpin, work.file_id, work.attempt)
            raise

    async def _cache(
        self, f: DatasetFile, target: Path, pin: Pin, cached: FileCached, dataset: str
    ) -> FileCached:
        if target.exists():
            # Pinned first, so that the evictor cannot take the copy while it is checked.
            await self._reserve(0, [], pin)
            try:
                await self._verified(target, f.size, f.adler32)
                touch(target)
                log.info("file.cache_hit", lfn=f.lfn)
                metrics.CACHE_HITS.labels(self.settings.edge_name, "input").inc()
                return cached
            except ChecksumMismatch:
                target.unlink(missing_ok=True)
        metrics.CACHE_MISSES.labels(self.settings.edge_name, "input").inc()
        subscribed = await self._subscribed_copy(f, dataset)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        reservation = await self._reserve(f.size, [part, target], pin)
        problems: list[str] = []
        site, region = self.settings.edge_site, self.settings.edge_region
        try:
            # The copies at this edge's site first, then in its region, then the rest.
            known = order_sources(f.sources, f.replicas, site, region)
            for url in subscribed + [u for u in known if u not in subscribed]:
                if await self._fetch(f, url, part, target, problems):
                    return cached
            for url in await self._looked_up_again(f, problems):
                if await self._fetch(f, url, part, target, problems):
                    return cached
        finally:
            await asyncio.to_thread(self.space.release, reservation)
        raise RetryableError("no source delivered the file: " + "; ".join(problems))

    async def _fetch(
        self, f: DatasetFile, url: str, part: Path, target: Path, problems: list[str]
    ) -> bool:
        scheme = urlsplit(url).scheme
        edge = self.settings.edge_name
        started = time.perf_counter()
        try:
            with tracing.span("precache.download", scheme=scheme, size=f.size):
                await fetch(url, part, self.settings)
                await self._verified(part, f.size, f.adler32)
            os.replace(part, target)
            log.info("file.cached", lfn=f.lfn, source=url, size=f.size)
            metrics.PRECACHE_BYTES.labels(edge, scheme).inc(f.size)
            metrics.PRECACHE_SECONDS.labels(edge, scheme).observe(time.perf_counter() - started)
            return True
        except EssError as exc:
            log.warning("source.failed", source=url, reason=str(exc))
            metrics.PRECACHE_FAILURES.labels(edge, scheme).inc()
            problems.append(f"{url}: {exc}")
            return False
        finally:
            part.unlink(missing_ok=True)

    async def _subscribed_copy(self, f: DatasetFile, dataset: str) -> list[str]:
        """With a subscription of this edge's site: the copy at its RSE, once the replication
        rule asked for here has brought it (waited for a bounded time), else nothing."""
        s = self.settings
        if not (s.rucio_subscribe and s.rucio_rse and self.catalogue is not None and dataset):
            return []
        try:
            if dataset not in self._rules:
                self._rules[dataset] = await self.catalogue.ensure_rule(
                    dataset, s.rucio_rse, s.rucio_rule_lifetime_s
                )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + s.rucio_subscription_wait_s
            while True:
                replicas = await self.catalogue.file_replicas(f.scope, f.lfn)
                here = [u for r in replicas if r.rse == s.rucio_rse for u in r.sources]
                if here:
                    log.info("subscription.copy_ready", lfn=f.lfn, rse=s.rucio_rse)
                    return here
                if loop.time() >= deadline:
                    log.warning("subscription.copy_not_ready", lfn=f.lfn, rse=s.rucio_rse)
                    return []
                await asyncio.sleep(min(2.0, max(0.0, deadline - loop.time())))
        except CatalogueUnavailable as exc:
            log.warning("subscription.unavailable", lfn=f.lfn, reason=str(exc))
            return []

    async def _looked_up_again(self, f: DatasetFile, problems: list[str]) -> list[str]:
        """Replicas the catalogue knows now that were not tried: every known one failed."""
        if self.catalogue is None:
            return []
        try:
            replicas = await self.catalogue.file_replicas(f.scope, f.lfn)
        except CatalogueUnavailable as exc:
            problems.append(f"replicas looked up again: {exc}")
            return []
        urls = [u for r in replicas for u in r.sources if u not in f.sources]
        fresh = order_sources(urls, replicas, self.settings.edge_site, self.settings.edge_region)
        log.warning("source.looked_up_again", lfn=f.lfn, new_sources=len(fresh))
        return fresh

    async def start(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # A multi-GB download may outlast RabbitMQ's consumer_timeout: its delivery is
        # handed back to the queue every `delivery_hold_s` while it runs.
        work = work_handler(
            self.bus,
            FileAssigned,
            "precache",
            self.settings.max_attempts,
            self.handle_file_assigned,
            edge_token=self.settings.edge_token,
            cancelled=CancelledRequests(self.cache_dir),
            guard=self.guard,
        )
        await subscribe(
            self.bus,
            assigned_queue(self.bus.exchange, self.settings.edge_name),
            work.wrapped(
                partial(
                    held_briefly,
                    self.bus,
                    hold_s=self.settings.delivery_hold_s,
                    limit=self.settings.prefetch,
                )
            ),
            edge=self.settings.edge_name,
        )

    async def stop(self) -> None:
        await self.guard.close()
