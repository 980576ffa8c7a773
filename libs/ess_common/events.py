"""The event contracts: every message ESS puts on its exchange, in one place.

Each event is a frozen pydantic model whose literal `event_type` is the routing key. Events
that concern one edge's work (`EdgeEvent`) are routed to `<event_type>.<edge>` so that the
edge's own queues receive exactly its work while the head binds `<event_type>.*`. Each class
knows the pattern a queue binds to receive it (`binding`): queues are bound from the event
types their handlers take (`ess_common.messaging.handlers.Routes`), never from strings.
`parse_event` reads any of them; an unknown `schema_version` or `event_type` is refused.

Versioning: `schema_version` changes only when a change would break a reader (a field removed,
renamed or given a new meaning). Optional fields are added within a version; readers refuse
fields they do not know (`extra="forbid"`), so a producer sends a new field only once its
consumers know it. A message of a version this code does not support is refused with
the reason (it is dead-lettered from the bus; the head API answers 422).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from ess_common.checksums import normalise_adler32
from ess_common.source_urls import SOURCE_SCHEMES

SCHEMA_VERSION: Literal[1] = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
#: Event positions and counts are 32-bit in the bookkeeping (and in PanDA); sizes 64-bit.
MAX_EVENT = 2**31 - 1
MAX_SIZE = 2**63 - 1

#: Rucio's scope and name alphabet: no slashes, no "..", nothing that escapes a key prefix.
#: Matched whole (`fullmatch`): a `$` would let a final newline through.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")


_NAME_WORD = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}"
_ADLER32 = r"^\s*(0[xX])?[0-9a-fA-F]{1,8}\s*$"


def _documented(pattern: str) -> JsonDict:
    # The pattern is for the published schema (and for clients generating valid input); the
    # validators enforce it with a reason that names the rule, and the '..' rule besides.
    return {"pattern": pattern}


def _check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must match ^{_NAME.pattern}$ without '..'")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def _supported_version(value: object) -> object:
    # Before the literal check, so that the refusal names the version and what is supported
    # instead of pydantic's "Input should be 1".
    if isinstance(value, bool):
        raise ValueError("schema_version must be an integer, not a boolean")
    known = value in SUPPORTED_SCHEMA_VERSIONS
    if isinstance(value, int) and not known:
        supported = ", ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))
        raise ValueError(f"unsupported schema_version {value}; supported: {supported}")
    return value


SchemaVersion = Annotated[Literal[1], BeforeValidator(_supported_version)]


def _storable(value: object) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError("must be valid Unicode (a lone surrogate was given)") from exc
    elif isinstance(value, list | tuple):
        for item in value:
            if not isinstance(item, Contract):
                _storable(item)


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="after")
    def _text_is_storable(self) -> Self:
        # JSON may carry text that no database column (nor UTF-8) can hold: refused here,
        # with the field named, rather than failing the insert. One pass over the fields per
        # model: a check per field cost a call from the validator each, the most of parsing
        # a result of hundreds of ranges. Nested contracts checked their own.
        for name, value in self.__dict__.items():
            try:
                _storable(value)
            except ValueError as exc:
                raise ValueError(f"{name} {exc}") from None
        return self


class Event(Contract):
    """The envelope every event carries."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)
    #: The request the event belongs to, for following one request through the logs.
    correlation_id: str | None = None
    schema_version: SchemaVersion = SCHEMA_VERSION

    def routing_key(self) -> str:
        return self.type_name()

    def caused_by(self, cause: Event) -> Self:
        """This event as the outcome of handling `cause`: its id is derived from the cause's
        id and this event's type, so that handling one event twice (delivery is at least
        once) publishes the same event twice, which a consumer and a trace can tell apart from
        a second outcome."""
        derived = uuid.uuid5(cause.event_id, self.type_name())
        return self.model_copy(update={"event_id": derived})

    @classmethod
    def type_name(cls) -> str:
        """The event's type (its `event_type`), known from its class."""
        return str(cls.model_fields["event_type"].default)

    @classmethod
    def binding(cls, edge: str | None = None) -> str:
        """The routing-key pattern a queue is bound to for this event (`edge` only counts for
        an `EdgeEvent`)."""
        return cls.type_name()


class EdgeEvent(Event):
    """An event of one edge's work, routed to `<event_type>.<edge>`: the edge's own queue is
    bound to its own key, the head's to those of every edge."""

    def routed_edge(self) -> str:
        raise NotImplementedError

    def routing_key(self) -> str:
        return f"{self.type_name()}.{self.routed_edge()}"

    @classmethod
    def binding(cls, edge: str | None = None) -> str:
        return f"{cls.type_name()}.{edge or '*'}"


#: What PanDA sends is taken as its JSON types say: "12" or true is no event count.
_STRICT = ConfigDict(strict=True)


