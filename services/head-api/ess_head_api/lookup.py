"""Finding the prepared files that hold a PanDA event range, with signed URLs and, when the
pilot says where it runs, the closest live edge that serves the same file.

The rule (positions, copies, straddling ranges) is `ess_common.ranges`, shared with the edges.
Any live edge serves any range file (it pulls it through from the object store on a miss);
among the closest ones the object key picks one by rendezvous hashing, so that pilots asking
for the same file go to the same edge and find it cached there.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Edge, EdgeStatus, File, Range, utcnow
from ess_common.ranges import RangeNotPrepared as RangeNotPrepared
from ess_common.ranges import RangeOutsideFile as RangeOutsideFile
from ess_common.ranges import best_cover, check_asked, make_piece, not_prepared
from ess_common.ranges import covering as covering
from ess_common.store.base import ObjectStore
from ess_head_api.schemas import LookupAnswer


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


async def edge_hint(
    session: AsyncSession, lost_after_s: float, place: PilotPlace | None
) -> EdgeHint | None:
    """None when the pilot did not say where it runs: it gets the object store only."""
    if place is None or not place.given:
        return None
    lost_after = timedelta(seconds=lost_after_s)
    live = (
        await session.scalars(
            select(Edge).where(
                Edge.status == EdgeStatus.ALIVE,
                Edge.last_heartbeat >= utcnow() - lost_after,
                Edge.url.is_not(None),
            )
        )
    ).all()
    tiers = [
        [e for e in live if place.site and e.site == place.site],
        [e for e in live if place.region and e.region == place.region],
    ]
    if place.latitude is not None and place.longitude is not None:
        located = [e for e in live if e.latitude is not None and e.longitude is not None]
        if located:

            def km(e: Edge) -> float:
                assert e.latitude is not None and e.longitude is not None
                assert place is not None and place.latitude is not None
                assert place.longitude is not None
                return _distance_km(place.latitude, place.longitude, e.latitude, e.longitude)

            nearest = min(km(e) for e in located)
            tiers.append([e for e in located if km(e) <= nearest + 1.0])
    best = next((tier for tier in tiers if tier), [])
    return EdgeHint(tuple((e.name, (e.url or "").rstrip("/")) for e in best))


async def find_pieces(
    session: AsyncSession, scope: str, lfn: str, start: int, last: int
) -> list[Range]:
    check_asked(start, last)
    rows = (
        await session.scalars(
            select(Range)
            .where(
                Range.scope == scope,
                Range.lfn == lfn,
                Range.first_event <= last,
                Range.last_event >= start,
            )
            .order_by(Range.file_id, Range.first_event)
        )
    ).all()
    by_file: dict[int, list[Range]] = defaultdict(list)
    for r in rows:
        by_file[r.file_id].append(r)
    found = best_cover(by_file.items(), start, last)
    if found is not None:
        return found
    n_events = await session.scalar(
        select(func.max(File.n_events)).where(File.scope == scope, File.lfn == lfn)
    )
    raise not_prepared(scope, lfn, start, last, n_events)


async def answer(
    session: AsyncSession,
    store: ObjectStore,
    ttl_s: int,
    scope: str,
    lfn: str,
    start: int,
    last: int,
    hint: EdgeHint | None = None,
) -> LookupAnswer:
    pieces = await find_pieces(session, scope, lfn, start, last)
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
