"""The object-store contract, for the local directory and the real S3 server alike."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from ess_common.errors import NotFound, PermanentError
from ess_common.store.base import BadKey, ObjectStore, attempts_prefix, check_key, range_key
from ess_common.store.local import LocalStore, sign, verify
from ess_common.store.s3 import S3Store
from tests.helpers import eventually

DATA = bytes(range(256)) * 40 + b"tail"
KEY = "ranges/mc15_13TeV/EVNT.08716373._000060.pool.root.1/e100/f1.a1/000000001-000000100.root"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "upload.root"
    path.write_bytes(DATA)
    return path


async def test_put_then_get_size_download_delete(
    store: ObjectStore, source: Path, tmp_path: Path
) -> None:
    await store.put_file(KEY, source)

    assert await store.size(KEY) == len(DATA)
    assert await store.get_bytes(KEY) == DATA
    target = tmp_path / "downloaded.root"
    await store.download(KEY, target)
    assert target.read_bytes() == DATA

    await store.delete(KEY)
    assert await store.size(KEY) is None
    with pytest.raises(NotFound):
        await store.get_bytes(KEY)


async def test_delete_prefix_deletes_what_starts_with_it_and_nothing_else(
    store: ObjectStore, source: Path
) -> None:
    prefix = attempts_prefix("mc15_13TeV", "EVNT.08716373._000060.pool.root.1", 100, 1)
    doomed = [
        range_key("mc15_13TeV", "EVNT.08716373._000060.pool.root.1", 100, 1, attempt, 1, 100)
        for attempt in (1, 2, 10)
    ]
    doomed.append(doomed[0].replace("000000001-000000100", "000000101-000000200"))
    kept = [
        # Another file whose id starts alike, the same file split at another size, another LFN.
        range_key("mc15_13TeV", "EVNT.08716373._000060.pool.root.1", 100, 12, 1, 1, 100),
        range_key("mc15_13TeV", "EVNT.08716373._000060.pool.root.1", 50, 1, 1, 1, 50),
        range_key("mc15_13TeV", "EVNT.08716373._000061.pool.root.1", 100, 1, 1, 1, 100),
    ]
    for key in doomed + kept:
        await store.put_file(key, source)

    assert await store.delete_prefix(prefix) == len(doomed)

    assert [await store.size(key) for key in doomed] == [None] * len(doomed)
    assert [await store.size(key) for key in kept] == [len(DATA)] * len(kept)
    assert await store.delete_prefix(prefix) == 0
    for key in kept:
        await store.delete(key)


@pytest.mark.parametrize("store", ["s3"], indirect=True)
@pytest.mark.parametrize("one_by_one", [False, True], ids=["batched", "one-by-one"])
async def test_s3_deletes_more_objects_than_one_listing_holds(
    store: ObjectStore, source: Path, one_by_one: bool
) -> None:
    """Listings and multi-object deletes hold 1,000 keys: a prefix with more takes several
    of each (and a server without multi-object delete gets one request per object)."""
    assert isinstance(store, S3Store)
    store._one_by_one = one_by_one
    prefix = f"bulk-{one_by_one:d}"
    count = 1_003 if not one_by_one else 25
    keys = [f"{prefix}/{n:05d}.root" for n in range(count)]
    limit = asyncio.Semaphore(16)

    async def put(key: str) -> None:
        async with limit:
            await store.put_file(key, source)

    await asyncio.gather(*(put(key) for key in keys))
    await store.put_file("bulk-kept/00000.root", source)

    assert await store.delete_prefix(prefix) == count
    assert await store.size(keys[0]) is None and await store.size(keys[-1]) is None
    assert await store.delete_prefix(prefix) == 0
    assert await store.size("bulk-kept/00000.root") == len(DATA)
    await store.delete("bulk-kept/00000.root")


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 0, DATA[:1]),
        (10, 19, DATA[10:20]),
        (1000, None, DATA[1000:]),
        (None, 99, DATA[:100]),
        (len(DATA) - 4, len(DATA) + 100, b"tail"),
    ],
    ids=["first-byte", "middle", "open-end", "open-start", "past-the-end"],
)
async def test_ranged_get_is_inclusive(
    store: ObjectStore, source: Path, start: int | None, end: int | None, expected: bytes
) -> None:
    await store.put_file(KEY, source)
    assert await store.get_bytes(KEY, start, end) == expected


async def test_put_replaces_an_object(store: ObjectStore, source: Path, tmp_path: Path) -> None:
    await store.put_file(KEY, source)
    smaller = tmp_path / "smaller"
    smaller.write_bytes(b"second version")
    await store.put_file(KEY, smaller)
    assert await store.get_bytes(KEY) == b"second version"
    assert await store.size(KEY) == len(b"second version")


async def test_missing_objects(store: ObjectStore, tmp_path: Path) -> None:
    missing = "ranges/nothing/here.root"
    assert await store.size(missing) is None
    with pytest.raises(NotFound):
        await store.get_bytes(missing)
    with pytest.raises(NotFound):
        await store.get_bytes(missing, 0, 10)
    with pytest.raises(NotFound):
        await store.download(missing, tmp_path / "never")
    # Deleting what is not there is not an error: deletes are retried.
    await store.delete(missing)


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "a/../b", ""])
async def test_every_operation_refuses_an_unsafe_key(
    store: ObjectStore, source: Path, tmp_path: Path, key: str
) -> None:
    with pytest.raises(BadKey):
        await store.put_file(key, source)
    with pytest.raises(BadKey):
        await store.get_bytes(key)
    with pytest.raises(BadKey):
        await store.size(key)
    with pytest.raises(BadKey):
        await store.signed_url(key, 60)
    if isinstance(store, LocalStore):
        assert not (store.root.parent / "x").exists()


async def test_signed_url_gives_the_bytes_until_it_expires(
    store: ObjectStore, source: Path
) -> None:
    await store.put_file(KEY, source)
    url = httpx.URL(await store.signed_url(KEY, 60))

    if isinstance(store, S3Store):
        async with httpx.AsyncClient(timeout=10) as client:
            good = await client.get(url)
            assert good.status_code == 200, good.text
            assert good.content == DATA

            tampered = url.copy_set_param("X-Amz-Signature", _flip(url.params["X-Amz-Signature"]))
            assert (await client.get(tampered)).status_code == 403
            longer = url.copy_set_param("X-Amz-Expires", "86400")
            assert (await client.get(longer)).status_code == 403

            short = await store.signed_url(KEY, 1)

            async def refused() -> bool:
                return (await client.get(short)).status_code == 403

            await eventually(refused, timeout=10, interval=0.2, message="URL never expired")
    elif isinstance(store, LocalStore):
        # The head API's /v1/objects route serves it; here the signature itself is checked.
        assert str(url).startswith("http://testserver/v1/objects/")
        key = unquote(url.path.removeprefix("/v1/objects/"))
        expires = int(url.params["expires"])
        signature = url.params["signature"]
        assert key == KEY
        assert 0 < expires - time.time() <= 60
        verify(store.secret, key, expires, signature)

        with pytest.raises(PermanentError, match="does not match"):
            verify(store.secret, key, expires, _flip(signature))
        with pytest.raises(PermanentError, match="does not match"):
            verify(store.secret, "ranges/other.root", expires, signature)
        with pytest.raises(PermanentError, match="does not match"):
            verify(store.secret, key, expires + 3600, signature)
        with pytest.raises(PermanentError, match="does not match"):
            verify(b"another secret", key, expires, signature)
        past = int(time.time()) - 1
        with pytest.raises(PermanentError, match="expired"):
            verify(store.secret, key, past, sign(store.secret, key, past))
    else:
        raise AssertionError(f"no signed-URL check for {type(store).__name__}")


@pytest.mark.parametrize(
    "key",
    ["../x", "/abs", "a//b", "a/./b", "", "a/..", "..", ".", "a/", "a b", "a\\b", "x" * 1025],
)
def test_check_key_refuses(key: str) -> None:
    with pytest.raises(BadKey):
        check_key(key)


@pytest.mark.parametrize("key", [KEY, "a", "a/b.c/d_e-f+g=h", "x" * 1024])
def test_check_key_accepts(key: str) -> None:
    assert check_key(key) == key


def test_range_key_passes_check_key_and_is_deterministic() -> None:
    key = range_key("mc15_13TeV", "EVNT.08716373._000060.pool.root.1", 100, 17, 2, 201, 300)
    assert check_key(key) == key
    assert key == range_key("mc15_13TeV", "EVNT.08716373._000060.pool.root.1", 100, 17, 2, 201, 300)
    assert key != range_key("mc15_13TeV", "EVNT.08716373._000060.pool.root.1", 100, 17, 3, 201, 300)
    assert key.endswith("/000000201-000000300.root")


def test_range_key_refuses_names_that_climb_out() -> None:
    with pytest.raises(BadKey):
        range_key("mc15_13TeV", "..", 100, 1, 1, 1, 100)
    with pytest.raises(BadKey):
        range_key("../mc", "f.root", 100, 1, 1, 1, 100)


def _flip(signature: str) -> str:
    return ("0" if signature[0] != "0" else "1") + signature[1:]
