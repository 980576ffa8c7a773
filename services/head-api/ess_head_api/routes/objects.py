"""Serving range files of the local directory store through signed URLs (embedded mode).

With S3 the pilot downloads from the object store directly and this route answers 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from ess_common.errors import NotFound
from ess_common.store.local import LocalStore, verify
from ess_head_api.state import HeadState, head_state

router = APIRouter(prefix="/v1", tags=["objects"])
State = Annotated[HeadState, Depends(head_state)]


@router.get("/objects/{key:path}", response_class=FileResponse)
async def get_object(key: str, expires: int, signature: str, state: State) -> FileResponse:
    store = state.store
    if not isinstance(store, LocalStore):
        raise NotFound("object", key)
    verify(store.secret, key, expires, signature)
    path = store.path(key)
    if not path.is_file():
        raise NotFound("object", key)
    return FileResponse(path, media_type="application/octet-stream")
