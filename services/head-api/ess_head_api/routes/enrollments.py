"""Enrolling edges, and what an edge asks about its own work.

An edge is enrolled (admin) before the broker hears it: the answer holds its token, shown this
once (the head keeps only a key derived from it, `ess_common.enrollment`); revoking ends the
token, disables the edge and moves its unfinished files elsewhere. An edge's workers ask, before
they cache or split a file, whether that file is still theirs at that attempt: work of an
assignment that moved (the edge was lost, disabled) is dropped unworked.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from pydantic import BaseModel
from sqlalchemy import select

from ess_common.db import enrollments
from ess_common.db.models import File
from ess_common.db.session import unit_of_work
from ess_common.errors import NotFound
from ess_common.states.files import IN_FLIGHT
from ess_head_api.auth import Role, require
from ess_head_api.state import HeadState, head_state

router = APIRouter(prefix="/v1/edges", tags=["edges"])
State = Annotated[HeadState, Depends(head_state)]
EdgeName = Annotated[str, PathParam(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class Enrollment(BaseModel):
    edge: str
    #: The edge's credential (ESS_EDGE_TOKEN); shown in this answer only.
    token: str


class Revocation(BaseModel):
    edge: str
    revoked: bool


class Assignment(BaseModel):
    """Where a file's work stands now: which edge has it at which attempt."""

    file_id: int
    request_id: str
    edge: str | None
    attempt: int
    status: str


@router.post(
    "/{name}/enroll",
    response_model=Enrollment,
    status_code=201,
    dependencies=[require(Role.ADMIN)],
)
async def enroll_edge(name: EdgeName, state: State) -> Enrollment:
    """Enroll the edge with a new token (which replaces any earlier one)."""
    async with unit_of_work(state.sessions) as session:
        token = await enrollments.enroll(session, name)
    return Enrollment(edge=name, token=token)


@router.delete(
    "/{name}/enrollment",
    response_model=Revocation,
    dependencies=[require(Role.ADMIN)],
    responses={404: {"description": "the edge has no standing enrollment"}},
)
async def revoke_edge(name: EdgeName, state: State) -> Revocation:
    """End the edge's enrollment: its messages are refused from now on, it is disabled and its
    unfinished files go to other edges."""
    async with unit_of_work(state.sessions) as session:
        if not await enrollments.revoke(session, name):
            raise NotFound("enrollment of edge", name)
    return Revocation(edge=name, revoked=True)


def _assignment(f: File) -> Assignment:
    return Assignment(
        file_id=f.id, request_id=f.request_id, edge=f.edge, attempt=f.attempt, status=f.status
    )


@router.get(
    "/{name}/assignments",
    response_model=list[Assignment],
    dependencies=[require(Role.EDGE)],
)
async def assignments_of(name: EdgeName, state: State) -> list[Assignment]:
    """The files the edge has now (assigned or cached), at their current attempts."""
    async with state.sessions() as session:
        files = await session.scalars(
            select(File).where(File.edge == name, File.status.in_(IN_FLIGHT)).order_by(File.id)
        )
        return [_assignment(f) for f in files]


@router.get(
    "/{name}/assignments/{file_id}",
    response_model=Assignment,
    dependencies=[require(Role.EDGE)],
    responses={404: {"description": "no such file (its request is unknown or expired)"}},
)
async def assignment_of(name: EdgeName, file_id: int, state: State) -> Assignment:
    """Where the file's work stands: the edge compares it with the assignment it holds."""
    async with state.sessions() as session:
        f = await session.get(File, file_id)
        if f is None:
            raise NotFound("file", file_id)
        return _assignment(f)
