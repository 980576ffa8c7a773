"""ESS's own presigned S3 URLs are botocore's to the byte, for every form of endpoint and key
it is used for, and serve the object from the real S3 server; a configuration it does not
follow keeps botocore's URLs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from ess_common.store.presign import Presigner

if TYPE_CHECKING:
    from tests.conftest import S3Server

ACCESS, SECRET = "AKIDEXAMPLE:user", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
KEYS = [
    "ranges/mc16_13TeV/EVNT.08716373._000061.pool.root.1/e100/f1.a1/000000001-000000100.root",
    "on-demand/user.jdoe/DAOD+x=y.root/000000001-000000001.root",
    "a",
    "prefix/with.many/levels_and-dashes/0",
]
ENDPOINTS: list[tuple[str | None, str]] = [
    ("http://127.0.0.1:8080", "us-east-1"),
    ("https://s3.cern.example.org", "cern"),
    ("https://objects.example.org:9000/", "us-east-1"),
    (None, "eu-west-1"),
]


@asynccontextmanager
async def client(endpoint: str | None, region: str, **credentials: str) -> AsyncIterator[Any]:
    config = AioConfig(s3={"addressing_style": "path"}, signature_version="s3v4")
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=config,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        **credentials,
    ) as made:
        yield made


def signed_at(url: str) -> float:
    stamp = httpx.URL(url).params["X-Amz-Date"]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("endpoint", "region"), ENDPOINTS)
async def test_the_urls_are_botocores(endpoint: str | None, region: str) -> None:
    async with client(endpoint, region) as s3:
        presigner = await Presigner.matching(s3, "ess-ranges", ACCESS, SECRET)
        assert presigner is not None
        for key in KEYS:
            for ttl in (1, 600, 7 * 24 * 3600):
                theirs = await s3.generate_presigned_url(
                    "get_object", Params={"Bucket": "ess-ranges", "Key": key}, ExpiresIn=ttl
                )
                assert presigner.url(key, ttl, signed_at(theirs)) == theirs


async def test_a_session_token_keeps_botocores_urls() -> None:
    async with client("http://127.0.0.1:8080", "us-east-1", aws_session_token="token") as s3:
        assert await Presigner.matching(s3, "ess-ranges", ACCESS, SECRET) is None


async def test_other_keys_than_the_clients_keep_botocores_urls() -> None:
    async with client("http://127.0.0.1:8080", "us-east-1") as s3:
        assert await Presigner.matching(s3, "ess-ranges", "another", SECRET) is None


async def test_the_store_signs_its_own_urls_and_they_serve_the_object(
    s3_server: S3Server, tmp_path: Path
) -> None:
    settings = await s3_server.check()
    store = settings.store(f"ess-t-{uuid.uuid4().hex[:12]}", prefix="under/a/prefix")
    await store.start()
    key = KEYS[1]
    try:
        assert store._presigner is not None
        source = tmp_path / "object"
        source.write_bytes(b"the bytes of a range file")
        await store.put_file(key, source)
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(await store.signed_url(key, 60))
        assert answer.status_code == 200, answer.text
        assert answer.content == b"the bytes of a range file"
        await store.delete(key)
        await store.client.delete_bucket(Bucket=store.bucket)
    finally:
        await store.close()
