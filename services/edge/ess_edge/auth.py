"""Who may use the edge's routes: the head's tokens.

The operator configures tokens at the head (`ESS_TOKENS`). An edge given the same setting
checks them itself; otherwise it asks the head's `GET /v1/whoami` with the caller's own
`Authorization` header and keeps the answer for `_KEEP_S` (a refusal for `_KEEP_REFUSED_S`), by
a digest of the header, never the token (the head unreachable: 503). A pilot, PanDA, edge or
admin token may look ranges up, ask for on-demand splits and download; when the head runs
without tokens, so does the edge.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import httpx

from ess_common.errors import Forbidden, RetryableError, Unauthorized
from ess_common.tokens import TokenBook
from ess_edge.singleflight import SingleFlight

_KEEP_S = 60.0
_KEEP_REFUSED_S = 5.0
_MAX_ENTRIES = 10_000
#: The head's roles that may use the edge.
ADMITTED = frozenset({"pilot", "panda", "edge", "admin"})


class Gate:
    def __init__(
        self,
        http: httpx.AsyncClient,
        head_url: str,
        *,
        book: TokenBook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = book if book is not None and book.enabled else None
        self.http = http
        self.url = f"{head_url.rstrip('/')}/v1/whoami"
        self.clock = clock
        self._known: dict[bytes, tuple[float, str | None]] = {}
        self._flight: SingleFlight[bytes, str | None] = SingleFlight()

    async def _ask(self, authorization: str | None) -> str | None:
        headers = {"Authorization": authorization} if authorization else {}
        try:
            response = await self.http.get(self.url, headers=headers)
        except httpx.HTTPError as exc:
            raise RetryableError(
                f"the head, which checks tokens, is unreachable: {type(exc).__name__}"
            ) from exc
        if response.status_code == 401:
            return None
        if response.status_code != 200:
            raise RetryableError(f"the head answered HTTP {response.status_code} to a token check")
        role = response.json().get("role")
        return str(role) if role else None

    async def role(self, authorization: str | None) -> str | None:
        """The caller's role, None for no token or an unknown one."""
        if self.book is not None:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            found = self.book.role_of(token.strip())
            return None if found is None else found.value
        digest = hashlib.sha256((authorization or "").encode()).digest()
        held = self._known.get(digest)
        now = self.clock()
        if held is not None:
            at, role = held
            if now - at < (_KEEP_S if role is not None else _KEEP_REFUSED_S):
                return role
        role = await self._flight.do(digest, lambda: self._ask(authorization))
        if len(self._known) >= _MAX_ENTRIES:
            self._known.clear()
        self._known[digest] = (now, role)
        return role

    async def check(self, authorization: str | None) -> str:
        role = await self.role(authorization)
        if role is None:
            if not authorization:
                raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
            raise Unauthorized("the bearer token is not known")
        if role not in ADMITTED:
            raise Forbidden(f"the {role} role may not use an edge")
        return role
