"""`python -m ess_head_api`: serve the head API until SIGTERM."""

from __future__ import annotations

import asyncio

import uvicorn

from ess_common.db.session import make_engine, make_session_maker
from ess_common.logs import configure_logging
from ess_common.messaging.factory import make_bus
from ess_common.messaging.outbox import OutboxRelay
from ess_common.settings import HeadSettings
from ess_common.store.factory import make_store
from ess_head_api.app import create_app
from ess_head_api.state import HeadState


async def run(settings: HeadSettings) -> None:
    if settings.bus_url.startswith("memory://"):
        raise SystemExit("the head API process needs a shared bus: set ESS_BUS_URL to amqp://...")
    engine = make_engine(settings.database_url)
    bus = make_bus(settings)
    store = make_store(settings)
    await bus.start()
    await store.start()
    sessions = make_session_maker(engine)
    relay = OutboxRelay(sessions, bus)
    app = create_app(HeadState(settings, sessions, store, relay))
    relay_task = asyncio.create_task(relay.run(), name="head-outbox")
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_config=None)
    )
    try:
        await server.serve()  # returns on SIGTERM / SIGINT after draining requests
    finally:
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)
        await store.close()
        await bus.close()
        await engine.dispose()


def main() -> None:
    settings = HeadSettings()
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
