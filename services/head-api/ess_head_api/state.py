"""What the routes share: settings, database sessions, the object store, the outbox relay."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ess_common.catalogue import Catalogue
from ess_common.db.session import SessionMaker
from ess_common.messaging.outbox import OutboxRelay
from ess_common.settings import HeadSettings
from ess_common.store.base import ObjectStore


@dataclass
class HeadState:
    settings: HeadSettings
    sessions: SessionMaker
    store: ObjectStore
    relay: OutboxRelay
    #: Where a request naming only its dataset has its files resolved (Rucio), if anywhere.
    catalogue: Catalogue | None = None


async def head_state(request: Request) -> HeadState:
    # A coroutine, not a function: FastAPI would run a plain one in a thread, per request.
    state: HeadState = request.app.state.head
    return state
