"""Finding the prepared files that hold a PanDA event range, with signed URLs and, when the
pilot says where it runs, the closest live edge that serves the same file.

The rule (positions, copies, straddling ranges) is `ess_common.ranges`, shared with the edges.
Any live edge serves any range file (it pulls it through from the object store on a miss);
among the closest ones the object key picks one by rendezvous hashing, so that pilots asking
for the same file go to the same edge and find it cached there.

Lookups are the hot path of the head: they read columns outside any transaction, one query
when the range is prepared, on PostgreSQL straight through a pool of asyncpg connections
(`ess_common.db.hot_reads`); the rest (a range not prepared, the live edges once a second)
with SQLAlchemy Core on a pooled connection (`ess_common.db.session.read`).
"""

from __future__ import annotations

import hashlib
import math
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from pydantic import BaseModel, Field, TypeAdapter
from sqlalchemy import Engine, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ess_common.db.hot_reads import hot_fetch
from ess_common.db.models import Edge, EdgeStatus, File, Range, utcnow
from ess_common.db.session import engine_of, read
from ess_common.ranges import RangeNotPrepared as RangeNotPrepared
from ess_common.ranges import RangeOutsideFile as RangeOutsideFile
from ess_common.ranges import best_cover, check_asked, make_piece, not_prepared
from ess_common.ranges import covering as covering
from ess_common.store.base import ObjectStore
from ess_head_api.schemas import LookupAnswer
from ess_head_api.state import HeadState

#: How long the list of live edges is reused: it changes with heartbeats (seconds apart) and an
#: edge is lost only after `edge_lost_after_s` (tens of seconds) without one.
LIVE_EDGES_TTL_S = 1.0


class PilotPlace(BaseModel):
    """Where the pilot runs, to be pointed at a close edge; all optional."""

    site: str | None = Field(default=None, max_length=255, description="the pilot's grid site")
    region: str | None = Field(default=None, max_length=255, description="the pilot's region")
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)

    @property
    def given(self) -> bool:
        located = self.latitude is not None and self.longitude is not None
        return bool(self.site or self.region or located)


def _distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(min(1.0, h)))


@dataclass(frozen=True)
class EdgeHint:
    """The live edges closest to one pilot: `(name, url)` of the best tier found (same site,
    else same region, else the nearest by coordinates)."""

    edges: tuple[tuple[str, str], ...]

    def url_for(self, key: str) -> str | None:
        if not self.edges:
            return None
        _, url = max(
            self.edges,
            key=lambda e: hashlib.blake2b(f"{key}|{e[0]}".encode(), digest_size=8).digest(),
        )
        return f"{url}/v1/objects/{key}"


class LiveEdge(NamedTuple):
    name: str
    site: str
    region: str
    url: str
    latitude: float | None
    longitude: float | None


_LIVE_EDGES = select(
    Edge.name, Edge.site, Edge.region, Edge.url, Edge.latitude, Edge.longitude
).where(
    Edge.status == EdgeStatus.ALIVE,
    Edge.last_heartbeat >= bindparam("heard_since"),
    Edge.url.is_not(None),
)


@dataclass
class _Held:
    at: float
    lost_after_s: float
    edges: tuple[LiveEdge, ...]


#: The live edges last read, per database (engine), with when they were read.
_held: weakref.WeakKeyDictionary[Engine, _Held] = weakref.WeakKeyDictionary()


async def live_edges(
    engine: AsyncEngine, lost_after_s: float, *, ttl_s: float = LIVE_EDGES_TTL_S
) -> tuple[LiveEdge, ...]:
    """The edges that heartbeat within `lost_after_s`, serve (alive) and have a URL; read from
    the database at most once per `ttl_s`."""
    now = time.monotonic()
    held = _held.get(engine.sync_engine)
    if held is not None and held.lost_after_s == lost_after_s and now - held.at < ttl_s:
        return held.edges
    heard_since = utcnow() - timedelta(seconds=lost_after_s)

    async def look(connection: AsyncConnection) -> tuple[LiveEdge, ...]:
        rows = await connection.execute(_LIVE_EDGES, {"heard_since": heard_since})
        return tuple(
            LiveEdge(r.name, r.site, r.region, r.url or "", r.latitude, r.longitude) for r in rows
        )

    edges = await read(engine, look)
    _held[engine.sync_engine] = _Held(now, lost_after_s, edges)
    return edges


