"""Running a daemon: until SIGTERM or SIGINT, then an ordered, graceful stop; with its traces
and, on `ESS_METRICS_PORT`, its metrics."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

from ess_common import metrics, tracing
from ess_common.logs import configure_logging
from ess_common.metrics_export import MetricsServer
from ess_common.outages import is_outage
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
    """Run periodic work forever; a failing round is logged and the next one comes anyway.
    A round that met an outage (a server unreachable) is logged in one line and counted."""
    while True:
        try:
            await work()
        except Exception as exc:
            if _stopping():
                pass
            elif is_outage(exc):
                log.warning("periodic.outage", work=name, reason=f"{type(exc).__name__}: {exc}")
                metrics.OUTAGE_RETRIES.labels(f"periodic:{name}").inc()
            else:
                log.exception("periodic.failed", work=name)
        if _stopping():
            # Cancelled mid-round, the cancellation turned into another error on its way out
            # (a channel closing under it) and was caught inside the work: the loop ends all
            # the same, or whoever stops it would wait forever.
            raise asyncio.CancelledError
        await asyncio.sleep(interval_s)


def _stopping() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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


def service_name(run: Callable[..., object]) -> str:
    """`ess-broker` for the `run` of `ess_broker.__main__`."""
    return run.__module__.split(".")[0].replace("_", "-")


def run_main(settings: S, run: Callable[[S], Coroutine[Any, Any, None]]) -> None:
    """A service's `main()`: logging as the settings say, its tracer, its metrics port (when
    `ESS_METRICS_PORT` is set), then the daemon until a signal."""
    configure_logging(settings.log_format, settings.log_level)
    provider = tracing.configure(service_name(run), settings.otlp_endpoint)
    server = None
    if settings.metrics_port is not None:
        server = MetricsServer(settings.metrics_host, settings.metrics_port)
        server.start()
    try:
        asyncio.run(run(settings))
    finally:
        if server is not None:
            server.stop()
        provider.shutdown()
