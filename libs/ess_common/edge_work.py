"""What the edge daemons share: their queue names and how a failed file is reported.

An edge reports a file it cannot handle as `file.failed` (so the head can move it) instead of
letting the message die silently: at once for a permanent fault, after the last retry for a
passing one.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, TypeVar

import structlog
from pydantic import SecretStr

from ess_common.errors import PermanentError
from ess_common.events import Event, FileAssigned, FileCached, FileFailed
from ess_common.messaging.bus import Bus, Delivery, Handler, publish_event
from ess_common.messaging.handlers import parse_for

log = structlog.get_logger("ess.edge_work")

W = TypeVar("W", FileAssigned, FileCached)


def assigned_queue(exchange: str, edge: str) -> str:
    return f"{exchange}.edge.{edge}.assigned"


def cached_queue(exchange: str, edge: str) -> str:
    return f"{exchange}.edge.{edge}.cached"


def edge_queues(exchange: str, edge: str) -> dict[str, list[str]]:
    """Every queue of one edge with its bindings; declared before the edge's first heartbeat
    so that no work sent to it is unroutable. Queue names start with the exchange's, so that
    deployments sharing a RabbitMQ virtual host stay apart."""
    return {
        assigned_queue(exchange, edge): [f"file.assigned.{edge}"],
        cached_queue(exchange, edge): [f"file.cached.{edge}"],
    }


def work_handler(
    bus: Bus,
    accepted: type[W],
    stage: Literal["precache", "split"],
    max_attempts: int,
    work: Callable[[W], Awaitable[Event]],
    *,
    edge_token: SecretStr | None = None,
) -> Handler:
    """`edge_token` signs what the handler publishes, so that the broker knows it is ours.

    Without one, the edge's `ESS_EDGE_TOKEN` is used when set: the precacher and splitter run
    as the edge's children with its environment, and must sign like it even where their
    caller does not pass the token.
    """
    if edge_token is None and os.environ.get("ESS_EDGE_TOKEN"):
        edge_token = SecretStr(os.environ["ESS_EDGE_TOKEN"])

    async def handle(delivery: Delivery) -> None:
        event = parse_for(delivery, accepted)
        assert isinstance(event, accepted)
        try:
            result = await work(event)
        except Exception as exc:
            permanent = isinstance(exc, PermanentError)
            if not permanent and delivery.attempt < max_attempts:
                raise
            log.warning("file.failed", stage=stage, reason=str(exc), permanent=permanent)
            await publish_event(
                bus,
                FileFailed(
                    work=event.work,
                    stage=stage,
                    reason=f"{type(exc).__name__}: {exc}"[:2000],
                    retryable=not permanent,
                    correlation_id=event.work.request_id,
                ),
                signed_with=edge_token,
            )
            return
        finally:
            structlog.contextvars.unbind_contextvars("event_id", "request_id")
        await publish_event(bus, result, signed_with=edge_token)

    return handle


def cache_path(cache_dir: Path, scope: str, lfn: str) -> Path:
    """Where an edge keeps its copy of an input file (scope and LFN are checked names)."""
    return cache_dir / "files" / scope / lfn


def cache_usage(cache_dir: Path) -> int:
    """Bytes the edge's cache holds, partial downloads and split outputs included."""
    total = 0
    for path in cache_dir.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except FileNotFoundError:
            continue  # removed while we walked
    return total
