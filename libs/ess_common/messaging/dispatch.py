"""The one place that decides what becomes of a delivery: ack, retry later, or dead-letter.

A handler returns normally (ack), raises PermanentError or a validation error (dead-letter at
once, with the reason), or raises anything else (retry with backoff until the attempts run
out, then dead-letter). Nothing is dropped silently.

Each delivery is handled in a span of the trace its message carries (`ess_common.tracing`),
with the queue, the trace and (once the handler has read it) the request in the log context;
the outcome is counted here (`ess_messages_handled_total`, `ess_message_retries_total`,
`ess_dead_letters_total` by the kind of reason).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from enum import StrEnum

import structlog
from pydantic import ValidationError

from ess_common import metrics, tracing
from ess_common.errors import PermanentError
from ess_common.messaging.bus import Delivery, Handler

log = structlog.get_logger("ess.messaging")


class Verdict(StrEnum):
    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str = ""
    delay_s: float = 0.0


def backoff(attempt: int, base_s: float, cap_s: float = 60.0) -> float:
    return float(min(cap_s, base_s * 2 ** (attempt - 1)))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return f"invalid message: {problems}"
    return f"{type(exc).__name__}: {exc}"


def reason_kind(exc: BaseException) -> str:
    """The kind of a dead letter's reason, for a metric's label: its full text is recorded."""
    return "invalid_message" if isinstance(exc, ValidationError) else type(exc).__name__


async def dispatch(
    delivery: Delivery, handler: Handler, *, max_attempts: int, backoff_s: float
) -> Outcome:
    bound = structlog.contextvars.get_contextvars()
    structlog.contextvars.bind_contextvars(
        queue=delivery.queue, routing_key=delivery.routing_key, attempt=delivery.attempt
    )
    started = time.perf_counter()
    try:
        with tracing.consuming(
            delivery.routing_key, delivery.queue, delivery.headers, delivery.attempt
        ) as span:
            outcome = await _handle(delivery, handler, max_attempts, backoff_s)
            if outcome.verdict is not Verdict.ACK:
                tracing.failed(span, outcome.reason)
            return outcome
    finally:
        metrics.MESSAGE_SECONDS.labels(delivery.queue).observe(time.perf_counter() - started)
        # What the handler bound for this message (its request) goes with it.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**bound)


async def _handle(
    delivery: Delivery, handler: Handler, max_attempts: int, backoff_s: float
) -> Outcome:
    try:
        await handler(delivery)
    except (PermanentError, ValidationError) as exc:
        reason = _describe(exc)
        log.warning("message.dead_lettered", reason=reason)
        metrics.DEAD_LETTERS.labels(delivery.queue, reason_kind(exc)).inc()
        return Outcome(Verdict.DEAD, reason)
    except Exception as exc:
        reason = _describe(exc)
        if delivery.attempt >= max_attempts:
            log.error("message.retries_exhausted", reason=reason)
            metrics.DEAD_LETTERS.labels(delivery.queue, "retries_exhausted").inc()
            return Outcome(Verdict.DEAD, f"after {delivery.attempt} attempts: {reason}")
        delay = backoff(delivery.attempt, backoff_s)
        log.warning(
            "message.retry", reason=reason, delay_s=delay, trace=traceback.format_exc(limit=3)
        )
        metrics.MESSAGE_RETRIES.labels(delivery.queue).inc()
        return Outcome(Verdict.RETRY, reason, delay)
    metrics.MESSAGES_HANDLED.labels(delivery.queue).inc()
    return Outcome(Verdict.ACK)
