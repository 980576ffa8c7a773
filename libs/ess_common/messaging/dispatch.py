"""The one place that decides what becomes of a delivery: ack, retry later, or dead-letter.

A handler returns normally (ack), raises PermanentError or a validation error (dead-letter at
once, with the reason), or raises anything else (retry with backoff until the attempts run
out, then dead-letter). Nothing is dropped silently. An error that says a server ESS needs was
unreachable (`ess_common.outages`) is no fault of the message: it is retried with backoff (at
most `backoff_max_s` apart) for as long as the outage lasts, logged and counted
(`ess_outage_retries_total`), without spending the message's attempts. A delivery whose
envelope cannot be read (`ess_common.messaging.envelope`) is dead-lettered with the reason.

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
from ess_common.errors import Forbidden, PermanentError, Unauthorized
from ess_common.messaging.bus import Delivery, Handler
from ess_common.outages import is_outage

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
    #: A retry for an outage: it counts in `x-ess-outages`, not in the attempts.
    outage: bool = False
    #: A dead letter refused (unauthenticated, forged): what it says is not to be believed.
    refused: bool = False


def backoff(attempt: int, base_s: float, cap_s: float = 60.0) -> float:
    # The exponent is bounded: an outage may count thousands of redeliveries.
    return float(min(cap_s, base_s * 2 ** min(max(attempt - 1, 0), 40)))


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


def refuse_envelope(delivery: Delivery, problem: str) -> Outcome:
    """The outcome of a delivery whose envelope (`read_envelope`) is bad: dead at once."""
    log.warning("message.dead_lettered", reason=problem, queue=delivery.queue)
    metrics.DEAD_LETTERS.labels(delivery.queue, "bad_envelope").inc()
    return Outcome(Verdict.DEAD, problem)


async def dispatch(
    delivery: Delivery,
    handler: Handler,
    *,
    max_attempts: int,
    backoff_s: float,
    backoff_max_s: float = 60.0,
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
            outcome = await _handle(delivery, handler, max_attempts, backoff_s, backoff_max_s)
            if outcome.verdict is not Verdict.ACK:
                tracing.failed(span, outcome.reason)
            return outcome
    finally:
        metrics.MESSAGE_SECONDS.labels(delivery.queue).observe(time.perf_counter() - started)
        # What the handler bound for this message (its request) goes with it.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**bound)


async def _handle(
    delivery: Delivery, handler: Handler, max_attempts: int, backoff_s: float, backoff_max_s: float
) -> Outcome:
    try:
        await handler(delivery)
    except (PermanentError, ValidationError) as exc:
        reason = _describe(exc)
        log.warning("message.dead_lettered", reason=reason)
        metrics.DEAD_LETTERS.labels(delivery.queue, reason_kind(exc)).inc()
        return Outcome(Verdict.DEAD, reason, refused=isinstance(exc, (Unauthorized, Forbidden)))
    except Exception as exc:
        reason = _describe(exc)
        if is_outage(exc):
            outages = delivery.outages + 1
            # Never a busy loop against a server that is down, whatever the base backoff.
            delay = backoff(outages, max(backoff_s, 0.05), backoff_max_s)
            log.warning("message.outage_retry", reason=reason, outages=outages, delay_s=delay)
            metrics.OUTAGE_RETRIES.labels(delivery.queue).inc()
            return Outcome(Verdict.RETRY, reason, delay, outage=True)
        if delivery.attempt >= max_attempts:
            log.error("message.retries_exhausted", reason=reason)
            metrics.DEAD_LETTERS.labels(delivery.queue, "retries_exhausted").inc()
            return Outcome(Verdict.DEAD, f"after {delivery.attempt} attempts: {reason}")
        delay = backoff(delivery.attempt, backoff_s, backoff_max_s)
        log.warning(
            "message.retry", reason=reason, delay_s=delay, trace=traceback.format_exc(limit=3)
        )
        metrics.MESSAGE_RETRIES.labels(delivery.queue).inc()
        return Outcome(Verdict.RETRY, reason, delay)
    metrics.MESSAGES_HANDLED.labels(delivery.queue).inc()
    return Outcome(Verdict.ACK)
