"""The gauges the head reads from its bookkeeping when it is scraped: how many requests, files
and edges are in each state, how old each edge's last heartbeat is, what the outbox has not
yet published. They describe the state of things, which the database holds; nothing counts
them as they change. Each is named in `ess_common.metrics.BOOKKEEPING_GAUGES`.
"""

from __future__ import annotations

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from ess_common.db.models import (
    DeadLetter,
    Edge,
    EdgeStatus,
    File,
    FileStatus,
    OutboxMessage,
    Request,
    RequestStatus,
    utcnow,
)
from ess_common.metrics import BOOKKEEPING_GAUGES


def _gauge(name: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, BOOKKEEPING_GAUGES[name], labels=labels)


async def _by_status(
    session: AsyncSession,
    name: str,
    column: InstrumentedAttribute[str],
    states: type[RequestStatus | FileStatus],
) -> GaugeMetricFamily:
    counts: dict[str, int] = dict(
        (await session.execute(select(column, func.count()).group_by(column))).tuples().all()
    )
    family = _gauge(name, ["state"])
    # Every state, zeros included: a state that empties shows 0, not a vanished series.
    for state in states:
        family.add_metric([state.value], float(counts.get(state.value, 0)))
    return family


async def bookkeeping_gauges(session: AsyncSession) -> list[Metric]:
    families: list[Metric] = [
        await _by_status(session, "ess_requests", Request.status, RequestStatus),
        await _by_status(session, "ess_files", File.status, FileStatus),
    ]
    edges = (
        await session.execute(select(Edge.name, Edge.status, Edge.last_heartbeat, Edge.queued))
    ).all()
    by_state = _gauge("ess_edges", ["state"])
    for state in EdgeStatus:
        by_state.add_metric([state.value], float(sum(1 for e in edges if e.status == state)))
    age = _gauge("ess_edge_heartbeat_age_seconds", ["edge"])
    queued = _gauge("ess_edge_queued_files", ["edge"])
    now = utcnow()
    for edge in edges:
        age.add_metric([edge.name], max(0.0, (now - edge.last_heartbeat).total_seconds()))
        queued.add_metric([edge.name], float(edge.queued))
    backlog = await session.scalar(
        select(func.count()).select_from(OutboxMessage).where(OutboxMessage.published_at.is_(None))
    )
    outbox = _gauge("ess_outbox_backlog_messages")
    outbox.add_metric([], float(backlog or 0))
    dead = _gauge("ess_dead_letters_recorded")
    dead.add_metric(
        [], float(await session.scalar(select(func.count()).select_from(DeadLetter)) or 0)
    )
    return [*families, by_state, age, queued, outbox, dead]