def _json_integer(value: object) -> object:
    # JSON (and JSON Schema's "integer") has no integers apart from numbers: 12.0 is 12 there,
    # while strict validation would refuse it. Text, booleans and fractions stay refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer as JSON writes it (12 or 12.0), in a strict model.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class Replica(Contract):
    """Where data management says a copy of the file sits, for placing work near it."""

    model_config = _STRICT

    site: str
    region: str = ""
    #: The catalogue's name of the storage holding the copy (a Rucio RSE), when known.
    rse: str = ""
    #: The URLs (of `DatasetFile.sources`) that read this copy: an edge reads the copies at its
    #: own site first.
    sources: list[str] = []


class DatasetFile(Contract):
    """One input file of a dataset, as data management describes it."""

    model_config = _STRICT

    scope: str = Field(json_schema_extra=_documented(f"^{_NAME_WORD}$"))
    lfn: str = Field(json_schema_extra=_documented(f"^{_NAME_WORD}$"))
    guid: str = Field(default="", max_length=64)
    n_events: JsonInt = Field(gt=0, le=MAX_EVENT)
    size: JsonInt = Field(gt=0, le=MAX_SIZE)
    adler32: str = Field(json_schema_extra=_documented(_ADLER32))
    #: Where the file can be read: file://, http(s)://, dav(s):// (WebDAV), s3://bucket/key,
    #: root://.
    sources: list[
        Annotated[str, Field(json_schema_extra=_documented("^(file|https?|davs?|s3|root)://"))]
    ] = Field(min_length=1)
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
            if not url.startswith(SOURCE_SCHEMES):
                raise ValueError(f"source {url!r} must start with one of {SOURCE_SCHEMES}")
        return value


class Notify(Contract):
    """How PanDA wants to hear that the request is ready."""

    model_config = _STRICT

    #: Publish `request.ready` on the PanDA-facing exchange.
    message: bool = True
    #: POST the outcome here, with retries, once.
    callback_url: str | None = Field(default=None, pattern=r"^https?://")
    #: Also announce each file as soon as its ranges are ready (`file.ready`).
    files: bool = False


_EXAMPLE_FILE: JsonDict = {
    "scope": "mc15_13TeV",
    "lfn": "EVNT.08716373._000060.pool.root.1",
    "guid": "2FC641BA-9A8C-4D3B-9A0D-1B2C3D4E5F60",
    "n_events": 5000,
    "size": 1395749203,
    "adler32": "0e6fa8d1",
    "sources": ["root://eosatlas.cern.ch//eos/atlas/mc15_13TeV/EVNT.08716373._000060.pool.root.1"],
    "replicas": [{"site": "CERN-PROD", "region": "europe"}],
}
_EXAMPLE_SPEC: JsonDict = {
    "schema_version": 1,
    "dataset": "mc15_13TeV:mc15_13TeV.361106.PowhegPythia8EvtGen_Zee.evgen.EVNT.e3601",
    "idempotency_key": "jedi-12164365",
    "events_per_range": 100,
    "priority": 500,
    "notify": {
        "message": True,
        "callback_url": "https://panda.example.org/ess/callback",
        "files": False,
    },
    "files": [_EXAMPLE_FILE],
}


class RequestSpec(Contract):
    """What PanDA asks for: a dataset prepared at a granularity."""

    model_config = ConfigDict(strict=True, json_schema_extra={"examples": [_EXAMPLE_SPEC]})

    #: Not part of what identifies the request (left out of its digest and of dumps): the
    #: version is that of the message carrying it.
    schema_version: SchemaVersion = Field(
        default=SCHEMA_VERSION,
        exclude=True,
        description="version of this message's schema; an unsupported one is refused",
    )
    dataset: str = Field(
        description="`scope:name` of the dataset",
        json_schema_extra=_documented(f"^{_NAME_WORD}:{_NAME_WORD}$"),
    )
    #: The JEDI task id or any key: a resubmission with the same key is the same request.
    idempotency_key: str = Field(min_length=1, max_length=200)
    events_per_range: JsonInt = Field(gt=0, le=10_000_000)
    priority: JsonInt = Field(default=0, ge=-1000, le=1000)
    notify: Notify = Notify()
    files: list[DatasetFile] = Field(
        default=[],
        description="the dataset's files; left out (or empty), they are resolved in the data "
        "management catalogue (Rucio): a dataset unknown there, empty, or with a file "
        "without an event count fails the request at once, with the reason",
    )
    prepare: bool = Field(
        default=True,
        description="false: nothing is split ahead; the dataset is recorded (and ready at "
        "once) for pilots whose ranges edges split on demand",
    )

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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_type": "request.created",
                    "event_id": "5b8f1c8e-2f4a-4c4e-9a57-0c6f3f0e9b21",
                    "occurred_at": "2026-11-25T10:00:00Z",
                    "correlation_id": None,
                    **_EXAMPLE_SPEC,
                }
            ]
        }
    )

    event_type: Literal["request.created"] = "request.created"
    #: Redeclared so that the envelope's version is part of the message (the spec's is not).
    schema_version: SchemaVersion = SCHEMA_VERSION


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
    #: The request's dataset (`scope:name`), for an edge that subscribes its site to it.
    dataset: str = ""


