"""Dataset information for edges: every prepared copy of a file with all its ranges, so that an
edge answers pilots' lookups itself (`ess_common.ranges`) from a short-lived cache of this."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy import func, select

from ess_common.db.models import File, Range, Request
from ess_common.errors import NotFound
from ess_common.ranges import FileRanges, PreparedCopy, RangeEntry
from ess_head_api.auth import LOOKERS, require
from ess_head_api.state import HeadState, head_state

router = APIRouter(prefix="/v1", tags=["files"], dependencies=[require(*LOOKERS)])
State = Annotated[HeadState, Depends(head_state)]


@router.get("/files/{scope}/{lfn}/ranges", response_model=FileRanges)
async def file_ranges(scope: str, lfn: str, state: State) -> FileRanges:
    """All ranges of every prepared copy of the file, newest copy last; 404 when no request
    holds the file. A copy appears whole or not at all (its ranges are recorded together)."""
    async with state.sessions() as session:
        n_events = await session.scalar(
            select(func.max(File.n_events)).where(File.scope == scope, File.lfn == lfn)
        )
        if n_events is None:
            raise NotFound("file", f"{scope}:{lfn}")
        rows = (
            await session.execute(
                select(Range, Request.events_per_range)
                .join(Request, Request.id == Range.request_id)
                .where(Range.scope == scope, Range.lfn == lfn)
                .order_by(Range.file_id, Range.first_event)
            )
        ).all()
    copies: dict[int, PreparedCopy] = {}
    entries: dict[int, list[RangeEntry]] = defaultdict(list)
    for r, events_per_range in rows:
        copies.setdefault(
            r.file_id,
            PreparedCopy(
                file_id=r.file_id,
                request_id=r.request_id,
                events_per_range=events_per_range,
                ranges=[],
            ),
        )
        entries[r.file_id].append(
            RangeEntry(
                first_event=r.first_event,
                last_event=r.last_event,
                key=r.object_key,
                size=r.size,
                adler32=r.adler32,
            )
        )
    return FileRanges(
        scope=scope,
        lfn=lfn,
        n_events=n_events,
        copies=[c.model_copy(update={"ranges": entries[i]}) for i, c in copies.items()],
    )
