"""Bearer tokens by role.

The operator gives each role its tokens (`ESS_TOKENS`, see HeadSettings.tokens). Every `/v1`
router is included behind `authenticated` (no token or an unknown one: 401 with
`WWW-Authenticate: Bearer`); a route then names the roles it admits with `require(...)` (a
known token of another role: 403). `admin` is admitted everywhere. With no token configured
at all the API is open, as in the embedded first try, and the start-up says so loudly.

| role  | may                                                                   |
|-------|-----------------------------------------------------------------------|
| panda | create, cancel and retry requests; read requests; look ranges up      |
| pilot | look ranges up; read requests (status, ranges, events)                |
| edge  | look ranges up; ask where its assignments stand                       |
| admin | everything, and the operator routes (dead letters, expiry)            |

An enrolled edge's own token (`ess edge enroll`) is an `edge` token while its enrollment stands.
Signed object URLs (`/v1/objects/...`) need no token: the signature is the credential.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ess_common import enrollment
from ess_common.db import enrollments
from ess_common.errors import Forbidden, Unauthorized
from ess_common.tokens import Role as Role
from ess_common.tokens import TokenBook as TokenBook
from ess_head_api.state import HeadState

log = structlog.get_logger("ess.head_api.auth")


#: Who may read a request's progress.
READERS = (Role.PANDA, Role.PILOT)
#: Who may look event ranges up.
LOOKERS = (Role.PILOT, Role.PANDA, Role.EDGE)

#: The answers every protected route may give besides its own, for the OpenAPI document.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no bearer token, or one that is not known"},
    403: {"description": "the token's role may not do this"},
}


def announce(book: TokenBook) -> None:
    if book.enabled:
        roles = sorted({role.value for _, role in book.entries})
        log.info("auth.enabled", roles=roles, tokens=len(book.entries))
    else:
        log.warning(
            "auth.DISABLED",
            detail="no token is configured (ESS_TOKENS): anyone who reaches the head API may "
            "create, cancel and read requests; configure tokens for any shared deployment",
        )


_bearer = HTTPBearer(auto_error=False, description="a token of one of the roles (ESS_TOKENS)")


async def token_book(request: Request) -> TokenBook:
    # A coroutine, not a function: FastAPI would run a plain one in a thread, per request.
    book: TokenBook = request.app.state.tokens
    return book


async def authenticated(
    request: Request,
    book: Annotated[TokenBook, Depends(token_book)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Role:
    """The caller's role; 401 without a known bearer token. Everyone is admin when auth is
    off."""
    if not book.enabled:
        return Role.ADMIN
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    role = book.role_of(credentials.credentials)
    if role is None and await _enrolled(request, credentials.credentials):
        role = Role.EDGE
    if role is None:
        raise Unauthorized("the bearer token is not known")
    return role


async def _enrolled(request: Request, token: str) -> bool:
    """Whether the token is the credential of an edge whose enrollment stands."""
    edge = enrollment.edge_of(token)
    if edge is None:
        return False
    state: HeadState = request.app.state.head
    async with state.sessions() as session:
        key = await enrollments.key_of(session, edge)
    return key is not None and hmac.compare_digest(key, enrollment.key_of(token))


def require(*roles: Role) -> DependsParam:
    """A dependency admitting the given roles (and admin); for a route's or a router's
    `dependencies=[...]`."""
    admitted = frozenset((*roles, Role.ADMIN))
    names = ", ".join(sorted(admitted))

    async def check(role: Annotated[Role, Depends(authenticated)]) -> Role:
        if role not in admitted:
            raise Forbidden(f"the {role} role may not do this; it needs one of: {names}")
        return role

    dependency: DependsParam = Depends(check)
    return dependency
