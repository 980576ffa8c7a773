"""Tables of the head's bookkeeping. The schema itself is made by the alembic migrations."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC everywhere; SQLite forgets the zone, so it is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        # SQLite stores the wall-clock time without its offset: it must be the UTC one.
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class RequestStatus(enum.StrEnum):
    RECEIVED = "received"
    ASSIGNED = "assigned"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FileStatus(enum.StrEnum):
    PENDING = "pending"  # no edge could take it yet
    ASSIGNED = "assigned"
    CACHED = "cached"
    SPLIT = "split"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its request was cancelled before the file was split
    ON_DEMAND = "on_demand"  # not split ahead: edges split the ranges pilots ask for


class EdgeStatus(enum.StrEnum):
    ALIVE = "alive"
    LOST = "lost"
    DRAINING = "draining"
    DISABLED = "disabled"


class NotificationStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    dataset: Mapped[str] = mapped_column(String(512))
    events_per_range: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    notify_message: Mapped[bool] = mapped_column(default=True)
    callback_url: Mapped[str | None] = mapped_column(Text)
    notify_files: Mapped[bool] = mapped_column(default=False)
    #: The request as received, to tell a resubmission from a conflicting one.
    spec_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=RequestStatus.RECEIVED)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    ready_at: Mapped[datetime | None]
    #: The trace context the request was recorded in, for the events of its work that are
    #: written outside it (a sweep assigning its files): one trace per request.
    trace_context: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("request_id", "scope", "lfn"),
        Index("ix_files_scope_lfn", "scope", "lfn"),
        # Whether a request has files left, without reading its split ones.
        Index("ix_files_request_status", "request_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(255))
    lfn: Mapped[str] = mapped_column(String(255))
    guid: Mapped[str] = mapped_column(String(64), default="")
    n_events: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    adler32: Mapped[str] = mapped_column(String(8))
    sources: Mapped[list[str]]
    #: `[{"site": ..., "region": ...}]` from the request, for placement near the data.
    replicas: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.PENDING, index=True)
    edge: Mapped[str | None] = mapped_column(String(63), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


_ON_DEMAND = text("file_id IS NULL")


class Range(Base):
    """One range file. Those of a request's file form its prepared copy; a range split on
    demand belongs to no request (`file_id` and `request_id` NULL) and is a copy of itself,
    recorded once per asked span."""

    __tablename__ = "ranges"
    __table_args__ = (
        UniqueConstraint("file_id", "first_event"),
        # last_event too: the ranges that end before the asked ones start are passed over in
        # the index, never read from the table.
        Index("ix_ranges_lookup", "scope", "lfn", "first_event", "last_event"),
        Index(
            "uq_ranges_on_demand",
            "scope",
            "lfn",
            "first_event",
            "last_event",
            unique=True,
            postgresql_where=_ON_DEMAND,
            sqlite_where=_ON_DEMAND,
        ),
        # The retention sweep reads the oldest first and stops at the cutoff: without it, a
        # sweep with nothing expired read the whole table.
        Index("ix_ranges_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    #: The request's file it is a range of (None for a range split on demand). Not a foreign
    #: key: the bookkeeping writes ranges only for files it holds locked, and a request's
    #: expiry deletes its ranges with its files (migration 0009 says why).
    file_id: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(36))
    #: The edge that split it on demand.
    edge: Mapped[str | None] = mapped_column(String(63))
    scope: Mapped[str] = mapped_column(String(255))
    lfn: Mapped[str] = mapped_column(String(255))
    first_event: Mapped[int] = mapped_column(Integer)
    last_event: Mapped[int] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    adler32: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Edge(Base):
    __tablename__ = "edges"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    site: Mapped[str] = mapped_column(String(255))
    region: Mapped[str] = mapped_column(String(255))
    url: Mapped[str | None] = mapped_column(Text)
    latitude: Mapped[float | None]
    longitude: Mapped[float | None]
    quota_bytes: Mapped[int] = mapped_column(BigInteger)
    free_bytes: Mapped[int] = mapped_column(BigInteger)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    load: Mapped[float] = mapped_column(default=0.0)
    version: Mapped[str] = mapped_column(String(64))
    #: What the edge's cache holds or has reserved (evictable files included).
    used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: On-demand splits the edge runs at once, and those running at its last heartbeat.
    on_demand_slots: Mapped[int | None] = mapped_column(Integer)
    on_demand_busy: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=EdgeStatus.ALIVE)
    last_heartbeat: Mapped[datetime] = mapped_column(default=utcnow)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class EdgeEnrollment(Base):
    """An edge the operator let in, with its credential's key (never the token itself), see
    `ess_common.enrollment`. A revoked enrollment stays, for the record, until the edge is
    enrolled again."""

    __tablename__ = "edge_enrollments"

    edge: Mapped[str] = mapped_column(String(63), primary_key=True)
    #: HMAC-SHA256 of the token (hex): what the edge's signatures and bearer token are checked
    #: with; the token cannot be read back from it.
    key: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Notification(Base):
    """One notice to one target about one event of a request: at most one is ever sent.

    `event` is the event type, with the file for per-file events (`file.ready/<file id>`);
    a notice of a failure that was later retried is kept as `request.failed@<id>`.
    """

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("request_id", "event", "kind", "target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # "message" or "http"
    target: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    #: The trace context of the event it tells (`ess_common.tracing`): its attempts, whoever
    #: makes them, belong to the request's trace.
    trace_context: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class OutboxMessage(Base):
    """An event written in the same transaction as the change it announces."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    exchange: Mapped[str | None] = mapped_column(String(255))
    routing_key: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(index=True)
    #: Published with the event: the trace context it was written in (`ess_common.tracing`).
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class DeadLetter(Base):
    """A message that could not be handled, with the reason, for operators to read or replay."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(255))
    routing_key: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(36), index=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RequestEventKind(enum.StrEnum):
    """What happened in a request's life (`request_events.kind`)."""

    RECEIVED = "received"
    ASSIGNED = "assigned"  # a file given to an edge
    CACHED = "cached"
    SPLIT = "split"
    RETRIED = "retried"  # a file back to pending after an edge's failure
    MOVED = "moved"  # a file taken back from an edge lost or disabled
    FILE_FAILED = "file_failed"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY_REQUESTED = "retry_requested"  # an operator retried the failed files
    NOTIFIED = "notified"
    NOTIFICATION_FAILED = "notification_failed"
    DEAD_LETTER = "dead_letter"
    DRIVEN = "driven"  # a request that made no progress, its unfinished files sent out again


class RequestEvent(Base):
    """One entry of a request's history, written in the transaction of the change it tells."""

    __tablename__ = "request_events"
    __table_args__ = (Index("ix_request_events_request_id_id", "request_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    file_id: Mapped[int | None] = mapped_column(Integer)
    edge: Mapped[str | None] = mapped_column(String(63))
    attempt: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str | None] = mapped_column(String(32))
