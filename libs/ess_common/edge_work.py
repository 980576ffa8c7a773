"""What the edge daemons share: their queue names, how a failed file is reported, and which
requests were cancelled.

An edge reports a file it cannot handle as `file.failed` (so the head can move it) instead of
letting the message die silently: at once for a permanent fault, after the last retry for a
passing one. Work of a cancelled request still queued is dropped unworked: the edge daemon
marks each `request.cancelled` in its cache directory (`CancelledRequests`), where its workers
look before they start a file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, TypeVar

import structlog
from pydantic import SecretStr

from ess_common.errors import PermanentError
from ess_common.events import Event, FileAssigned, FileCached, FileFailed, RequestCancelled
from ess_common.messaging.bus import Bus, Delivery, EventHandler, publish_event
from ess_common.messaging.handlers import parse_for
from ess_common.work_guard import MovedOn, WorkGuard

log = structlog.get_logger("ess.edge_work")

W = TypeVar("W", FileAssigned, FileCached)


def assigned_queue(exchange: str, edge: str) -> str:
    return f"{exchange}.edge.{edge}.assigned"


def cached_queue(exchange: str, edge: str) -> str:
    return f"{exchange}.edge.{edge}.cached"


def cancelled_queue(exchange: str, edge: str) -> str:
    return f"{exchange}.edge.{edge}.cancelled"


def edge_queues(exchange: str, edge: str) -> dict[str, list[str]]:
    """Every queue of one edge with its bindings; declared before the edge's first heartbeat
    so that no work sent to it is unroutable. Queue names start with the exchange's, so that
    deployments sharing a RabbitMQ virtual host stay apart."""
    return {
        assigned_queue(exchange, edge): [FileAssigned.binding(edge)],
        cached_queue(exchange, edge): [FileCached.binding(edge)],
        cancelled_queue(exchange, edge): [RequestCancelled.binding(edge)],
    }


class CancelledRequests:
    """Cancelled request ids as marker files under the edge's cache directory: written by the
    edge daemon, read by its worker processes; forgotten after `keep_s`."""

    def __init__(self, cache_dir: Path, *, keep_s: float = 7 * 24 * 3600.0) -> None:
        self.root = cache_dir / "cancelled"
        self.keep_s = keep_s

    def mark(self, request_id: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / _safe(request_id)).touch()

    def __contains__(self, request_id: str) -> bool:
        return (self.root / _safe(request_id)).exists()

    def forget_old(self) -> int:
        cutoff = time.time() - self.keep_s
        forgotten = 0
        for marker in self.root.glob("*") if self.root.is_dir() else []:
            try:
                if marker.stat().st_mtime < cutoff:
                    marker.unlink()
                    forgotten += 1
            except FileNotFoundError:
                continue
        return forgotten


def _safe(request_id: str) -> str:
    # Request ids are UUIDs; anything else is kept to a file name of its own characters.
    return "".join(c for c in request_id if c.isalnum() or c == "-")[:64] or "_"


def work_handler(
    bus: Bus,
    accepted: type[W],
    stage: Literal["precache", "split"],
    max_attempts: int,
    work: Callable[[W], Awaitable[Event]],
    *,
    edge_token: SecretStr | None = None,
    cancelled: CancelledRequests | None = None,
    dropped: Callable[[W], None] | None = None,
    guard: WorkGuard | None = None,
) -> EventHandler:
    """`edge_token` signs what the handler publishes, so that the broker knows it is ours.

    Without one, the edge's `ESS_EDGE_TOKEN` is used when set: the precacher and splitter run
    as the edge's children with its environment, and must sign like it even where their
    caller does not pass the token. Work of a request in `cancelled` is acknowledged unworked
    (`dropped` is told, to release what the work held) and nothing is published for it.
    With a `guard`, work the head did not sign for this edge is refused and work of an
    assignment that moved on is dropped the same way (`ess_common.work_guard`), also when
    `work` finds it moved on later (`MovedOn`).
    """
    if edge_token is None and os.environ.get("ESS_EDGE_TOKEN"):
        edge_token = SecretStr(os.environ["ESS_EDGE_TOKEN"])

    async def handle(delivery: Delivery) -> None:
        event = parse_for(delivery, accepted)
        assert isinstance(event, accepted)
        if guard is not None and not await guard.admit(delivery, event):
            if dropped is not None:
                dropped(event)
            return
        if cancelled is not None and event.work.request_id in cancelled:
            log.info("work.dropped", stage=stage, request_id=event.work.request_id)
            if dropped is not None:
                dropped(event)
            return
        try:
            result = await work(event)
        except MovedOn as moved:
            # Rechecked before its results left the edge: nothing is published for it.
            log.info("work.dropped_moved_on", stage=stage, reason=str(moved))
            if dropped is not None:
                dropped(event)
            return
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
                ).caused_by(event),
                signed_with=edge_token,
            )
            return
        await publish_event(bus, result.caused_by(event), signed_with=edge_token)

    return EventHandler((accepted,), handle)


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
