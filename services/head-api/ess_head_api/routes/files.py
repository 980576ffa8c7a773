"""Dataset information for edges: every prepared copy of a file with all its ranges, so that an
edge answers pilots' lookups itself (`ess_common.ranges`) from a short-lived cache of this; and
where the file itself can be read, for an edge that splits a range of it on demand."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy import func, select

from ess_common.db.models import File, Range, Request
from ess_common.errors import NotFound
from ess_common.events import Replica
from ess_common.ranges import Answer, FileRanges, PreparedCopy, RangeEntry
from ess_head_api.auth import LOOKERS, Role, require
from ess_head_api.state import HeadState, head_state

router = APIRouter(prefix="/v1", tags=["files"])
State = Annotated[HeadState, Depends(head_state)]


@router.get(
    "/files/{scope}/{lfn}/ranges", response_model=FileRanges, dependencies=[require(*LOOKERS)]
)
async def file_ranges(scope: str, lfn: str, state: State) -> FileRanges:
    """All ranges of every prepared copy of the file, newest copy last, then each range split
    on demand as a copy of its own; 404 when no request holds the file. A copy appears whole or
    not at all (its ranges are recorded together)."""
    async with state.sessions() as session:
        n_events = await session.scalar(
            select(func.max(File.n_events)).where(File.scope == scope, File.lfn == lfn)
        )
        if n_events is None:
            raise NotFound("file", f"{scope}:{lfn}")
        rows = (
            await session.execute(
                select(Range, Request.events_per_range)
                .outerjoin(Request, Request.id == Range.request_id)
                .where(Range.scope == scope, Range.lfn == lfn)
                .order_by(Range.file_id.is_(None), Range.file_id, Range.first_event)
            )
        ).all()
    copies: dict[int, PreparedCopy] = {}
    entries: dict[int, list[RangeEntry]] = defaultdict(list)
    for r, events_per_range in rows:
        copy_id = r.file_id if r.file_id is not None else -r.id
        copies.setdefault(
            copy_id,
            PreparedCopy(
                file_id=copy_id,
                request_id=r.request_id,
                events_per_range=events_per_range or r.last_event - r.first_event + 1,
                ranges=[],
            ),
        )
        entries[copy_id].append(
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


class FileSource(Answer):
    """Where an input file can be read and what it must be: for splitting a range of it on
    demand. From the newest request that holds the file."""

    scope: str
    lfn: str
    guid: str
    n_events: int
    size: int
    adler32: str
    sources: list[str]
    replicas: list[Replica]


@router.get(
    "/files/{scope}/{lfn}/source", response_model=FileSource, dependencies=[require(Role.EDGE)]
)
async def file_source(scope: str, lfn: str, state: State) -> FileSource:
    """The file's sources (edges and admins only: they may name internal servers); 404 when
    no request holds the file."""
    async with state.sessions() as session:
        f = await session.scalar(
            select(File).where(File.scope == scope, File.lfn == lfn).order_by(File.id.desc())
        )
    if f is None:
        raise NotFound("file", f"{scope}:{lfn}")
    return FileSource(
        scope=f.scope,
        lfn=f.lfn,
        guid=f.guid,
        n_events=f.n_events,
        size=f.size,
        adler32=f.adler32,
        sources=list(f.sources),
        replicas=[Replica.model_validate(r) for r in f.replicas],
    )
