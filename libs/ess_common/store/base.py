"""What ESS asks of an object store, and the rule for its keys."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Protocol

from ess_common.errors import PermanentError

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*(/[A-Za-z0-9][A-Za-z0-9._+=-]*)*$")


class BadKey(PermanentError):
    pass


def check_key(key: str) -> str:
    """Keys are relative paths of safe words: nothing can climb out of its prefix."""
    if len(key) > 1024 or not _KEY.match(key) or any(p in (".", "..") for p in key.split("/")):
        raise BadKey(f"object key {key!r} is not a safe relative path")
    return key


def attempts_prefix(scope: str, lfn: str, events_per_range: int, file_id: int) -> str:
    """The prefix of the keys of every attempt at a request's file (`range_key`): what expiring
    the request deletes, the objects of attempts that never reported included."""
    return check_key(f"ranges/{scope}/{lfn}/e{events_per_range}/f{file_id}.a")


def range_key(
    scope: str, lfn: str, events_per_range: int, file_id: int, attempt: int, first: int, last: int
) -> str:
    """Where a range file lives. The same assignment always writes the same key."""
    prefix = attempts_prefix(scope, lfn, events_per_range, file_id)
    return check_key(f"{prefix}{attempt}/{first:09d}-{last:09d}.root")


def on_demand_key(scope: str, lfn: str, first: int, last: int) -> str:
    """Where a range split on demand lives: the same span always at the same key, whichever
    edge split it."""
    return check_key(f"on-demand/{scope}/{lfn}/{first:09d}-{last:09d}.root")


class StoredObject(NamedTuple):
    """One object as a listing shows it."""

    key: str
    size: int
    modified: datetime


class ObjectStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def put_file(self, key: str, path: Path) -> None: ...

    async def get_bytes(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or those from `start` to `end` inclusive."""

    async def download(self, key: str, path: Path) -> None: ...

    async def size(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix` (a checked key, which may end
        inside a name); returns how many were deleted."""

    async def signed_url(self, key: str, ttl_s: int) -> str:
        """A URL anyone may GET until it expires, made now."""

    def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object whose key starts with `prefix` (a checked key), with its size and
        when it was last written."""
        ...
