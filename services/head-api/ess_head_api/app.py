"""The head API application; errors are mapped to HTTP answers here, once."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ess_common.errors import (
    Conflict,
    EssError,
    Forbidden,
    NotFound,
    PermanentError,
    RetryableError,
    Unauthorized,
)
from ess_head_api.routes import edges, health, objects, ranges, requests
from ess_head_api.state import HeadState

_STATUS: list[tuple[type[EssError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (Unauthorized, 401),
    (Forbidden, 403),
    (PermanentError, 422),
    (RetryableError, 503),
]


def status_of(exc: EssError) -> int:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return 500


def create_app(state: HeadState) -> FastAPI:
    app = FastAPI(
        title="ESS head API",
        summary="Event Streaming Service: datasets prepared as event-range files for PanDA",
        version="1",
    )
    app.state.head = state

    @app.exception_handler(EssError)
    async def ess_error(_: Request, exc: EssError) -> JSONResponse:
        code = status_of(exc)
        headers = {"Retry-After": "5"} if code == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    for module in (requests, ranges, edges, objects, health):
        app.include_router(module.router)
    return app
