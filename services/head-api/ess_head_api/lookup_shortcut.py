"""The pilots' plain lookups, answered before routing.

`GET /v1/ranges` is the hot path of the head. A plain lookup (a token of a role that may look
up, a scope and an LFN, two positions in plain decimal digits, and where the pilot runs when
it says so) is answered by `LookupShortcut`, an ASGI middleware, without FastAPI's routing,
dependencies and parameter machinery: about half the CPU of a lookup. Anything else goes on to
the route as declared (`routes.ranges`), which gives the same answers and every refusal, and
documents them in the OpenAPI document.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from ess_common import metrics
from ess_common.errors import EssError
from ess_common.events import MAX_EVENT
from ess_common.refusals import refusal
from ess_common.tokens import Role, TokenBook
from ess_head_api.auth import LOOKERS
from ess_head_api.lookup import PilotPlace, answer_json

PATH = "/v1/ranges"
_ADMITTED = frozenset((*LOOKERS, Role.ADMIN))
#: A position as FastAPI takes it without converting anything: plain decimal digits.
_POSITION = re.compile(r"[0-9]{1,10}")
_PLACE_KEYS = tuple(PilotPlace.model_fields)
JSON = b"application/json"

Asked = tuple[str, str, int, int, PilotPlace | None]


def _position(value: str | None) -> int | None:
    if value is None or _POSITION.fullmatch(value) is None:
        return None
    number = int(value)
    return number if number <= MAX_EVENT else None


def _admitted(book: TokenBook, authorization: str | None) -> bool:
    """Whether the route's `authenticated` and `require(*LOOKERS)` would both let the caller
    through; False also when they would refuse it, which is theirs to answer."""
    if not book.enabled:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return book.role_of(token) in _ADMITTED


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def plain_lookup(book: TokenBook, scope: Scope) -> Asked | None:
    """The parameters of a lookup that the route would take as they are, from an admitted
    caller; None for anything else (the route as declared answers it)."""
    if not _admitted(book, _header(scope, b"authorization")):
        return None
    # As Starlette reads a query: the last of repeated names counts.
    query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    scope_name, lfn = query.get("scope"), query.get("LFN")
    start, last = _position(query.get("startEvent")), _position(query.get("lastEvent"))
    if not scope_name or not lfn or start is None or last is None:
        return None
    place = None
    if any(key in query for key in _PLACE_KEYS):
        try:
            place = PilotPlace.model_validate({k: query[k] for k in _PLACE_KEYS if k in query})
        except ValidationError:
            return None
    return scope_name, lfn, start, last, place


class LookupShortcut:
    """Answers the plain lookups (`plain_lookup`) and passes everything else on. A lookup
    that fails other than with ESS's own refusal (a value the database refuses, the database
    unreachable) is passed on too, to be answered by the route as any request is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or get_route_path(scope) != PATH
            or (asked := plain_lookup(scope["app"].state.tokens, scope)) is None
        ):
            await self.app(scope, receive, send)
            return
        try:
            with metrics.lookup("head", "fast"):
                body = await answer_json(scope["app"].state.head, *asked)
        except EssError as exc:
            await refusal(exc)(scope, receive, send)
            return
        except Exception:
            # Counted as an error of the fast path; the route answers it (and counts it).
            await self.app(scope, receive, send)
            return
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", JSON)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
