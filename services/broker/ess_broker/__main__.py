"""`python -m ess_broker`: run the broker until SIGTERM."""

from __future__ import annotations

import asyncio

from ess_broker.service import Broker
from ess_common.db.session import make_engine, make_session_maker
from ess_common.logs import configure_logging
from ess_common.messaging.factory import make_bus
from ess_common.runtime import run_until_signalled
from ess_common.settings import HeadSettings


async def run(settings: HeadSettings) -> None:
    engine = make_engine(settings.database_url)
    bus = make_bus(settings)
    broker = Broker(settings, bus, make_session_maker(engine))

    async def start() -> None:
        await bus.start()
        await broker.start()

    async def stop() -> None:
        await broker.stop()
        await bus.close()
        await engine.dispose()

    await run_until_signalled(start, stop)


def main() -> None:
    settings = HeadSettings()
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
