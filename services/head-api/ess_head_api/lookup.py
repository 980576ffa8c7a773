"""Finding the prepared files that hold a PanDA event range.

PanDA counts events by their 1-based position in the original file; so do the ranges in
the bookkeeping. Among the prepared copies of a file (several requests may have split it at
different granularities), the one that covers the asked events with the fewest pieces wins;
a range that straddles two range files is answered with both pieces.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import File, Range
from ess_common.errors import NotFound, PermanentError
from ess_common.store.base import ObjectStore
from ess_head_api.schemas import LookupAnswer, Piece


class RangeNotPrepared(NotFound):
    def __init__(self, scope: str, lfn: str, start: int, last: int, why: str) -> None:
        super().__init__("event range", f"{scope}:{lfn} events {start}-{last}")
        self.args = (f"events {start}-{last} of {scope}:{lfn} {why}",)


class RangeOutsideFile(PermanentError):
    pass


def covering(ranges: Sequence[Range], start: int, last: int) -> list[Range] | None:
    """The ranges (sorted by first event) if together they hold every event start..last."""
    needed = start
    chosen: list[Range] = []
    for r in ranges:
        if r.first_event > needed:
            return None
        if r.last_event >= needed:
            chosen.append(r)
            needed = r.last_event + 1
        if needed > last:
            return chosen
    return None


async def find_pieces(
    session: AsyncSession, scope: str, lfn: str, start: int, last: int
) -> list[Range]:
    if start < 1 or last < start:
        raise RangeOutsideFile(
            f"startEvent {start} and lastEvent {last} must satisfy 1 <= startEvent <= lastEvent "
            "(1-based positions in the original file, PanDA's convention)"
        )
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
    options = [c for c in (covering(rs, start, last) for rs in by_file.values()) if c]
    if options:
        return min(options, key=lambda c: (len(c), -c[0].file_id))
    n_events = await session.scalar(
        select(func.max(File.n_events)).where(File.scope == scope, File.lfn == lfn)
    )
    if n_events is None:
        raise RangeNotPrepared(scope, lfn, start, last, "are not known: no request holds the file")
    if last > n_events:
        raise RangeOutsideFile(f"lastEvent {last} is beyond the {n_events} events of {scope}:{lfn}")
    raise RangeNotPrepared(scope, lfn, start, last, "are not prepared (yet)")


async def answer(
    session: AsyncSession,
    store: ObjectStore,
    ttl_s: int,
    scope: str,
    lfn: str,
    start: int,
    last: int,
) -> LookupAnswer:
    pieces = await find_pieces(session, scope, lfn, start, last)
    out = []
    for r in pieces:
        lo, hi = max(start, r.first_event), min(last, r.last_event)
        out.append(
            Piece(
                url=await store.signed_url(r.object_key, ttl_s),
                key=r.object_key,
                size=r.size,
                adler32=r.adler32,
                file_first_event=r.first_event,
                file_last_event=r.last_event,
                start_event=lo,
                last_event=hi,
                local_start_event=lo - r.first_event + 1,
                local_last_event=hi - r.first_event + 1,
                expires_in_s=ttl_s,
            )
        )
    return LookupAnswer(scope=scope, lfn=lfn, start_event=start, last_event=last, pieces=out)
