"""Heartbeats: an edge tells the head it is alive, where it is, its free space and its load."""

from __future__ import annotations

import asyncio
import os
import shutil
from importlib.metadata import PackageNotFoundError, version

from ess_common.edge_work import cache_usage, edge_queues
from ess_common.events import EdgeHeartbeat
from ess_common.messaging.bus import Bus, publish_event
from ess_common.settings import EdgeSettings


def ess_version() -> str:
    try:
        return version("ess")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


async def make_heartbeat(settings: EdgeSettings, bus: Bus) -> EdgeHeartbeat:
    cache = settings.edge_cache_dir
    used = await asyncio.to_thread(cache_usage, cache)
    disk_free = shutil.disk_usage(cache).free
    queued = 0
    for queue in edge_queues(bus.exchange, settings.edge_name):
        queued += await bus.depth(queue)
    return EdgeHeartbeat(
        edge=settings.edge_name,
        site=settings.edge_site,
        region=settings.edge_region,
        url=settings.edge_url,
        quota_bytes=settings.edge_quota_bytes,
        free_bytes=max(0, min(settings.edge_quota_bytes - used, disk_free)),
        queued=queued,
        load=os.getloadavg()[0] / (os.cpu_count() or 1),
        version=ess_version(),
    )


async def send_heartbeat(settings: EdgeSettings, bus: Bus) -> None:
    beat = await make_heartbeat(settings, bus)
    # A heartbeat is only news while it is fresh: an old one must not pile up in the queue.
    await publish_event(bus, beat, expiration_s=max(10.0, 3 * settings.heartbeat_interval_s))
