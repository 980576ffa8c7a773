"""Running a daemon: until SIGTERM or SIGINT, then an ordered, graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("ess.runtime")


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
