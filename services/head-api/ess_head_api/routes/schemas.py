"""The published contract of the `request.created` message: open, like /openapi.json."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ess_common.events import request_created_schema

router = APIRouter(prefix="/v1", tags=["schemas"])


@router.get("/schemas/request-created")
async def get_request_created_schema() -> dict[str, Any]:
    """JSON Schema of the `request.created` message PanDA publishes (the same fields are the
    body of `POST /v1/requests`), with an example; `x-supported-versions` lists the
    `schema_version`s the head accepts."""
    return request_created_schema()
