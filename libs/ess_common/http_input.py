"""What the head's and the edges' HTTP servers take as input, before any route reads it: a body
no larger than `ESS_MAX_BODY_BYTES` (413 naming the limit), and JSON without lone surrogates
(422). A lone surrogate (`"\\ud800"`) is valid JSON but no valid Unicode: no database column,
no UTF-8 answer can hold it, so a route that echoed it (a validation error quoting the input)
failed to render and the connection was cut. Only JSON's `\\u` escapes can make one (raw
bytes that are not UTF-8 are refused by the parser), so bodies without them are not parsed
twice.

Also here: the refusals FastAPI itself gives (validation), rendered so that whatever input
they quote can be sent, and the `Allow` header of 405 and `OPTIONS` answers.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AllowHeader", "BodyTooLarge", "InputGuard", "guard", "sendable"]

_ESCAPE = b"\\u"


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than ESS_MAX_BODY_BYTES ({limit} bytes)")
        self.limit = limit


def sendable(value: Any) -> Any:
    """`value` with every text made encodable as UTF-8 (lone surrogates become U+FFFD)."""
    if isinstance(value, str):
        if not _unencodable(value):
            return value
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {sendable(k): sendable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sendable(v) for v in value]
    return value


def _unencodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _has_lone_surrogate(body: bytes) -> bool:
    if _ESCAPE not in body:
        return False
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False  # not JSON (or nested past parsing): the route's parser refuses it
    try:
        json.dumps(parsed, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _refuse(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class InputGuard:
    """ASGI middleware: reads a request's body (up to `max_body_bytes`) before the app does,
    refuses it when too large (413) or when its JSON holds a lone surrogate (422), and hands
    the app the same bytes."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
        except BodyTooLarge as exc:
            await _refuse(413, str(exc))(scope, receive, send)
            return
        if _has_lone_surrogate(body):
            detail = "the JSON body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode"
            await _refuse(422, detail)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # After the body: whatever the server says next (a disconnect).
        return await receive()

    return replayed


#: The methods an `Allow` header may name (OPTIONS is always answered).
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed(router: Router, scope: Scope) -> list[str]:
    """The methods the router's routes take at the path of `scope`, asked of each route as
    routing does (`BaseRoute.matches`): FastAPI keeps included routers as routes of their own."""
    methods = {
        method
        for method in _METHODS
        for route in router.routes
        if route.matches({**scope, "method": method})[0] is Match.FULL
    }
    return sorted(methods | {"OPTIONS"}) if methods else []


class AllowHeader:
    """ASGI middleware: `OPTIONS` on a path the app serves answers 200 with `Allow`, and every
    405 names in `Allow` all the methods of the path (Starlette names only those of the first
    route that matched the path, so `GET /v1/requests` was missing beside `POST`)."""

    def __init__(self, app: ASGIApp, routes: Router) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and (methods := _allowed(self.routes, scope)):
            await Response(status_code=200, headers={"Allow": ", ".join(methods)})(
                scope, receive, send
            )
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = ", ".join(_allowed(self.routes, scope)).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", allow)]}
            await send(message)

        await self.app(scope, receive, send_with_allow)


def guard(app: FastAPI, max_body_bytes: int) -> None:
    """Put the guard in front of `app`; render its validation refusals so that they can be
    sent whatever input they quote; answer `OPTIONS` and 405s with `Allow`."""
    app.add_middleware(AllowHeader, routes=app.router)
    app.add_middleware(InputGuard, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": sendable(jsonable_encoder(exc.errors()))}, 422)
