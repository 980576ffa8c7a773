"""The operators' web dashboard at `/`: plain HTML, CSS and JavaScript shipped in the package
(`ess_head_api/static`), no build step. The page reads the same `/v1` API as any client, with
the token the operator gives it, and follows requests through their Server-Sent Events."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def dashboard() -> FileResponse:
    # Revalidated at each load, so that a new version of the page is never stale.
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
