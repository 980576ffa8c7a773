"""Running a daemon: until SIGTERM or SIGINT, then an ordered, graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

from ess_common.logs import configure_logging
from ess_common.settings import EssSettings

log = structlog.get_logger("ess.runtime")

S = TypeVar("S", bound=EssSettings)


async def run_until_signalled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        log.info("service.started")
        await stopping.wait()
        log.info("service.stopping")
    finally:
        await stop()
        log.info("service.stopped")


async def every(interval_s: float, work: Callable[[], Awaitable[object]], name: str) -> None:
    """Run periodic work forever; a failing round is logged and the next one comes anyway."""
    while True:
        try:
            await work()
        except Exception:
            log.exception("periodic.failed", work=name)
        await asyncio.sleep(interval_s)


Action = Callable[[], Awaitable[object]]


async def run_parts(*parts: tuple[Action | None, Action | None]) -> None:
    """Run a daemon made of parts given as (start, stop): started in order, and on a signal
    (or a start that fails) the ones started are stopped in reverse order."""
    stops: list[Action] = []

    async def start() -> None:
        for begin, end in parts:
            if begin is not None:
                await begin()
            if end is not None:
                stops.append(end)

    async def stop() -> None:
        for end in reversed(stops):
            await end()

    await run_until_signalled(start, stop)


def run_main(settings: S, run: Callable[[S], Coroutine[Any, Any, None]]) -> None:
    """A service's `main()`: logging as the settings say, then the daemon until a signal."""
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run(settings))
