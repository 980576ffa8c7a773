"""`python -m ess_splitter`: run one edge's splitter until SIGTERM."""

from __future__ import annotations

import asyncio

from ess_common.logs import configure_logging
from ess_common.messaging.factory import make_bus
from ess_common.runtime import run_until_signalled
from ess_common.settings import EdgeSettings
from ess_common.store.factory import make_store
from ess_splitter.service import Splitter


async def run(settings: EdgeSettings) -> None:
    bus = make_bus(settings)
    store = make_store(settings)
    splitter = Splitter(settings, bus, store)

    async def start() -> None:
        await store.start()
        await bus.start()
        await splitter.start()

    async def stop() -> None:
        await splitter.stop()
        await bus.close()
        await store.close()

    await run_until_signalled(start, stop)


def main() -> None:
    settings = EdgeSettings()
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
