"""Hostile messages for every queue the ESS services consume, and what each must become.

`consumed` reads the queues and their bindings from the services' own declarations (the
broker's, the notifier's, an edge's), so that a key a service starts to consume without a row
in `TARGETS` fails `test_every_consumed_key_has_poison`. Each target names the key a message is
published on, how the consumer expects it signed, and a well-formed message naming a request,
file or edge that does not exist.

The kinds of poison (`poison_messages`): malformed JSON, JSON of another schema, a body of
5 MB, NUL bytes and invalid UTF-8, malformed ESS envelope headers (`x-ess-attempt` not an
integer or negative, `x-ess-outages` not an integer, `x-ess-routing-key` not text), other
`x-ess-*` headers of the wrong type, and well-formed messages about unknown ids, sent twice.
Each carries a marker in its first bytes, so that its dead letter is found by its body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from ess_broker.service import consumed_queues as broker_queues
from ess_common import enrollment
from ess_common.edge_work import edge_queues
from ess_common.events import (
    DatasetFile,
    EdgeHeartbeat,
    Event,
    FileAssigned,
    FileCached,
    FileFailed,
    FileReady,
    FileWork,
    RangeInfo,
    RangeSplitOnDemand,
    RequestCancelled,
    RequestCreated,
    RequestFailed,
    RequestReady,
    RequestStalled,
    SplitDone,
)
from ess_common.messaging.bus import (
    ATTEMPT_HEADER,
    EDGE_SIGNATURE_HEADER,
    OUTAGES_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    REFUSED_HEADER,
    ROUTING_KEY_HEADER,
)
from ess_common.store.base import on_demand_key
from ess_notifier.service import consumed_queues as notifier_queues

EDGE_PLACEHOLDER = "{edge}"
BIG_BODY_BYTES = 5 * 1024 * 1024
Signing = Literal["none", "edge", "head"]


def consumed(exchange: str, edges: tuple[str, ...]) -> dict[str, list[str]]:
    """Every queue the services of a deployment consume, with its bindings."""
    queues = {**broker_queues(exchange), **notifier_queues(exchange)}
    for edge in edges:
        queues.update(edge_queues(exchange, edge))
    return queues


def row_of(exchange: str, edge_names: tuple[str, ...], queue: str, binding: str) -> tuple[str, str]:
    """The `TARGETS` row of a consumed queue and binding: the exchange's prefix dropped, an
    edge's name written `{edge}`."""
    name = queue.removeprefix(f"{exchange}.")
    for edge in edge_names:
        name = name.replace(f".{edge}.", f".{EDGE_PLACEHOLDER}.")
        if binding.endswith(f".{edge}"):
            binding = binding.removesuffix(edge) + EDGE_PLACEHOLDER
    return name, binding


def _work(marker: str, edge: str) -> FileWork:
    return FileWork(
        request_id=str(uuid.uuid4()),
        file_id=900_000_000 + int(marker[-6:], 16) % 1_000_000,
        attempt=1,
        edge=edge,
        file=DatasetFile(
            scope="mc16_13TeV",
            lfn=f"EVNT.{marker}.pool.root.1",
            n_events=10,
            size=100,
            adler32="00000001",
            sources=["https://storage.example.org/nowhere"],
        ),
        events_per_range=5,
    )


def _range(marker: str, first: int = 1, last: int = 5, key: str = "") -> RangeInfo:
    return RangeInfo(
        first_event=first, last_event=last, key=key or f"nowhere/{marker}", size=10, adler32="1"
    )


def _notice(marker: str) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "dataset": "mc16_13TeV:nothing",
        "idempotency_key": marker,
        "correlation_id": marker,
    }


#: A well-formed message about ids nobody knows, by row (marker, edge) -> event.
Unknown = Callable[[str, str], Event]


@dataclass(frozen=True)
class Target:
    """How a consumed binding is reached."""

    #: The routing key published on (`{edge}` stands for the edge's name).
    routing_key: str
    unknown: Unknown
    signed: Signing = "none"
    #: Published on the dead-letter exchange (the audit queue records every dead letter).
    dead_exchange: bool = False

    def key(self, edge: str) -> str:
        return self.routing_key.replace(EDGE_PLACEHOLDER, edge)


def _created(marker: str, edge: str) -> Event:
    # No files and no catalogue to find them in: nothing is known of this dataset.
    return RequestCreated(
        dataset=f"mc16_13TeV:unknown.{marker}",
        idempotency_key=marker,
        events_per_range=10,
        correlation_id=marker,
    )


def _heartbeat(marker: str, edge: str) -> Event:
    return EdgeHeartbeat(
        edge=f"ghost-{marker[-8:]}",
        site="nowhere",
        region="nowhere",
        quota_bytes=1,
        free_bytes=1,
        queued=0,
        load=0.0,
        version="poison",
        correlation_id=marker,
    )


