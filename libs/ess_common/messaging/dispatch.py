"""The one place that decides what becomes of a delivery: ack, retry later, or dead-letter.

A handler returns normally (ack), raises PermanentError or a validation error (dead-letter at
once, with the reason), or raises anything else (retry with backoff until the attempts run
out, then dead-letter). Nothing is dropped silently.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from enum import StrEnum

import structlog
from pydantic import ValidationError

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


async def dispatch(
    delivery: Delivery, handler: Handler, *, max_attempts: int, backoff_s: float
) -> Outcome:
    structlog.contextvars.bind_contextvars(
        queue=delivery.queue, routing_key=delivery.routing_key, attempt=delivery.attempt
    )
    try:
        await handler(delivery)
    except (PermanentError, ValidationError) as exc:
        reason = _describe(exc)
        log.warning("message.dead_lettered", reason=reason)
        return Outcome(Verdict.DEAD, reason)
    except Exception as exc:
        reason = _describe(exc)
        if delivery.attempt >= max_attempts:
            log.error("message.retries_exhausted", reason=reason)
            return Outcome(Verdict.DEAD, f"after {delivery.attempt} attempts: {reason}")
        delay = backoff(delivery.attempt, backoff_s)
        log.warning(
            "message.retry", reason=reason, delay_s=delay, trace=traceback.format_exc(limit=3)
        )
        return Outcome(Verdict.RETRY, reason, delay)
    finally:
        structlog.contextvars.unbind_contextvars("queue", "routing_key", "attempt")
    return Outcome(Verdict.ACK)
