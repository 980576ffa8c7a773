"""The local directory store of the embedded mode.

Signed URLs point at the head API's `/v1/objects/{key}` route with an expiry and an HMAC, so a
pilot downloads over HTTP exactly as it would from S3.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from ess_common import metrics
from ess_common.errors import Forbidden, NotFound
from ess_common.store.base import StoredObject, check_key


def sign(secret: bytes, key: str, expires: int) -> str:
    return hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def verify(secret: bytes, key: str, expires: int, signature: str) -> None:
    if expires < time.time():
        raise Forbidden("signed URL has expired")
    # As bytes: compare_digest refuses str with non-ASCII characters, which anyone may send.
    if not hmac.compare_digest(sign(secret, key, expires).encode(), signature.encode()):
        raise Forbidden("signed URL signature does not match")


class LocalStore:
    def __init__(self, root: Path, base_url: str, secret: bytes) -> None:
        self.root = root
        self.base_url = base_url.rstrip("/")
        self.secret = secret

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put_file(self, key: str, path: Path) -> None:
        target = self.path(key)

        def _copy() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)

        await asyncio.to_thread(_copy)
        metrics.uploaded("local", target.stat().st_size)

    async def get_bytes(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        target = self.path(key)

        def _read() -> bytes:
            try:
                with target.open("rb") as f:
                    f.seek(start or 0)
                    return f.read() if end is None else f.read(end - (start or 0) + 1)
            except FileNotFoundError as exc:
                raise NotFound("object", key) from exc

        return await asyncio.to_thread(_read)

    async def download(self, key: str, path: Path) -> None:
        source = self.path(key)
        # A directory (the prefix of other keys) is no object, as in S3.
        if not source.is_file():
            raise NotFound("object", key)
        await asyncio.to_thread(shutil.copyfile, source, path)

    async def size(self, key: str) -> int | None:
        try:
            found = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return found.st_size if stat.S_ISREG(found.st_mode) else None

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self._delete_prefix, self.path(prefix))

    def _delete_prefix(self, path: Path) -> int:
        deleted = 0
        if not path.parent.is_dir():
            return 0
        for entry in path.parent.iterdir():
            if not entry.name.startswith(path.name):
                continue
            if entry.is_dir():
                files = [f for f in entry.rglob("*") if f.is_file()]
                for found in files:
                    found.unlink(missing_ok=True)
                deleted += len(files)
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
                deleted += 1
        return deleted

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        found = await asyncio.to_thread(self._list, self.path(prefix))
        for item in found:
            yield item

    def _list(self, path: Path) -> list[StoredObject]:
        if not path.parent.is_dir():
            return []
        found = []
        for entry in path.parent.iterdir():
            if not entry.name.startswith(path.name):
                continue
            for item in [entry] if entry.is_file() else entry.rglob("*"):
                if item.is_file() and not item.name.startswith("."):
                    stat = item.stat()
                    key = item.relative_to(self.root).as_posix()
                    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                    found.append(StoredObject(key, stat.st_size, modified))
        return found

    async def signed_url(self, key: str, ttl_s: int) -> str:
        check_key(key)
        metrics.SIGNED_URLS.labels("local").inc()
        expires = int(time.time()) + ttl_s
        # A number and a hex digest: nothing to encode.
        signature = sign(self.secret, key, expires)
        return f"{self.base_url}/v1/objects/{quote(key)}?expires={expires}&signature={signature}"
