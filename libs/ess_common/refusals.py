"""ESS's own refusals (`EssError`) as HTTP answers, alike at the head and at the edges: the
status of each kind, and the answer: the reason for a person to read and, for a range that
cannot be served, its `code` for a program (as in a batch lookup's failed results)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ess_common.errors import (
    Conflict,
    EssError,
    Forbidden,
    NotFound,
    PermanentError,
    RetryableError,
    TooLarge,
    Unauthorized,
    retry_after,
)
from ess_common.ranges import RangeFailure

_STATUS: list[tuple[type[EssError], int]] = [
    (TooLarge, 413),
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


def refusal(exc: EssError) -> JSONResponse:
    """The reason, for a person to read; 503 says when to come back, 401 how to log in."""
    code = status_of(exc)
    headers = {"Retry-After": str(retry_after(exc))} if code == 503 else None
    if code == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="ess"'}
    body: dict[str, str] = {"detail": str(exc)}
    failure = getattr(exc, "code", None)
    if isinstance(failure, RangeFailure):
        body["code"] = failure.value
    return JSONResponse(body, status_code=code, headers=headers)