async def edge_hint(
    engine: AsyncEngine, lost_after_s: float, place: PilotPlace | None
) -> EdgeHint | None:
    """None when the pilot did not say where it runs: it gets the object store only."""
    if place is None or not place.given:
        return None
    live = await live_edges(engine, lost_after_s)
    tiers = [
        [e for e in live if place.site and e.site == place.site],
        [e for e in live if place.region and e.region == place.region],
    ]
    lat, lon = place.latitude, place.longitude
    if lat is not None and lon is not None:
        located = [
            (_distance_km(lat, lon, e.latitude, e.longitude), e)
            for e in live
            if e.latitude is not None and e.longitude is not None
        ]
        if located:
            nearest = min(km for km, _ in located)
            tiers.append([e for km, e in located if km <= nearest + 1.0])
    best = next((tier for tier in tiers if tier), [])
    return EdgeHint(tuple((e.name, e.url.rstrip("/")) for e in best))


class FoundRange(NamedTuple):
    """A range row as a lookup needs it."""

    id: int
    file_id: int | None
    first_event: int
    last_event: int
    object_key: str
    size: int
    adler32: str


_RANGES = (
    select(
        Range.id,
        Range.file_id,
        Range.first_event,
        Range.last_event,
        Range.object_key,
        Range.size,
        Range.adler32,
    )
    .where(
        Range.scope == bindparam("scope"),
        Range.lfn == bindparam("lfn"),
        Range.first_event <= bindparam("last"),
        Range.last_event >= bindparam("start"),
    )
    .order_by(Range.file_id, Range.first_event)
)

_N_EVENTS = select(func.max(File.n_events)).where(
    File.scope == bindparam("scope"), File.lfn == bindparam("lfn")
)


def copies_of(rows: list[FoundRange]) -> dict[int, list[FoundRange]]:
    """The rows (sorted by file, then first event) by copy: a request's file (its id), or a
    range split on its own, outside any request's copy (no file id), as a copy of one range
    keyed by its negative range id."""
    by_copy: dict[int, list[FoundRange]] = defaultdict(list)
    for r in rows:
        by_copy[r.file_id if r.file_id is not None else -r.id].append(r)
    return by_copy


async def find_pieces(
    engine: AsyncEngine, scope: str, lfn: str, start: int, last: int
) -> list[FoundRange]:
    check_asked(start, last)
    params = {"scope": scope, "lfn": lfn, "start": start, "last": last}
    rows = [FoundRange(*row) for row in await hot_fetch(engine, _RANGES, params)]
    found = best_cover(copies_of(rows).items(), start, last)
    if found is not None:
        return found

    async def n_events(connection: AsyncConnection) -> int | None:
        return await connection.scalar(_N_EVENTS, {"scope": scope, "lfn": lfn})

    raise not_prepared(scope, lfn, start, last, await read(engine, n_events))


async def answer(
    engine: AsyncEngine,
    store: ObjectStore,
    ttl_s: int,
    scope: str,
    lfn: str,
    start: int,
    last: int,
    hint: EdgeHint | None = None,
) -> LookupAnswer:
    pieces = await find_pieces(engine, scope, lfn, start, last)
    out = [
        make_piece(
            first_event=r.first_event,
            last_event=r.last_event,
            key=r.object_key,
            size=r.size,
            adler32=r.adler32,
            start=start,
            last=last,
            url=await store.signed_url(r.object_key, ttl_s),
            expires_in_s=ttl_s,
            edge_url=hint.url_for(r.object_key) if hint is not None else None,
        )
        for r in pieces
    ]
    return LookupAnswer(scope=scope, lfn=lfn, start_event=start, last_event=last, pieces=out)


_ANSWER = TypeAdapter(LookupAnswer)


async def answer_json(
    state: HeadState, scope: str, lfn: str, start: int, last: int, place: PilotPlace | None
) -> bytes:
    """The answer to a pilot's `GET /v1/ranges`, as its JSON."""
    settings = state.settings
    engine = engine_of(state.sessions)
    hint = await edge_hint(engine, settings.edge_lost_after_s, place)
    found = await answer(
        engine, state.store, settings.signed_url_ttl_s, scope, lfn, start, last, hint
    )
    return _ANSWER.dump_json(found)
