"""The event contracts: every message ESS puts on its exchange, in one place.

Each event is a frozen pydantic model whose literal `event_type` is the routing key. Events
that concern one edge's work are routed to `<event_type>.<edge>` so that the edge's own
queues receive exactly its work while the head binds `<event_type>.*`.
`parse_event` reads any of them; an unknown `schema_version` or `event_type` is refused.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from ess_common.checksums import normalise_adler32

SCHEMA_VERSION: Literal[1] = 1

#: Rucio's scope and name alphabet: no slashes, no "..", nothing that escapes a key prefix.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
_SOURCE_SCHEMES = ("file://", "http://", "https://", "s3://", "root://")


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must match {_NAME.pattern} without '..'")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Contract):
    """The envelope every event carries."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)
    #: The request the event belongs to, for following one request through the logs.
    correlation_id: str | None = None
    schema_version: Literal[1] = SCHEMA_VERSION

    def routing_key(self) -> str:
        return str(getattr(self, "event_type"))  # noqa: B009 - every subclass defines it


class Replica(Contract):
    """Where data management says a copy of the file sits, for placing work near it."""

    site: str
    region: str = ""


class DatasetFile(Contract):
    """One input file of a dataset, as data management describes it."""

    scope: str
    lfn: str
    guid: str = ""
    n_events: int = Field(gt=0)
    size: int = Field(gt=0)
    adler32: str
    #: Where the file can be read: file://, http(s)://, s3://bucket/key, root://.
    sources: list[str] = Field(min_length=1)
    #: Sites holding a copy; an edge at one of them (or in their region) is preferred.
    replicas: list[Replica] = []

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        return _check_name(value, "scope")

    @field_validator("lfn")
    @classmethod
    def _lfn(cls, value: str) -> str:
        return _check_name(value, "LFN")

    @field_validator("adler32")
    @classmethod
    def _adler32(cls, value: str) -> str:
        try:
            return normalise_adler32(value)
        except ValueError as exc:
            raise ValueError(f"adler32 {value!r} is not hexadecimal") from exc

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(_SOURCE_SCHEMES):
                raise ValueError(f"source {url!r} must start with one of {_SOURCE_SCHEMES}")
        return value


class Notify(Contract):
    """How PanDA wants to hear that the request is ready."""

    #: Publish `request.ready` on the PanDA-facing exchange.
    message: bool = True
    #: POST the outcome here, with retries, once.
    callback_url: str | None = Field(default=None, pattern=r"^https?://")
    #: Also announce each file as soon as its ranges are ready (`file.ready`).
    files: bool = False


class RequestSpec(Contract):
    """What PanDA asks for: a dataset prepared at a granularity."""

    dataset: str = Field(description="`scope:name` of the dataset")
    #: The JEDI task id or any key: a resubmission with the same key is the same request.
    idempotency_key: str = Field(min_length=1, max_length=200)
    events_per_range: int = Field(gt=0, le=10_000_000)
    priority: int = Field(default=0, ge=-1000, le=1000)
    notify: Notify = Notify()
    files: list[DatasetFile] = Field(min_length=1)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        scope, sep, name = value.partition(":")
        if not sep:
            raise ValueError("dataset must be written scope:name")
        _check_name(scope, "scope")
        _check_name(name, "dataset name")
        return value

    @model_validator(mode="after")
    def _unique_files(self) -> RequestSpec:
        seen: set[tuple[str, str]] = set()
        for f in self.files:
            if (f.scope, f.lfn) in seen:
                raise ValueError(f"file {f.scope}:{f.lfn} is listed twice")
            seen.add((f.scope, f.lfn))
        return self


class RequestCreated(Event, RequestSpec):
    """PanDA (or the head API on POST) asks ESS to prepare a dataset.

    Emitted by PanDA/JEDI or the head API; consumed by the broker.
    """

    event_type: Literal["request.created"] = "request.created"


