"""Playing the pilot: look up a PanDA event range, download every piece, verify it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ess_common.checksums import adler32_of_file
from ess_common.errors import ChecksumMismatch


@dataclass(frozen=True)
class FetchedPiece:
    path: Path
    piece: dict[str, Any]


async def lookup(
    client: httpx.AsyncClient, head_url: str, scope: str, lfn: str, start: int, last: int
) -> list[dict[str, Any]]:
    response = await client.get(
        f"{head_url}/v1/ranges",
        params={"scope": scope, "LFN": lfn, "startEvent": start, "lastEvent": last},
    )
    response.raise_for_status()
    pieces: list[dict[str, Any]] = response.json()["pieces"]
    return pieces


async def download(client: httpx.AsyncClient, piece: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / Path(piece["key"]).name
    async with client.stream("GET", piece["url"]) as response:
        response.raise_for_status()
        with target.open("wb") as out:
            async for chunk in response.aiter_bytes(1 << 20):
                out.write(chunk)
    size = target.stat().st_size
    if size != piece["size"]:
        raise ChecksumMismatch(f"size of {target.name}", str(piece["size"]), str(size))
    actual = adler32_of_file(target)
    if actual != piece["adler32"]:
        raise ChecksumMismatch(f"adler32 of {target.name}", piece["adler32"], actual)
    return target


async def fetch_range(
    client: httpx.AsyncClient,
    head_url: str,
    scope: str,
    lfn: str,
    start: int,
    last: int,
    directory: Path,
) -> list[FetchedPiece]:
    pieces = await lookup(client, head_url, scope, lfn, start, last)
    return [FetchedPiece(await download(client, p, directory), p) for p in pieces]
