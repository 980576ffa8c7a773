"""`python -m ess_edge`: run one edge (heartbeat, precacher, splitter) until SIGTERM."""

from __future__ import annotations

import asyncio

from ess_common.logs import configure_logging
from ess_common.messaging.factory import make_bus
from ess_common.runtime import run_until_signalled
from ess_common.settings import EdgeSettings
from ess_edge.service import Edge
from ess_edge.supervisor import worker_children


async def run(settings: EdgeSettings) -> None:
    if settings.bus_url.startswith("memory://"):
        raise SystemExit("an edge process needs a shared bus: set ESS_BUS_URL to amqp://...")
    bus = make_bus(settings)
    edge = Edge(settings, bus, worker_children())

    async def start() -> None:
        await bus.start()
        await edge.start()

    async def stop() -> None:
        await edge.stop()
        await bus.close()

    await run_until_signalled(start, stop)


def main() -> None:
    settings = EdgeSettings()
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