class FileAssigned(EdgeEvent):
    """The broker gives an edge a file to pre-cache and split. Routed to `file.assigned.<edge>`."""

    event_type: Literal["file.assigned"] = "file.assigned"
    work: FileWork

    def routed_edge(self) -> str:
        return self.work.edge


class FileCached(EdgeEvent):
    """The edge's precacher holds a verified copy. Routed to `file.cached.<edge>`."""

    event_type: Literal["file.cached"] = "file.cached"
    work: FileWork
    cache_path: str

    def routed_edge(self) -> str:
        return self.work.edge


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


class SplitDone(EdgeEvent):
    """The edge's splitter uploaded every range of a file. Routed to `split.done.<edge>`."""

    event_type: Literal["split.done"] = "split.done"
    work: FileWork
    ranges: list[RangeInfo] = Field(min_length=1)

    def routed_edge(self) -> str:
        return self.work.edge


class FileFailed(EdgeEvent):
    """An edge could not cache or split a file. Routed to `file.failed.<edge>`."""

    event_type: Literal["file.failed"] = "file.failed"
    work: FileWork
    stage: Literal["precache", "split"]
    reason: str
    #: False when the file itself is bad (checksum of every source wrong, unsplittable type).
    retryable: bool

    def routed_edge(self) -> str:
        return self.work.edge


class RangeSplitOnDemand(EdgeEvent):
    """An edge split one event range a pilot asked for and no request prepared, and uploaded
    it. Routed to `range.split.<edge>`; the broker records it so that later lookups, at the
    head and at every edge, find it."""

    event_type: Literal["range.split"] = "range.split"
    edge: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    scope: str
    lfn: str
    range: RangeInfo

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        return _check_name(value, "scope")

    @field_validator("lfn")
    @classmethod
    def _lfn(cls, value: str) -> str:
        return _check_name(value, "LFN")

    def routed_edge(self) -> str:
        return self.edge


class EdgeHeartbeat(Event):
    """An edge is alive: its place, its space and its load. Emitted every few seconds."""

    event_type: Literal["edge.heartbeat"] = "edge.heartbeat"
    edge: str
    site: str
    region: str
    url: str | None = None
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    quota_bytes: int = Field(ge=0)
    #: The quota less what the cache holds and has reserved.
    free_bytes: int = Field(ge=0)
    #: Of what the cache holds, what it would evict to make room (nothing pins it).
    evictable_bytes: int = Field(default=0, ge=0)
    queued: int = Field(ge=0)
    load: float = Field(ge=0)
    version: str
    #: On-demand splits the edge runs at once, and how many run now.
    on_demand_slots: int | None = Field(default=None, ge=0)
    on_demand_busy: int | None = Field(default=None, ge=0)


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


class RequestCancelled(Event):
    """The request was cancelled (head API): its unfinished files will not be worked on.

    Emitted by the head; consumed by the notifier (to tell PanDA) and by edges that may drop
    the request's queued work.
    """

    event_type: Literal["request.cancelled"] = "request.cancelled"
    request_id: str
    dataset: str
    idempotency_key: str
    reason: str


class RequestStalled(Event):
    """The request made no progress for the broker's `stuck_after_s`: its unfinished files are
    sent out again (drive `drive` of `max_drives`; one more and it fails). Emitted by the
    broker's stuck sweep; consumed by the notifier, which tells PanDA's message targets."""

    event_type: Literal["request.stalled"] = "request.stalled"
    request_id: str
    dataset: str
    idempotency_key: str
    reason: str
    drive: int = Field(ge=1)
    max_drives: int = Field(ge=1)


class FileReady(Event):
    """Every range of one file of the request is in the object store, before the whole request
    may be. Emitted by the head's bookkeeping when the request asked `notify.files`; consumed
    by the notifier."""

    event_type: Literal["file.ready"] = "file.ready"
    request_id: str
    dataset: str
    idempotency_key: str
    file_id: int
    scope: str
    lfn: str
    n_events: int
    n_ranges: int


AnyEvent = Annotated[
    RequestCreated
    | FileAssigned
    | FileCached
    | SplitDone
    | FileFailed
    | RangeSplitOnDemand
    | EdgeHeartbeat
    | RequestReady
    | RequestFailed
    | RequestCancelled
    | RequestStalled
    | FileReady,
    Field(discriminator="event_type"),
]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)

#: What the notifier tells PanDA about.
NOTICE_EVENTS: tuple[type[Event], ...] = (
    RequestReady,
    RequestFailed,
    RequestCancelled,
    RequestStalled,
    FileReady,
)


def request_created_schema() -> dict[str, Any]:
    """The JSON Schema of `request.created` as published (API, `ess schema`, docs): with an
    example and the `schema_version`s this code accepts."""
    return {
        **RequestCreated.model_json_schema(),
        "x-supported-versions": list(SUPPORTED_SCHEMA_VERSIONS),
    }


def parse_event(body: bytes | str) -> AnyEvent:
    """Parse any ESS event; raises pydantic.ValidationError with the reason."""
    return EVENT_ADAPTER.validate_json(body)
