"""`python -m ess_head_api`: serve the head API until SIGTERM.

`ESS_HEAD_WORKERS` worker processes serve the one port, 1 by default. A request costs the
API's CPU more than its waiting (a pilot's lookup is about half a millisecond of Python, and
one process runs on one core), so give it one worker per core it may use. Each worker builds
its own app (`worker_app`): its database pool, bus connection, store client and outbox relay;
the relays and the request expiry of several processes share their tables (SKIP LOCKED).

Several workers are run by uvicorn's supervisor on a listening socket made here rather than by
uvicorn's `--workers`, which leaves Nagle's algorithm on for every connection (see
`tcp_listener`). They count their metrics in a directory this process makes and deletes, so
that `/metrics`, whichever worker answers it, shows the whole head.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from ess_common import tracing
from ess_common.db.session import make_engine, make_session_maker
from ess_common.logs import configure_logging
from ess_common.messaging.factory import make_bus
from ess_common.messaging.outbox import OutboxRelay
from ess_common.metrics_export import owned_directory
from ess_common.rucio import make_catalogue
from ess_common.settings import HeadSettings
from ess_common.store.factory import make_store
from ess_head_api.app import create_app
from ess_head_api.state import HeadState


def build_app(settings: HeadSettings) -> FastAPI:
    """The head API with what it runs on: the bus and the store are started, the outbox relay
    runs, while the app is served (its lifespan); the database pool is closed after."""
    engine = make_engine(settings.database_url)
    bus = make_bus(settings)
    store = make_store(settings)
    sessions = make_session_maker(engine)
    relay = OutboxRelay(sessions, bus)
    catalogue = make_catalogue(settings)
    app = create_app(HeadState(settings, sessions, store, relay, catalogue))
    served_app = app.router.lifespan_context

    async def stop_relay(task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    @asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            if catalogue is not None:
                stack.push_async_callback(catalogue.close)
            await bus.start()
            stack.push_async_callback(bus.close)
            await store.start()
            stack.push_async_callback(store.close)
            relay_task = asyncio.create_task(relay.run(), name="head-outbox")
            stack.push_async_callback(stop_relay, relay_task)
            provider = tracing.configure("ess-head-api", settings.otlp_endpoint)
            stack.callback(provider.shutdown)
            async with served_app(served):
                yield

    app.router.lifespan_context = lifespan
    return app


def worker_app() -> FastAPI:
    """One worker's app, for uvicorn's `--factory`: settings and logging are made in the
    worker process."""
    settings = HeadSettings()
    configure_logging(settings.log_format, settings.log_level)
    return build_app(settings)


def tcp_listener(config: uvicorn.Config) -> socket.socket:
    """The listening socket of uvicorn's workers, told that it is TCP. uvicorn binds it with
    protocol 0 and the connections it accepts inherit that; asyncio sets TCP_NODELAY only on
    connections whose protocol is TCP, so each answer on a kept-alive connection would wait
    ~40 ms for the client's delayed ACK (uvicorn issue #3149)."""
    bound = config.bind_socket()
    return socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, bound.detach())


def serve(settings: HeadSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain the requests (in every worker)."""
    if settings.head_workers == 1:
        uvicorn.run(
            build_app(settings), host=settings.api_host, port=settings.api_port, log_config=None
        )
        return
    config = uvicorn.Config(
        "ess_head_api.__main__:worker_app",
        factory=True,
        workers=settings.head_workers,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
    )
    with owned_directory("head"):
        Multiprocess(config, sockets=[tcp_listener(config)]).run()


def main() -> None:
    settings = HeadSettings()
    configure_logging(settings.log_format, settings.log_level)
    if settings.bus_url.startswith("memory://"):
        raise SystemExit("the head API process needs a shared bus: set ESS_BUS_URL to amqp://...")
    serve(settings)


if __name__ == "__main__":
    main()
