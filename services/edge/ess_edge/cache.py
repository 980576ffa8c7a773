"""The edge's periodic eviction: keeps its cache between the watermarks and makes room for
downloads that wait for it (see `ess_common.cache_space` for what may go)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from ess_common import metrics
from ess_common.cache_space import CacheSpace
from ess_common.settings import EdgeSettings

log = structlog.get_logger("ess.edge.cache")


class Evictor:
    def __init__(self, settings: EdgeSettings, space: CacheSpace) -> None:
        self.settings = settings
        self.space = space
        self.evicted = 0

    async def run_once(self) -> list[Path]:
        removed = await asyncio.to_thread(
            self.space.evict,
            self.settings.edge_high_watermark,
            self.settings.edge_low_watermark,
        )
        if removed:
            self.evicted += len(removed)
            metrics.CACHE_EVICTIONS.labels(self.settings.edge_name).inc(len(removed))
            log.info(
                "cache.evicted",
                files=len(removed),
                paths=[str(p.relative_to(self.space.root)) for p in removed[:20]],
            )
        return removed
