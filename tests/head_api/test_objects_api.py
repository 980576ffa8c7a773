"""Downloading what a lookup answers: the signed URL of each piece, from the real S3 server or,
in the embedded mode, from the head API's `/v1/objects` route, which checks the signature,
the expiry and the key before serving a byte."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from ess_common.checksums import adler32_of_bytes
from ess_common.db.session import SessionMaker
from ess_common.store.base import ObjectStore
from ess_common.store.local import LocalStore, sign
from tests.head_api.support import SCOPE, Head, prepare, range_content, running_head

LFN = "EVNT.08716373._000061.pool.root.1"
#: Rucio's alphabet allows '+', which URL encodings are apt to turn into a space.
PLUS_LFN = "user.jdoe.HZZ+bkg._000061.root"
SECRET = b"k"


@pytest.fixture
async def head(sessions: SessionMaker, store: ObjectStore) -> AsyncIterator[Head]:
    async with running_head(sessions, store) as running:
        yield running


@pytest.fixture
async def local_head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", SECRET)
    await store.start()
    async with running_head(sessions, store) as running:
        yield running


@pytest.mark.parametrize("lfn", [LFN, PLUS_LFN])
async def test_each_piece_downloads_from_its_signed_url(
    head: Head, sessions: SessionMaker, tmp_path: Path, lfn: str
) -> None:
    await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="task-dl",
        lfn=lfn,
        n_events=300,
        events_per_range=100,
    )
    answer = await head.client.get(
        "/v1/ranges", params={"scope": SCOPE, "LFN": lfn, "startEvent": 150, "lastEvent": 250}
    )
    assert answer.status_code == 200, answer.text
    pieces = answer.json()["pieces"]
    assert [p["file_first_event"] for p in pieces] == [101, 201]

    if isinstance(head.state.store, LocalStore):
        # Embedded mode: the URL points at the head API itself.
        assert all(p["url"].startswith("http://testserver/v1/objects/") for p in pieces)
        downloads = [await head.client.get(p["url"]) for p in pieces]
    else:
        # A real GET on the presigned URL, straight from the S3 server, no credentials.
        async with httpx.AsyncClient(timeout=10) as client:
            downloads = [await client.get(p["url"]) for p in pieces]

    for piece, download in zip(pieces, downloads, strict=True):
        assert download.status_code == 200, download.text
        expected = range_content(lfn, piece["file_first_event"], piece["file_last_event"])
        assert download.content == expected
        assert len(download.content) == piece["size"]
        assert adler32_of_bytes(download.content) == piece["adler32"]


async def test_objects_route_serves_the_local_store_only(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    prepared = await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="task-s3",
        lfn=LFN,
        n_events=100,
        events_per_range=100,
    )
    key = prepared.ranges[0].key
    expires = int(time.time()) + 60
    signature = sign(SECRET, key, expires)

    response = await head.client.get(
        f"/v1/objects/{key}", params={"expires": expires, "signature": signature}
    )

    if isinstance(head.state.store, LocalStore):
        assert response.status_code == 200
        assert response.content == range_content(LFN, 1, 100)
    else:
        # With S3 the pilot downloads from the object store: the head holds no bytes.
        assert response.status_code == 404, response.text


async def signed_piece(head: Head, sessions: SessionMaker, tmp_path: Path) -> tuple[str, str]:
    """A prepared range's signed URL (path and query, as the head API serves it) and its key."""
    prepared = await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="task-sig",
        lfn=LFN,
        n_events=100,
        events_per_range=100,
    )
    key = prepared.ranges[0].key
    url = await head.state.store.signed_url(key, 60)
    return url, key


async def test_tampered_signature_is_refused(
    local_head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    url, key = await signed_piece(local_head, sessions, tmp_path)
    ok = await local_head.client.get(url)
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "application/octet-stream"
    query = parse_qs(urlsplit(url).query)
    expires, signature = query["expires"][0], query["signature"][0]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]

    tampered = await local_head.client.get(
        f"/v1/objects/{key}", params={"expires": expires, "signature": flipped}
    )
    # The signature of one key does not open another, nor a later expiry.
    other_key = key.replace("000000001-000000100", "000000001-000000099")
    other = await local_head.client.get(
        f"/v1/objects/{other_key}", params={"expires": expires, "signature": signature}
    )
    extended = await local_head.client.get(
        f"/v1/objects/{key}", params={"expires": int(expires) + 3600, "signature": signature}
    )

    for refused in (tampered, other, extended):
        assert refused.status_code == 403, refused.text
        assert "signature does not match" in refused.json()["detail"]


async def test_expired_url_is_refused(
    local_head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    _, key = await signed_piece(local_head, sessions, tmp_path)
    expired = int(time.time()) - 5

    response = await local_head.client.get(
        f"/v1/objects/{key}", params={"expires": expired, "signature": sign(SECRET, key, expired)}
    )

    assert response.status_code == 403, response.text
    assert "expired" in response.json()["detail"]


async def test_url_without_its_signature_is_refused(
    local_head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    _, key = await signed_piece(local_head, sessions, tmp_path)
    for params in ({}, {"expires": "soon", "signature": "x"}, {"expires": "1"}):
        response = await local_head.client.get(f"/v1/objects/{key}", params=params)
        assert response.status_code == 422, (params, response.text)


async def test_signed_url_of_a_missing_object_is_404(local_head: Head) -> None:
    key = "ranges/mc15_13TeV/EVNT.x/e100/f9.a1/000000001-000000100.root"
    expires = int(time.time()) + 60

    response = await local_head.client.get(
        f"/v1/objects/{key}", params={"expires": expires, "signature": sign(SECRET, key, expires)}
    )

    assert response.status_code == 404, response.text


@pytest.mark.parametrize(
    "key", ["../secret.txt", "ranges/../../secret.txt", "ranges/./x/../../../secret.txt"]
)
async def test_key_climbing_out_of_the_store_is_refused(
    local_head: Head, tmp_path: Path, key: str
) -> None:
    # A file beside the store's root: a key with '..' must not reach it, even correctly signed.
    (tmp_path / "secret.txt").write_text("not for pilots")
    expires = int(time.time()) + 60
    query: dict[str, str | int] = {"expires": expires, "signature": sign(SECRET, key, expires)}
    # Escaped so that no client normalises the dots away: the route itself sees the key.
    escaped = quote(key, safe="").replace(".", "%2E")

    refused = await local_head.client.get(f"/v1/objects/{escaped}", params=query)
    assert refused.status_code == 422, refused.text
    assert "not a safe relative path" in refused.json()["detail"]
    # Unescaped, the client resolves the dots and the path leaves the route: still no file.
    plain = await local_head.client.get(f"/v1/objects/{quote(key, safe='/')}", params=query)
    assert 400 <= plain.status_code < 500
    assert b"not for pilots" not in plain.content