def _cached(marker: str, edge: str) -> Event:
    return FileCached(work=_work(marker, edge), cache_path="/nowhere", correlation_id=marker)


TARGETS: dict[tuple[str, str], Target] = {
    ("broker.requests", "request.created"): Target("request.created", _created),
    ("broker.heartbeats", "edge.heartbeat"): Target("edge.heartbeat", _heartbeat, "edge"),
    ("broker.results", "file.cached.*"): Target(f"file.cached.{EDGE_PLACEHOLDER}", _cached, "edge"),
    ("broker.results", "split.done.*"): Target(
        f"split.done.{EDGE_PLACEHOLDER}",
        lambda m, e: SplitDone(
            work=_work(m, e), ranges=[_range(m), _range(m, 6, 10)], correlation_id=m
        ),
        "edge",
    ),
    ("broker.results", "file.failed.*"): Target(
        f"file.failed.{EDGE_PLACEHOLDER}",
        lambda m, e: FileFailed(
            work=_work(m, e), stage="split", reason="poison", retryable=False, correlation_id=m
        ),
        "edge",
    ),
    ("broker.results", "range.split.*"): Target(
        f"range.split.{EDGE_PLACEHOLDER}",
        lambda m, e: RangeSplitOnDemand(
            edge=e,
            scope="mc16_13TeV",
            lfn=f"EVNT.{m}.pool.root.1",
            range=_range(m, key=on_demand_key("mc16_13TeV", f"EVNT.{m}.pool.root.1", 1, 5)),
            correlation_id=m,
        ),
        "edge",
    ),
    ("dead.audit", "#"): Target(
        "poison.dead", lambda m, e: RequestReady(n_files=1, n_ranges=1, **_notice(m)), "none", True
    ),
    ("notifier", "request.ready"): Target(
        "request.ready", lambda m, e: RequestReady(n_files=1, n_ranges=1, **_notice(m))
    ),
    ("notifier", "request.failed"): Target(
        "request.failed", lambda m, e: RequestFailed(reason="poison", **_notice(m))
    ),
    ("notifier", "request.cancelled"): Target(
        "request.cancelled", lambda m, e: RequestCancelled(reason="poison", **_notice(m))
    ),
    ("notifier", "request.stalled"): Target(
        "request.stalled",
        lambda m, e: RequestStalled(reason="poison", drive=1, max_drives=3, **_notice(m)),
    ),
    ("notifier", "file.ready"): Target(
        "file.ready",
        lambda m, e: FileReady(
            file_id=1, scope="mc16_13TeV", lfn="EVNT.x", n_events=1, n_ranges=1, **_notice(m)
        ),
    ),
    (f"edge.{EDGE_PLACEHOLDER}.assigned", f"file.assigned.{EDGE_PLACEHOLDER}"): Target(
        f"file.assigned.{EDGE_PLACEHOLDER}",
        lambda m, e: FileAssigned(work=_work(m, e), correlation_id=m),
        "head",
    ),
    (f"edge.{EDGE_PLACEHOLDER}.cached", f"file.cached.{EDGE_PLACEHOLDER}"): Target(
        f"file.cached.{EDGE_PLACEHOLDER}", _cached, "edge"
    ),
    (f"edge.{EDGE_PLACEHOLDER}.cancelled", "request.cancelled"): Target(
        "request.cancelled", lambda m, e: RequestCancelled(reason="poison", **_notice(m))
    ),
}


class Kind(StrEnum):
    MALFORMED_JSON = "malformed JSON"
    WRONG_SCHEMA = "JSON of another schema"
    BIG = "a 5 MB body"
    NUL_AND_INVALID_UTF8 = "NUL bytes and invalid UTF-8"
    BAD_ENVELOPE = "malformed x-ess envelope header"
    BAD_OTHER_HEADER = "other x-ess header of the wrong type"
    UNKNOWN_IDS = "unknown ids"
    #: Well-formed but for text no database holds, written as JSON escapes (`\u0000`, a lone
    #: surrogate).
    ESCAPED_NUL = "NUL and a lone surrogate as JSON escapes"
    #: Well-formed but for counts and ids past any database integer.
    HUGE_NUMBERS = "numbers past 64 bits"


#: Kinds that must be dead-lettered at once (never retried as if they might pass later).
MUST_DIE = frozenset(
    {
        Kind.MALFORMED_JSON,
        Kind.WRONG_SCHEMA,
        Kind.BIG,
        Kind.NUL_AND_INVALID_UTF8,
        Kind.BAD_ENVELOPE,
        Kind.ESCAPED_NUL,
    }
)
_NUMBERS = frozenset(
    {
        "file_id",
        "attempt",
        "n_events",
        "size",
        "priority",
        "events_per_range",
        "n_files",
        "n_ranges",
        "quota_bytes",
        "free_bytes",
        "queued",
        "drive",
        "max_drives",
        "first_event",
        "last_event",
    }
)


