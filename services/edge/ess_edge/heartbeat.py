"""Heartbeats: an edge tells the head it is alive, where it is and where it serves pilots, its
free space (less what downloads and splits have reserved), what it could evict, and its load."""

from __future__ import annotations

import asyncio
import os
import shutil
from importlib.metadata import PackageNotFoundError, version

from ess_common import metrics
from ess_common.cache_space import CacheSpace
from ess_common.edge_work import edge_queues
from ess_common.events import EdgeHeartbeat
from ess_common.messaging.bus import Bus, publish_event
from ess_common.settings import EdgeSettings


def ess_version() -> str:
    try:
        return version("ess")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


async def make_heartbeat(
    settings: EdgeSettings, bus: Bus, *, url: str | None = None, on_demand_busy: int | None = None
) -> EdgeHeartbeat:
    """`url` is where the edge serves pilots (its server's), else the configured one;
    `on_demand_busy` how many on-demand splits it runs now, when it serves them. What it
    measures also goes to the edge's metrics."""
    cache = settings.edge_cache_dir
    space = CacheSpace(cache, settings.edge_quota_bytes, pin_ttl_s=settings.edge_pin_ttl_s)
    usage = await asyncio.to_thread(space.usage)
    disk_free = shutil.disk_usage(cache).free
    queued = 0
    for queue in edge_queues(bus.exchange, settings.edge_name):
        depth = await bus.depth(queue)
        metrics.QUEUE_MESSAGES.labels(queue).set(depth)
        queued += depth
    metrics.CACHE_USED_BYTES.labels(settings.edge_name).set(usage.used)
    metrics.CACHE_QUOTA_BYTES.labels(settings.edge_name).set(settings.edge_quota_bytes)
    return EdgeHeartbeat(
        edge=settings.edge_name,
        site=settings.edge_site,
        region=settings.edge_region,
        url=url or settings.edge_url,
        latitude=settings.edge_latitude,
        longitude=settings.edge_longitude,
        quota_bytes=settings.edge_quota_bytes,
        free_bytes=max(0, min(usage.free, disk_free)),
        evictable_bytes=usage.evictable,
        queued=queued,
        load=os.getloadavg()[0] / (os.cpu_count() or 1),
        version=ess_version(),
        on_demand_slots=settings.edge_on_demand_slots if on_demand_busy is not None else None,
        on_demand_busy=on_demand_busy,
    )


async def send_heartbeat(
    settings: EdgeSettings, bus: Bus, *, url: str | None = None, on_demand_busy: int | None = None
) -> None:
    beat = await make_heartbeat(settings, bus, url=url, on_demand_busy=on_demand_busy)
    # A heartbeat is only news while it is fresh: an old one must not pile up in the queue.
    await publish_event(
        bus,
        beat,
        expiration_s=max(10.0, 3 * settings.heartbeat_interval_s),
        signed_with=settings.edge_token,
    )
