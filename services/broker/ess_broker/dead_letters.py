"""Recording dead letters: every message any ESS queue gave up on, with its reason, and on the
request it belongs to when that can be told."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db import history
from ess_common.db.models import DeadLetter, Request, RequestEventKind
from ess_common.messaging.bus import QUEUE_HEADER, REASON_HEADER, ROUTING_KEY_HEADER, Delivery

log = structlog.get_logger("ess.dead_letters")


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
        if isinstance(candidate, str) and len(candidate) <= 36:
            return candidate
    return None


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


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
    reason = _text(headers.get(REASON_HEADER)) or _server_reason(headers) or "no reason given"
    queue = (
        _text(headers.get(QUEUE_HEADER))
        or _text(headers.get("x-first-death-queue"))
        or delivery.routing_key
    )
    request_id = _request_id(delivery.body)
    request = await session.get(Request, request_id) if request_id else None
    session.add(
        DeadLetter(
            queue=queue,
            routing_key=str(delivery.headers.get(ROUTING_KEY_HEADER) or ""),
            reason=reason,
            request_id=request.id if request else None,
            body=delivery.body.decode("utf-8", errors="replace")[:100_000],
        )
    )
    if request is not None:
        request.error = f"dead letter from {queue}: {reason}"[:4000]
        history.record(
            session, request.id, RequestEventKind.DEAD_LETTER, detail=f"{queue}: {reason}"
        )
    log.warning("dead_letter.recorded", queue=queue, reason=reason, request_id=request_id)
