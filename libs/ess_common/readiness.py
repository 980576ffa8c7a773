"""Readiness: whether a service can do its work now, as `/readyz` answers it.

`/healthz` says the process is alive (restart it when it is not); `/readyz` says whether what
it depends on answers: the database, the bus and the object store, each with one round trip
bounded by `TIMEOUT_S`. A service that is not ready answers 503 with the name of each
dependency that failed and why (take it out of the load balancer; do not restart it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from sqlalchemy import text

from ess_common.db.session import SessionMaker
from ess_common.messaging.bus import Bus, audit_queue
from ess_common.store.base import ObjectStore

log = structlog.get_logger("ess.readiness")

TIMEOUT_S = 3.0
#: The key the store is asked about: it need not exist, the store must answer.
PROBE_KEY = "ess-readiness-probe"

Probe = Callable[[], Awaitable[object]]


def database_probe(sessions: SessionMaker) -> Probe:
    async def probe() -> None:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))

    return probe


def bus_probe(bus: Bus) -> Probe:
    # A passive declaration of a queue every bus has: one round trip to the broker.
    return lambda: bus.depth(audit_queue(bus.exchange))


def store_probe(store: ObjectStore) -> Probe:
    return lambda: store.size(PROBE_KEY)


async def failures(probes: Mapping[str, Probe], timeout_s: float = TIMEOUT_S) -> dict[str, str]:
    """Each dependency that did not answer, with why; empty when all did."""

    async def run(probe: Probe) -> str | None:
        try:
            await asyncio.wait_for(probe(), timeout_s)
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    names = list(probes)
    results = await asyncio.gather(*(run(probes[n]) for n in names))
    failed = {name: reason for name, reason in zip(names, results, strict=True) if reason}
    if failed:
        log.warning("readiness.failed", failed=failed)
    return failed