class FileWork(Contract):
    """One file of one request, as an edge needs it to cache and split."""

    request_id: str
    file_id: int
    #: Bumped each time the file is (re)assigned: results of an older attempt are stale.
    attempt: int = Field(ge=1)
    edge: str
    file: DatasetFile
    events_per_range: int = Field(gt=0)
    priority: int = 0


class FileAssigned(Event):
    """The broker gives an edge a file to pre-cache and split. Routed to `file.assigned.<edge>`."""

    event_type: Literal["file.assigned"] = "file.assigned"
    work: FileWork

    def routing_key(self) -> str:
        return f"{self.event_type}.{self.work.edge}"


class FileCached(Event):
    """The edge's precacher holds a verified copy. Routed to `file.cached.<edge>`."""

    event_type: Literal["file.cached"] = "file.cached"
    work: FileWork
    cache_path: str

    def routing_key(self) -> str:
        return f"{self.event_type}.{self.work.edge}"


class RangeInfo(Contract):
    """One event-range file in the object store."""

    first_event: int = Field(ge=1, description="1-based position in the source file")
    last_event: int = Field(ge=1, description="1-based, inclusive")
    key: str
    size: int = Field(gt=0)
    adler32: str

    @field_validator("adler32")
    @classmethod
    def _adler32(cls, value: str) -> str:
        # Compared with what the pilot computes after download, so normalised like a file's.
        try:
            return normalise_adler32(value)
        except ValueError as exc:
            raise ValueError(f"adler32 {value!r} is not hexadecimal") from exc

    @model_validator(mode="after")
    def _ordered(self) -> RangeInfo:
        if self.last_event < self.first_event:
            raise ValueError("last_event must not be before first_event")
        return self


class SplitDone(Event):
    """The edge's splitter uploaded every range of a file. Routed to `split.done.<edge>`."""

    event_type: Literal["split.done"] = "split.done"
    work: FileWork
    ranges: list[RangeInfo] = Field(min_length=1)

    def routing_key(self) -> str:
        return f"{self.event_type}.{self.work.edge}"


class FileFailed(Event):
    """An edge could not cache or split a file. Routed to `file.failed.<edge>`."""

    event_type: Literal["file.failed"] = "file.failed"
    work: FileWork
    stage: Literal["precache", "split"]
    reason: str
    #: False when the file itself is bad (checksum of every source wrong, unsplittable type).
    retryable: bool

    def routing_key(self) -> str:
        return f"{self.event_type}.{self.work.edge}"


class EdgeHeartbeat(Event):
    """An edge is alive: its place, its space and its load. Emitted every few seconds."""

    event_type: Literal["edge.heartbeat"] = "edge.heartbeat"
    edge: str
    site: str
    region: str
    url: str | None = None
    quota_bytes: int = Field(ge=0)
    free_bytes: int = Field(ge=0)
    queued: int = Field(ge=0)
    load: float = Field(ge=0)
    version: str


class RequestReady(Event):
    """Every file of the request is split. Emitted by the head; consumed by the notifier."""

    event_type: Literal["request.ready"] = "request.ready"
    request_id: str
    dataset: str
    idempotency_key: str
    n_files: int
    n_ranges: int


class RequestFailed(Event):
    """A file of the request failed for good. Emitted by the head; consumed by the notifier."""

    event_type: Literal["request.failed"] = "request.failed"
    request_id: str
    dataset: str
    idempotency_key: str
    reason: str


AnyEvent = Annotated[
    RequestCreated
    | FileAssigned
    | FileCached
    | SplitDone
    | FileFailed
    | EdgeHeartbeat
    | RequestReady
    | RequestFailed,
    Field(discriminator="event_type"),
]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(body: bytes | str) -> AnyEvent:
    """Parse any ESS event; raises pydantic.ValidationError with the reason."""
    return EVENT_ADAPTER.validate_json(body)
