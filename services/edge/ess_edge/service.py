"""The edge daemon: declares its queues, serves pilots, starts its workers, evicts, heartbeats
until stopped; marks cancelled requests, whose queued work its workers then drop.

Its queues are declared and its server answers before the first heartbeat, so the broker never
sends it work that has nowhere to go and the head never points a pilot at it too early. It
keeps no state of its own: a wiped cache only means fetching again.
"""

from __future__ import annotations

import asyncio

import structlog

from ess_common.cache_space import CacheSpace
from ess_common.edge_work import CancelledRequests, cancelled_queue, edge_queues
from ess_common.events import RequestCancelled
from ess_common.messaging.bus import Bus, Delivery, subscribe
from ess_common.messaging.handlers import Routes, event_handler
from ess_common.runtime import every
from ess_common.settings import EdgeSettings
from ess_edge.cache import Evictor
from ess_edge.heartbeat import send_heartbeat
from ess_edge.on_demand import OnDemand
from ess_edge.server import EdgeServer
from ess_edge.supervisor import Child

log = structlog.get_logger("ess.edge")


class Edge:
    def __init__(
        self,
        settings: EdgeSettings,
        bus: Bus,
        children: list[Child],
        *,
        server: EdgeServer | None = None,
        on_demand: OnDemand | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.children = children
        self.server = server
        self.on_demand = on_demand
        self.space = CacheSpace(
            settings.edge_cache_dir, settings.edge_quota_bytes, pin_ttl_s=settings.edge_pin_ttl_s
        )
        self.evictor = Evictor(settings, self.space)
        self.cancelled = CancelledRequests(settings.edge_cache_dir)
        self._tasks: list[asyncio.Task[None]] = []
        self._serving: asyncio.Task[None] | None = None

    @property
    def url(self) -> str | None:
        """Where pilots reach this edge: only while it serves them."""
        return self.settings.public_url if self.server is not None else self.settings.edge_url

    async def start(self) -> None:
        if self.settings.edge_token is None:
            log.warning(
                "edge.no_token",
                edge=self.settings.edge_name,
                detail="ESS_EDGE_TOKEN is not set: the broker hears no edge that is not enrolled "
                f"(ess edge enroll {self.settings.edge_name})",
            )
        self.settings.edge_cache_dir.mkdir(parents=True, exist_ok=True)
        queues = edge_queues(self.bus.exchange, self.settings.edge_name)
        for queue, bindings in queues.items():
            await self.bus.declare(queue, bindings)
        await subscribe(
            self.bus,
            cancelled_queue(self.bus.exchange, self.settings.edge_name),
            event_handler(Routes[Delivery]().on(RequestCancelled, self.on_cancelled)),
            edge=self.settings.edge_name,
        )
        if self.server is not None:
            await self._serve(self.server)
        # The evictor first: a worker's download waits for room only while one runs.
        self._tasks = [
            asyncio.create_task(
                every(self.settings.edge_evict_interval_s, self.evictor.run_once, "evict"),
                name="edge-evict",
            )
        ]
        for child in self.children:
            child.start()
        self._tasks.append(
            asyncio.create_task(
                every(self.settings.heartbeat_interval_s, self.heartbeat, "heartbeat"),
                name="edge-heartbeat",
            )
        )
        log.info(
            "edge.started",
            edge=self.settings.edge_name,
            cache=str(self.settings.edge_cache_dir),
            url=self.url,
        )

    async def _serve(self, server: EdgeServer) -> None:
        serving = asyncio.create_task(server.serve(), name="edge-server")
        self._serving = serving
        while not server.started:
            if serving.done():
                serving.result()  # the reason it could not start (a port in use, ...)
                raise RuntimeError("the edge's server stopped before it started")
            await asyncio.sleep(0.02)

    async def on_cancelled(self, delivery: Delivery, event: RequestCancelled) -> None:
        await asyncio.to_thread(self.cancelled.mark, event.request_id)
        forgotten = await asyncio.to_thread(self.cancelled.forget_old)
        log.info("request.cancelled", request_id=event.request_id, forgotten=forgotten)

    async def heartbeat(self) -> None:
        busy = self.on_demand.in_flight if self.on_demand is not None else None
        await send_heartbeat(self.settings, self.bus, url=self.url, on_demand_busy=busy)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(*(child.stop() for child in self.children))
        if self.server is not None and self._serving is not None:
            self.server.should_exit = True
            await asyncio.gather(self._serving, return_exceptions=True)
            self._serving = None
