"""`python -m ess_precacher`: run one edge's precacher until SIGTERM."""

from __future__ import annotations

import asyncio

from ess_common.logs import configure_logging
from ess_common.messaging.factory import make_bus
from ess_common.runtime import run_until_signalled
from ess_common.settings import EdgeSettings
from ess_precacher.service import Precacher


async def run(settings: EdgeSettings) -> None:
    bus = make_bus(settings)
    precacher = Precacher(settings, bus)

    async def start() -> None:
        await bus.start()
        await precacher.start()

    async def stop() -> None:
        await precacher.stop()
        await bus.close()

    await run_until_signalled(start, stop)


def main() -> None:
    settings = EdgeSettings()
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
