"""Only enrolled edges are heard: each heartbeat and result must be signed with the upward key
of the standing enrollment of the edge it names (`ess_common.enrollment`).

A message that is not is refused before it is handled: dead-lettered with the reason, and
nothing else changes (no edge registered, no request touched). The edge a message names is
read from its body, which the signature covers, so an enrolled edge cannot speak for another.

Each message's key is read after it arrived, so a revoked enrollment is refused from the
moment the revocation commits; the messages waiting for a key at one moment (a consumer's
prefetch arriving together) share one read (`EnrollmentKeys`): a round trip per burst, not
per message.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ess_common import enrollment
from ess_common.db import enrollments
from ess_common.db.session import SessionMaker
from ess_common.errors import BadMessage, Forbidden
from ess_common.messaging.bus import EDGE_SIGNATURE_HEADER, Delivery, Handler


def named_edge(body: bytes) -> str:
    """The edge a heartbeat (`edge`) or a result (`work.edge`, or `edge`) is about."""
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise BadMessage(f"not JSON: {exc}") from exc
    if isinstance(data, dict):
        work = data.get("work")
        named = work.get("edge") if isinstance(work, dict) else data.get("edge")
        if isinstance(named, str) and named:
            return named
    raise BadMessage("the message names no edge")


class EnrollmentKeys:
    """The keys of standing enrollments, each read after it was asked for; the askers that
    wait at one moment are answered by one statement."""

    def __init__(self, sessions: SessionMaker) -> None:
        self.sessions = sessions
        self._waiting: dict[str, list[asyncio.Future[str | None]]] = {}
        self._reading = False

    async def key_of(self, edge: str) -> str | None:
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(edge, []).append(answer)
        if not self._reading:
            # This asker reads for everyone waiting, its own edge first, until nobody waits.
            self._reading = True
            try:
                while self._waiting:
                    asked, self._waiting = self._waiting, {}
                    await self._read(asked)
            except BaseException:
                # Cancelled midway (the consumer stops): nobody waits for ever.
                _settle(self._waiting, None)
                self._waiting = {}
                raise
            finally:
                self._reading = False
        return await answer

    async def _read(self, asked: dict[str, list[asyncio.Future[str | None]]]) -> None:
        """Answer the askers: each its key (or None), or the error of the read."""
        try:
            async with self.sessions() as session:
                keys = await enrollments.keys_of(session, sorted(asked))
        except Exception as exc:
            _settle(asked, exc)
            return
        except BaseException:
            _settle(asked, None)
            raise
        for edge, answers in asked.items():
            for answer in answers:
                if not answer.done():
                    answer.set_result(keys.get(edge))


def _settle(asked: dict[str, list[asyncio.Future[str | None]]], error: Exception | None) -> None:
    """Every unanswered asker given `error`, or cancelled without one."""
    for answers in asked.values():
        for answer in answers:
            if answer.done():
                continue
            if error is None:
                answer.cancel()
            else:
                answer.set_exception(error)


def enrolled_only(keys: EnrollmentKeys, handler: Handler) -> Handler:
    async def verified(delivery: Delivery) -> None:
        if EDGE_SIGNATURE_HEADER not in delivery.headers:
            raise Forbidden("edge signature missing")
        edge = named_edge(delivery.body)
        key = await keys.key_of(edge)
        if key is None:
            raise Forbidden(f"edge {edge} is not enrolled")
        upward = enrollment.upward_key(key)
        if not enrollment.signed_with(
            upward, delivery.body, delivery.headers, EDGE_SIGNATURE_HEADER
        ):
            raise Forbidden(f"edge signature invalid for edge {edge}")
        await handler(delivery)

    return verified
