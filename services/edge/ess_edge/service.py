"""The edge daemon: declares its queues, starts its workers, heartbeats until stopped.

Its queues are declared before the first heartbeat, so the broker never sends it work that
has nowhere to go. It keeps no state of its own: a wiped cache only means fetching again.
"""

from __future__ import annotations

import asyncio

import structlog

from ess_common.edge_work import edge_queues
from ess_common.messaging.bus import Bus
from ess_common.runtime import every
from ess_common.settings import EdgeSettings
from ess_edge.heartbeat import send_heartbeat
from ess_edge.supervisor import Child

log = structlog.get_logger("ess.edge")


class Edge:
    def __init__(self, settings: EdgeSettings, bus: Bus, children: list[Child]) -> None:
        self.settings = settings
        self.bus = bus
        self.children = children
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.settings.edge_cache_dir.mkdir(parents=True, exist_ok=True)
        for queue, bindings in edge_queues(self.bus.exchange, self.settings.edge_name).items():
            await self.bus.declare(queue, bindings)
        for child in self.children:
            child.start()
        self._heartbeat = asyncio.create_task(
            every(self.settings.heartbeat_interval_s, self.heartbeat, "heartbeat"),
            name="edge-heartbeat",
        )
        log.info(
            "edge.started", edge=self.settings.edge_name, cache=str(self.settings.edge_cache_dir)
        )

    async def heartbeat(self) -> None:
        await send_heartbeat(self.settings, self.bus)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        await asyncio.gather(*(child.stop() for child in self.children))
