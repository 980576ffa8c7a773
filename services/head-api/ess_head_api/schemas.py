"""Shapes of the head API's answers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

# The lookup's answers are shared with the edges, which answer pilots the same way.
from ess_common.ranges import LookupAnswer as LookupAnswer
from ess_common.ranges import Piece as Piece


class Answer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class FileProgress(Answer):
    id: int
    scope: str
    lfn: str
    status: str
    edge: str | None
    attempt: int
    n_events: int
    ranges: int
    error: str | None


class RequestView(Answer):
    id: str
    dataset: str
    idempotency_key: str
    status: str
    events_per_range: int
    priority: int
    error: str | None
    created_at: datetime
    ready_at: datetime | None
    files_total: int
    files_by_status: dict[str, int]
    ranges: int
    files: list[FileProgress] | None = None


class EdgeView(Answer):
    name: str
    site: str
    region: str
    url: str | None
    status: str
    alive: bool
    last_heartbeat: datetime
    seconds_since_heartbeat: float
    quota_bytes: int
    free_bytes: int
    queued: int
    load: float
    version: str
    used_bytes: int | None = Field(
        default=None, description="what its cache holds or has reserved, evictable files included"
    )
    on_demand_slots: int | None = Field(
        default=None, description="on-demand splits it runs at once"
    )
    on_demand_busy: int | None = Field(
        default=None, description="on-demand splits running at its last heartbeat"
    )


class RequestEventView(Answer):
    """One entry of a request's history, in the order things happened."""

    id: int = Field(description="increasing; pass the last as `after` for what came since")
    at: datetime
    kind: str = Field(
        description="received, assigned, cached, split, retried, moved, file_failed, ready, "
        "failed, cancelled, retry_requested, notified, notification_failed, dead_letter, driven"
    )
    file_id: int | None
    edge: str | None
    attempt: int | None
    detail: str | None
    trace_id: str | None = Field(description="the trace of the work that made the change")


class DeadLetterView(Answer):
    id: int
    queue: str
    routing_key: str
    reason: str
    request_id: str | None
    created_at: datetime
    body: str


class RangeView(Answer):
    """One event-range file of a request, as the bookkeeping records it."""

    id: int
    file_id: int
    scope: str
    lfn: str
    first_event: int = Field(description="1-based position in the original file")
    last_event: int = Field(description="1-based, inclusive")
    key: str = Field(description="object key in the store")
    size: int
    adler32: str


class RangePage(Answer):
    """A page of a request's ranges, in the order they were recorded."""

    request_id: str
    ranges: list[RangeView]
    next_after: int | None = Field(
        description="pass as `after` for the next page; null on the last page"
    )


class CancelBody(Answer):
    reason: str = Field(default="cancelled by request", min_length=1, max_length=2000)


class RetryAnswer(Answer):
    files_retried: int
    request: RequestView


class ExpiryAnswer(Answer):
    expired: list[str]
