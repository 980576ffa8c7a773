"""The S3 object store (aiobotocore), path-style addressing so that any S3 server works.

Presigned URLs are made by `presign.Presigner` when it makes botocore's URLs to the byte (it is
checked when the store starts), else by botocore.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from ess_common import metrics
from ess_common.errors import NotFound, RetryableError
from ess_common.store.base import StoredObject, check_key
from ess_common.store.presign import Presigner

log = structlog.get_logger("ess.store.s3")

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
#: What a server without multi-object delete answers it.
_NO_MULTI_DELETE = {"NotImplemented", "MethodNotAllowed", "501", "405"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


def _content_md5(params: dict[str, Any], **_: Any) -> None:
    """Give a multi-object delete the Content-MD5 that S3 requires of it: botocore sends a
    CRC32 checksum instead, which servers such as Swift's s3api do not accept."""
    body = params.get("body")
    if isinstance(body, bytes | bytearray):
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        params["headers"]["Content-MD5"] = base64.b64encode(digest).decode()


class S3Store:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        create_bucket: bool = True,
        max_connections: int = 10,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.create_bucket = create_bucket
        # One client, its pool as large as the uploads run at once: no upload waits for a
        # connection, and each connection is kept alive across objects.
        self.max_connections = max(10, max_connections)
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._presigner: Presigner | None = None
        self._one_by_one = False

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3 store not started")
        return self._client

    async def start(self) -> None:
        session = get_session()
        config = AioConfig(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=self.max_connections,
        )
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name=self.region,
                config=config,
            )
        )
        self._client.meta.events.register("before-call.s3.DeleteObjects", _content_md5)
        if self.access_key and self.secret_key:
            self._presigner = await Presigner.matching(
                self._client, self.bucket, self.access_key, self.secret_key
            )
        log.info("s3.presign", by="ess" if self._presigner is not None else "botocore")
        if self.create_bucket:
            await self.ensure_bucket()

    async def ensure_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if not _missing(exc):
                raise
            try:
                await self.client.create_bucket(Bucket=self.bucket)
            except ClientError as again:
                code = again.response.get("Error", {}).get("Code")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
        self._presigner = None

    async def put_file(self, key: str, path: Path) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        try:
            await self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except ClientError as exc:
            raise RetryableError(f"upload of {key} failed: {exc}") from exc
        metrics.uploaded("s3", len(data))

    async def get_bytes(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if start is not None or end is not None:
            kwargs["Range"] = f"bytes={start or 0}-{'' if end is None else end}"
        try:
            response = await self.client.get_object(**kwargs)
        except ClientError as exc:
            if _missing(exc):
                raise NotFound("object", key) from exc
            raise
        async with response["Body"] as body:
            data: bytes = await body.read()
            return data

    async def download(self, key: str, path: Path) -> None:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _missing(exc):
                raise NotFound("object", key) from exc
            raise
        with path.open("wb") as out:
            async with response["Body"] as body:
                # aiobotocore's streaming body: `read` checks the length against Content-Length.
                async for chunk in body.iter_chunks(1 << 20):
                    out.write(chunk)

    async def size(self, key: str) -> int | None:
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return int(head["ContentLength"])

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`, up to a thousand in one request (a server
        without multi-object delete gets one request per object)."""
        deleted = 0
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys = [str(found["Key"]) for found in page.get("Contents", [])]
            if keys:
                deleted += await self._delete_keys(keys)
        return deleted

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        own = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for found in page.get("Contents", []):
                key = str(found["Key"]).removeprefix(own)
                yield StoredObject(key, int(found["Size"]), found["LastModified"])

    async def _delete_keys(self, keys: list[str]) -> int:
        if self._one_by_one:
            for key in keys:
                await self.client.delete_object(Bucket=self.bucket, Key=key)
            return len(keys)
        try:
            response = await self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in _NO_MULTI_DELETE:
                raise
            log.info("s3.multi_delete_unsupported", endpoint=self.endpoint_url)
            self._one_by_one = True
            return await self._delete_keys(keys)
        failed = [e for e in response.get("Errors", []) if str(e.get("Code")) not in _MISSING]
        if failed:
            first = failed[0]
            raise RetryableError(
                f"{len(failed)} of {len(keys)} objects were not deleted; "
                f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
            )
        return len(keys)

    async def signed_url(self, key: str, ttl_s: int) -> str:
        metrics.SIGNED_URLS.labels("s3").inc()
        if self._presigner is not None:
            return self._presigner.url(self._key(key), ttl_s)
        url: str = await self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=ttl_s,
        )
        return url
