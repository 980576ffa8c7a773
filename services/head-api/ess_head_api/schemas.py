"""Shapes of the head API's answers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


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


class Piece(Answer):
    """One prepared file holding part (or all) of an asked event range.

    Event numbers are 1-based positions in the original file, as PanDA counts them;
    `local_*` are the same events counted from 1 within this piece's file.
    """

    url: str = Field(description="short-lived signed URL, made at lookup time")
    key: str
    size: int
    adler32: str
    file_first_event: int = Field(description="first event the piece's file holds")
    file_last_event: int = Field(description="last event the piece's file holds")
    start_event: int = Field(description="first asked event in this piece")
    last_event: int = Field(description="last asked event in this piece")
    local_start_event: int = Field(description="start_event counted within the piece's file")
    local_last_event: int = Field(description="last_event counted within the piece's file")
    expires_in_s: int


class LookupAnswer(Answer):
    scope: str
    lfn: str
    start_event: int
    last_event: int
    pieces: list[Piece]


class DeadLetterView(Answer):
    id: int
    queue: str
    routing_key: str
    reason: str
    request_id: str | None
    created_at: datetime
    body: str
