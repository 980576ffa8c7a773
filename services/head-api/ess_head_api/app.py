"""The head API application; errors are mapped to HTTP answers here, once.

Every `/v1` router but the signed object downloads and the published schema is included
behind a bearer token (`auth.authenticated`); each route names its roles with `auth.require`.
While served, the app also expires old requests every `expire_interval_s`, and keeps a pool of
its own for the pilots' lookups (`ess_common.db.hot_reads`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError

from ess_common.db.hot_reads import hot_reads
from ess_common.db.session import engine_of
from ess_common.errors import EssError
from ess_common.http_input import guard
from ess_common.ranges import RangeFailure
from ess_common.refusals import refusal
from ess_common.runtime import every
from ess_common.tracing import TraceRequests
from ess_head_api.auth import AUTH_RESPONSES, TokenBook, announce, authenticated
from ess_head_api.lifecycle import expire
from ess_head_api.lookup_shortcut import LookupShortcut
from ess_head_api.routes import (
    admin,
    dashboard,
    edges,
    enrollments,
    events,
    files,
    health,
    metrics,
    objects,
    on_demand,
    ranges,
    requests,
    schemas,
)
from ess_head_api.routes.events import StreamCount
from ess_head_api.schemas import RequestEventView
from ess_head_api.state import HeadState


class ErrorAnswer(BaseModel):
    """What every refusal of ESS's own says: the reason, for a person to read; for a range
    that cannot be served, also why, for a program (`ess_common.refusals`)."""

    detail: str
    code: RangeFailure | None = Field(
        default=None, description="present when a range cannot be served: why, as in a batch"
    )


COMPONENT_REF = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": "#/components/schemas/ErrorAnswer"}
#: Seconds a client waits before asking again when a server ESS needs is out of reach.
UNAVAILABLE_RETRY_AFTER_S = 2
log = structlog.get_logger("ess.head_api")


def add_component(components: dict[str, Any], model: type[BaseModel]) -> None:
    """`model`'s JSON Schema as a component, with the models it names beside it: its
    references point into the components, where they resolve (not into `$defs` of its own)."""
    found = model.model_json_schema(ref_template=COMPONENT_REF)
    for name, definition in found.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components[model.__name__] = found


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as the app answers: a 422 is either FastAPI's list of validation
    problems or one of our reasons, every other refusal is one of our reasons."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    add_component(components, ErrorAnswer)
    # Named by the events route's second content type (its history).
    add_component(components, RequestEventView)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if path.startswith("/v1/"):
                responses.setdefault(
                    "503", {"description": "a server ESS needs is unavailable; see Retry-After"}
                )
            if "requestBody" in operation:
                responses.setdefault("400", {"description": "the body is not JSON"})
                responses.setdefault(
                    "413", {"description": "the body is larger than ESS_MAX_BODY_BYTES"}
                )
            if "{" in path:
                # Every path parameter names something recorded: it may not exist.
                responses.setdefault("404", {"description": "nothing of this name is known"})
            for code, response in responses.items():
                if code == "422":
                    content = response.setdefault("content", {}).setdefault("application/json", {})
                    validation = content.get("schema", {"$ref": _ERROR_REF["$ref"]})
                    content["schema"] = {"anyOf": [validation, _ERROR_REF]}
                elif code[0] in "45" and "content" not in response:
                    response["content"] = {"application/json": {"schema": _ERROR_REF}}
    return schema


def bad_value(exc: DBAPIError) -> bool:
    """Whether the database refused a value the client gave (text it cannot hold, a number out
    of its range): SQLSTATE class 22, or the driver's own refusal (a ValueError)."""
    seen: BaseException | None = exc.orig
    while seen is not None:
        if isinstance(seen, ValueError) or str(getattr(seen, "sqlstate", "")).startswith("22"):
            return True
        seen = seen.__cause__
    return False


def unavailable(exc: BaseException) -> JSONResponse:
    """A server ESS needs is out of reach (the database restarting or down, a connection cut
    or refused): 503, to be asked again, as the OpenAPI document says of every `/v1` route."""
    log.warning("server_unavailable", error=type(exc).__name__, reason=str(exc)[:300])
    return JSONResponse(
        {"detail": "a server ESS needs (its database or object store) is unavailable: ask again"},
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


def create_app(state: HeadState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def expire_old() -> None:
            await expire(state.sessions, state.store, state.settings.request_ttl_s)

        task = asyncio.create_task(
            every(state.settings.expire_interval_s, expire_old, "expire"), name="head-expire"
        )
        try:
            async with hot_reads(engine_of(state.sessions)):
                yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            http = getattr(app.state, "edge_http", None)
            if http is not None:
                await http.aclose()

    app = FastAPI(
        title="ESS head API",
        summary="Event Streaming Service: datasets prepared as event-range files for PanDA",
        version="1",
        lifespan=lifespan,
    )
    app.state.head = state
    app.state.tokens = TokenBook.from_settings(state.settings.tokens)
    app.state.streams = StreamCount()
    # The lookup shortcut outside the tracing: pilots' lookups are no request's work.
    app.add_middleware(TraceRequests)
    app.add_middleware(LookupShortcut)
    guard(app, state.settings.max_body_bytes)
    announce(app.state.tokens)

    @app.exception_handler(EssError)
    async def ess_error(_: Request, exc: EssError) -> JSONResponse:
        return refusal(exc)

    @app.exception_handler(DBAPIError)
    async def database_refused(_: Request, exc: DBAPIError) -> JSONResponse:
        if bad_value(exc):
            return JSONResponse(
                {
                    "detail": "a value of the request cannot be stored or looked up (a NUL "
                    "character, invalid Unicode, a number out of range or a text too long)"
                },
                status_code=422,
            )
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            return unavailable(exc)
        raise exc

    for unreachable in (ConnectionError, TimeoutError, socket.gaierror):
        app.add_exception_handler(unreachable, lambda _, exc: unavailable(exc))

    for module in (requests, events, ranges, on_demand, files, edges, enrollments, admin):
        app.include_router(
            module.router, dependencies=[Depends(authenticated)], responses=AUTH_RESPONSES
        )
    app.include_router(
        objects.router,
        responses={403: {"description": "the URL's signature does not match or it has expired"}},
    )
    for module in (schemas, health, metrics):
        app.include_router(module.router)
    dashboard.mount(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
