"""The edge takes the head's tokens: asked of the head's `GET /v1/whoami` (kept a while,
refusals shorter), or checked by the edge itself when it is given the same `ESS_TOKENS`."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from ess_common.db.session import SessionMaker
from ess_common.errors import RetryableError, Unauthorized
from ess_common.store.base import ObjectStore
from ess_common.tokens import TokenBook
from ess_edge.auth import Gate
from tests.head_api.support import running_head

PILOT = secrets.token_hex(16)
PANDA = secrets.token_hex(16)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.asked = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.asked += 1
        return await self.inner.handle_async_request(request)


async def test_tokens_are_asked_of_the_head_and_kept_a_while(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path
) -> None:
    tokens = {"pilot": [PILOT], "panda": [PANDA]}
    async with running_head(sessions, store, tokens=tokens) as head:
        transport = Counting(httpx.ASGITransport(app=head.client._transport.app))  # type: ignore[attr-defined]
        async with httpx.AsyncClient(transport=transport, base_url="http://head") as http:
            clock = Clock()
            gate = Gate(http, "http://head", clock=clock)
            assert await gate.check(f"Bearer {PILOT}") == "pilot"
            assert await gate.check(f"Bearer {PILOT}") == "pilot"
            assert transport.asked == 1
            assert await gate.check(f"Bearer {PANDA}") == "panda"
            with pytest.raises(Unauthorized, match="not known"):
                await gate.check("Bearer " + "x" * 32)
            with pytest.raises(Unauthorized, match="required"):
                await gate.check(None)
            asked = transport.asked
            clock.now += 10  # past the keep of a refusal, not of a role
            assert await gate.check(f"Bearer {PILOT}") == "pilot"
            with pytest.raises(Unauthorized):
                await gate.check("Bearer " + "x" * 32)
            assert transport.asked == asked + 1


async def test_an_open_head_opens_the_edge_and_an_unreachable_one_is_503() -> None:
    async def open_head(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"role": "admin"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(open_head)) as http:
        assert await Gate(http, "http://head").check(None) == "admin"

    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(down)) as http:
        with pytest.raises(RetryableError, match="unreachable"):
            await Gate(http, "http://head").check(f"Bearer {PILOT}")


async def test_an_edge_given_the_tokens_checks_them_itself() -> None:
    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    book = TokenBook.from_settings({"pilot": [SecretStr(PILOT)]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(down)) as http:
        gate = Gate(http, "http://head", book=book)
        assert await gate.check(f"Bearer {PILOT}") == "pilot"
        with pytest.raises(Unauthorized):
            await gate.check(f"Bearer {PANDA}")
        with pytest.raises(Unauthorized):
            await gate.check(f"Basic {PILOT}")
