"""`GET /v1/ranges` answers a plain request before routing (`lookup_shortcut`), on the hot
reads' pool on PostgreSQL: every request, plain or not, gets exactly the answer of the route as
declared (SQLite and PostgreSQL), and the plain ones do take the short path.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Scope

from ess_common.db.hot_reads import hot_reads
from ess_common.db.session import SessionMaker, engine_of
from ess_common.events import MAX_EVENT
from ess_common.store.local import LocalStore
from ess_common.tokens import TokenBook
from ess_head_api import lookup_shortcut
from ess_head_api.auth import Role
from tests.head_api.support import SCOPE, Head, Prepared, prepare, running_head

TOKENS = {role: secrets.token_hex(16) for role in Role}
LFN = "EVNT.08716373._000061.pool.root.1"
PLAIN = {"scope": SCOPE, "LFN": LFN, "startEvent": "123", "lastEvent": "250"}


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    tokens = {role.value: [token] for role, token in TOKENS.items()}
    async with hot_reads(engine_of(sessions)), running_head(sessions, store, tokens=tokens) as head:
        yield head


@pytest.fixture
async def prepared(head: Head, sessions: SessionMaker, tmp_path: Path) -> Prepared:
    return await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="task-plain",
        lfn=LFN,
        n_events=1000,
        events_per_range=100,
    )


def bearer(role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def asked(**changes: str | None) -> dict[str, str]:
    params = {**PLAIN, **changes}
    return {k: v for k, v in params.items() if v is not None}


#: (why, query, headers, whether the short path answers it)
CASES: list[tuple[str, dict[str, str], dict[str, str], bool]] = [
    ("plain", asked(), bearer(Role.PILOT), True),
    ("an edge's token", asked(), bearer(Role.EDGE), True),
    ("PanDA's token", asked(), bearer(Role.PANDA), True),
    ("admin's token", asked(), bearer(Role.ADMIN), True),
    ("lower-case scheme", asked(), {"Authorization": f"bearer {TOKENS[Role.PILOT]}"}, True),
    ("leading zeros", asked(startEvent="0123"), bearer(Role.PILOT), True),
    ("straddling two files", asked(startEvent="150", lastEvent="420"), bearer(Role.PILOT), True),
    ("an unknown file", asked(LFN="EVNT.unknown.pool.root.1"), bearer(Role.PILOT), True),
    ("beyond the file", asked(lastEvent="5000"), bearer(Role.PILOT), True),
    ("last before start", asked(startEvent="300", lastEvent="200"), bearer(Role.PILOT), True),
    ("start at zero", asked(startEvent="0"), bearer(Role.PILOT), True),
    ("a site", asked(site="CERN-PROD"), bearer(Role.PILOT), True),
    ("coordinates", asked(latitude="46.2", longitude="6.1"), bearer(Role.PILOT), True),
    ("an unknown parameter", asked(colour="blue"), bearer(Role.PILOT), True),
    ("no token", asked(), {}, False),
    ("an unknown token", asked(), {"Authorization": "Bearer not-a-known-token"}, False),
    ("another scheme", asked(), {"Authorization": f"Basic {TOKENS[Role.PILOT]}"}, False),
    ("no LFN", asked(LFN=None), bearer(Role.PILOT), False),
    ("an empty scope", asked(scope=""), bearer(Role.PILOT), False),
    ("a negative start", asked(startEvent="-1"), bearer(Role.PILOT), False),
    ("a decimal position", asked(startEvent="1.0"), bearer(Role.PILOT), False),
    ("a word for a position", asked(lastEvent="ten"), bearer(Role.PILOT), False),
    ("beyond the largest event", asked(lastEvent=str(MAX_EVENT + 1)), bearer(Role.PILOT), False),
    ("an eleven-digit position", asked(lastEvent="00000000250"), bearer(Role.PILOT), False),
    ("latitude out of bounds", asked(latitude="91", longitude="0"), bearer(Role.PILOT), False),
    ("a word for a latitude", asked(latitude="north"), bearer(Role.PILOT), False),
    ("a site too long", asked(site="s" * 256), bearer(Role.PILOT), False),
]


def without_urls(body: Any) -> Any:
    """The answer with its signed URLs cut at their expiry (made from the clock)."""
    if isinstance(body, dict):
        return {
            k: v.split("?")[0] if k == "url" and isinstance(v, str) else without_urls(v)
            for k, v in body.items()
        }
    if isinstance(body, list):
        return [without_urls(v) for v in body]
    return body


@pytest.mark.parametrize(("why", "query", "headers", "short"), CASES, ids=[c[0] for c in CASES])
async def test_every_request_gets_the_declared_routes_answer(
    head: Head,
    prepared: Prepared,
    monkeypatch: pytest.MonkeyPatch,
    why: str,
    query: dict[str, str],
    headers: dict[str, str],
    short: bool,
) -> None:
    taken: list[bool] = []
    plain_lookup = lookup_shortcut.plain_lookup

    def spy(book: TokenBook, scope: Scope) -> Any:
        found = plain_lookup(book, scope)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(lookup_shortcut, "plain_lookup", spy)
    fast = await head.client.get("/v1/ranges", params=query, headers=headers)
    assert taken == [short], why

    monkeypatch.setattr(lookup_shortcut, "plain_lookup", lambda *_: None)
    declared = await head.client.get("/v1/ranges", params=query, headers=headers)

    assert fast.status_code == declared.status_code, (why, fast.text, declared.text)
    assert dict(fast.headers) == dict(declared.headers) | {
        "content-length": fast.headers["content-length"]
    }
    assert without_urls(fast.json()) == without_urls(declared.json())


async def test_the_open_api_keeps_a_token_off(
    sessions: SessionMaker, tmp_path: Path, prepared: Prepared
) -> None:
    """With no token configured every caller is admitted, on the short path too."""
    store = LocalStore(tmp_path / "open-objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store) as open_head:
        response = await open_head.client.get("/v1/ranges", params=PLAIN)
    assert response.status_code == 200, response.text
    assert [p["start_event"] for p in response.json()["pieces"]] == [123, 201]
