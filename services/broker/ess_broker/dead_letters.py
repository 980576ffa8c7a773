"""Recording dead letters: every message any ESS queue gave up on, with its reason, and on the
request it belongs to when that can be told.

Whatever the bytes of a body or a header, the row is written: text PostgreSQL cannot hold (a
NUL byte, invalid UTF-8) is escaped (`\x00`, `\xff`), and only a UUID is taken for the request
a body names. A refused message (unsigned or forged,
`x-ess-refused`) is recorded only: what it says, a request it names, is not believed, so no
request is touched.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db import history
from ess_common.db.models import DeadLetter, Request, RequestEventKind
from ess_common.messaging.bus import (
    QUEUE_HEADER,
    REASON_HEADER,
    REFUSED_HEADER,
    ROUTING_KEY_HEADER,
    Delivery,
)

log = structlog.get_logger("ess.dead_letters")


def escaped(value: object, limit: int) -> str:
    """Text any database holds: invalid UTF-8 and NUL bytes escaped, at most `limit` long."""
    # AMQP carries bytes in a header as a byte array: text, not its Python representation.
    text = (
        bytes(value).decode("utf-8", errors="backslashreplace")
        if isinstance(value, bytes | bytearray)
        else str(value)
    )
    # A lone surrogate (a header decoded with surrogateescape) is no UTF-8 either.
    text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")[:limit]


def _refused(delivery: Delivery) -> bool:
    return delivery.headers.get(REFUSED_HEADER) in ("1", b"1")


def _request_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for candidate in (
        data.get("request_id"),
        (data.get("work") or {}).get("request_id") if isinstance(data.get("work"), dict) else None,
        data.get("correlation_id"),
    ):
        # Request ids are UUIDs: anything else names no request, and may be text no
        # database takes (a NUL, a lone surrogate), which must not stop the recording.
        if isinstance(candidate, str) and len(candidate) <= 36:
            try:
                return str(uuid.UUID(candidate))
            except ValueError:
                continue
    return None


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value or "")


def _server_reason(headers: Mapping[str, Any]) -> str | None:
    """The reason RabbitMQ gave when it dead-lettered the message itself (a quorum queue's
    delivery limit reached: its consumers died holding it each time; or it expired)."""
    why = _text(headers.get("x-first-death-reason"))
    if not why:
        return None
    if why == "delivery_limit":
        return "dead-lettered by RabbitMQ: delivered too often without an acknowledgement"
    return f"dead-lettered by RabbitMQ: {why}"


async def record_dead_letter(session: AsyncSession, delivery: Delivery) -> None:
    headers = delivery.headers
    reason = escaped(
        headers.get(REASON_HEADER) or _server_reason(headers) or "no reason given", 4000
    )
    queue = escaped(
        headers.get(QUEUE_HEADER) or headers.get("x-first-death-queue") or delivery.routing_key,
        255,
    )
    refused = _refused(delivery)
    request_id = None if refused else _request_id(delivery.body)
    request = await session.get(Request, request_id) if request_id else None
    session.add(
        DeadLetter(
            queue=queue,
            routing_key=escaped(headers.get(ROUTING_KEY_HEADER) or "", 255),
            reason=reason,
            request_id=request.id if request else None,
            body=escaped(delivery.body, 100_000),
        )
    )
    if request is not None:
        request.error = f"dead letter from {queue}: {reason}"[:4000]
        history.record(
            session, request.id, RequestEventKind.DEAD_LETTER, detail=f"{queue}: {reason}"
        )
    log.warning(
        "dead_letter.recorded", queue=queue, reason=reason, request_id=request_id, refused=refused
    )
