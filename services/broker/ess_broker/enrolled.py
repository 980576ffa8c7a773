"""Only enrolled edges are heard: each heartbeat and result must be signed with the upward key
of the standing enrollment of the edge it names (`ess_common.enrollment`).

A message that is not is refused before it is handled: dead-lettered with the reason, and
nothing else changes (no edge registered, no request touched). The edge a message names is
read from its body, which the signature covers, so an enrolled edge cannot speak for another.
"""

from __future__ import annotations

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


def enrolled_only(sessions: SessionMaker, handler: Handler) -> Handler:
    async def verified(delivery: Delivery) -> None:
        if EDGE_SIGNATURE_HEADER not in delivery.headers:
            raise Forbidden("edge signature missing")
        edge = named_edge(delivery.body)
        async with sessions() as session:
            key = await enrollments.key_of(session, edge)
        if key is None:
            raise Forbidden(f"edge {edge} is not enrolled")
        upward = enrollment.upward_key(key)
        if not enrollment.signed_with(
            upward, delivery.body, delivery.headers, EDGE_SIGNATURE_HEADER
        ):
            raise Forbidden(f"edge signature invalid for edge {edge}")
        await handler(delivery)

    return verified