def _huge(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: 2**63 + 7 if k in _NUMBERS else _huge(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_huge(v) for v in value]
    return value


@dataclass(frozen=True)
class Poison:
    kind: Kind
    marker: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    dead_exchange: bool = False
    #: What it is in a failure's message.
    detail: str = ""


def _signed(
    body: bytes, signing: Signing, token: str, headers: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The headers of `body` as its consumer expects them signed, then `headers` over them."""
    out: dict[str, Any] = {}
    key = enrollment.key_of(token)
    if signing == "edge":
        out[EDGE_SIGNATURE_HEADER] = enrollment.sign(enrollment.upward_key(key), body)
    elif signing == "head":
        out[enrollment.HEAD_SIGNATURE_HEADER] = enrollment.sign(enrollment.downward_key(key), body)
    out.update(headers or {})
    return out


_BAD_ENVELOPES: tuple[dict[str, Any], ...] = (
    {ATTEMPT_HEADER: "three"},
    {ATTEMPT_HEADER: -2},
    {ATTEMPT_HEADER: True},
    {OUTAGES_HEADER: "many"},
    {OUTAGES_HEADER: -1},
    {ROUTING_KEY_HEADER: 12},
    {ATTEMPT_HEADER: bytearray(b"\xff")},
)
_BAD_OTHERS: tuple[dict[str, Any], ...] = (
    {EDGE_SIGNATURE_HEADER: 42},
    {enrollment.HEAD_SIGNATURE_HEADER: ["not", "text"]},
    {REASON_HEADER: 7, QUEUE_HEADER: bytearray(b"\xff\xfe"), REFUSED_HEADER: 1.5},
)


def poison_messages(target: Target, edge: str, token: str) -> list[Poison]:
    """Every kind of poison for one target, each with a marker of its own."""
    made: list[Poison] = []
    key = target.key(edge)

    def add(kind: Kind, body: bytes, headers: dict[str, Any], marker: str, detail: str) -> None:
        made.append(
            Poison(kind, marker, key, body, headers, target.dead_exchange, f"{key}: {detail}")
        )

    def marker() -> str:
        return f"poison-{uuid.uuid4().hex[:12]}"

    m = marker()
    body = b'{"poison": "' + m.encode() + b'", "work": {"edge": "' + edge.encode() + b'", '
    add(Kind.MALFORMED_JSON, body, _signed(body, target.signed, token), m, "truncated JSON")
    m = marker()
    wrong = {"poison": m, "event_type": key, "work": 5, "edge": edge, "ranges": "all"}
    body = json.dumps(wrong).encode()
    add(Kind.WRONG_SCHEMA, body, _signed(body, target.signed, token), m, "wrong schema")
    m = marker()
    body = (
        b'{"poison": "'
        + m.encode()
        + b'", "edge": "'
        + edge.encode()
        + b'", "pad": "'
        + b"x" * BIG_BODY_BYTES
        + b'"}'
    )
    add(Kind.BIG, body, _signed(body, target.signed, token), m, "5 MB")
    m = marker()
    body = b'{"poison": "' + m.encode() + b'\x00\xff\xfe", "edge": "' + edge.encode() + b'\x00"}'
    add(Kind.NUL_AND_INVALID_UTF8, body, _signed(body, target.signed, token), m, "NUL, \\xff")
    for bad in _BAD_ENVELOPES:
        m = marker()
        body = target.unknown(m, edge).model_dump_json().encode()
        add(Kind.BAD_ENVELOPE, body, _signed(body, target.signed, token, bad), m, repr(bad))
    for bad in _BAD_OTHERS:
        m = marker()
        body = target.unknown(m, edge).model_dump_json().encode()
        add(Kind.BAD_OTHER_HEADER, body, _signed(body, target.signed, token, bad), m, repr(bad))
    for escapes in ("\\u0000", "\\u0000\\ud800"):
        m = marker()
        escaped = target.unknown(m, edge).model_dump_json().replace(m, m + escapes, 1)
        body = escaped.encode()
        add(Kind.ESCAPED_NUL, body, _signed(body, target.signed, token), m, escapes)
    m = marker()
    body = json.dumps(_huge(json.loads(target.unknown(m, edge).model_dump_json()))).encode()
    add(Kind.HUGE_NUMBERS, body, _signed(body, target.signed, token), m, "2**63 + 7")
    m = marker()
    body = target.unknown(m, edge).model_dump_json().encode()
    headers = _signed(body, target.signed, token)
    # Twice: the second must change nothing the first did not.
    add(Kind.UNKNOWN_IDS, body, headers, m, "unknown ids")
    add(Kind.UNKNOWN_IDS, body, headers, m, "unknown ids, again")
    return made
