"""Bearer tokens by role on the head API (SQLite and PostgreSQL), the open routes, keys that
cannot climb out of their prefix, and the edges' signed messages to the broker (each bus).

No token or an unknown one is 401 with `WWW-Authenticate: Bearer`; a known token of a role
the route does not admit is 403; admin is admitted everywhere.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import structlog
from pydantic import SecretStr, ValidationError
from sqlalchemy import select

from ess_broker.service import Broker
from ess_common.db.models import DeadLetter, Edge, RequestStatus
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.edge_work import work_handler
from ess_common.errors import PermanentError
from ess_common.events import DatasetFile, FileAssigned, FileCached, FileWork
from ess_common.messaging.bus import (
    EDGE_SIGNATURE_HEADER,
    Bus,
    Delivery,
    edge_signature,
    publish_event,
)
from ess_common.settings import EdgeSettings, HeadSettings
from ess_common.store.local import LocalStore, sign
from ess_edge.heartbeat import send_heartbeat
from ess_head_api.app import create_app
from ess_head_api.auth import Role, TokenBook
from ess_head_api.state import HeadState
from tests.broker.factories import heartbeat
from tests.head_api.support import (
    SCOPE,
    Head,
    file_entry,
    prepare,
    request_body,
    running_head,
)
from tests.helpers import eventually

TOKENS = {role: secrets.token_hex(16) for role in Role}
LFN = "EVNT.08716373._000077.pool.root.1"
REQUEST_ID = "00000000-0000-0000-0000-000000000000"
SECRET = b"k"


def bearer(role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", SECRET)
    await store.start()
    tokens = {role.value: [token] for role, token in TOKENS.items()}
    async with running_head(sessions, store, tokens=tokens) as running:
        yield running


#: (method, path, body, the roles admitted besides admin)
ROUTES: list[tuple[str, str, dict[str, Any] | None, set[Role]]] = [
    ("POST", "/v1/requests", request_body("auth-task"), {Role.PANDA}),
    ("GET", "/v1/requests", None, {Role.PANDA, Role.PILOT}),
    ("GET", f"/v1/requests/{REQUEST_ID}", None, {Role.PANDA, Role.PILOT}),
    ("GET", f"/v1/requests/{REQUEST_ID}/ranges", None, {Role.PANDA, Role.PILOT}),
    ("GET", f"/v1/requests/{REQUEST_ID}/events", None, {Role.PANDA, Role.PILOT}),
    ("POST", f"/v1/requests/{REQUEST_ID}/cancel", None, {Role.PANDA}),
    ("POST", f"/v1/requests/{REQUEST_ID}/retry", None, {Role.PANDA}),
    (
        "GET",
        f"/v1/ranges?scope={SCOPE}&LFN={LFN}&startEvent=1&lastEvent=1",
        None,
        {Role.PILOT, Role.PANDA, Role.EDGE},
    ),
    (
        "POST",
        "/v1/ranges/lookup",
        {"eventRanges": []},
        {Role.PILOT, Role.PANDA, Role.EDGE},
    ),
    ("GET", "/v1/dead-letters", None, set()),
    ("POST", "/v1/admin/expire", None, set()),
]
ROUTE_IDS = [f"{method} {path.split('?')[0]}" for method, path, _, _ in ROUTES]


@pytest.mark.parametrize(("method", "path", "body", "roles"), ROUTES, ids=ROUTE_IDS)
async def test_each_role_may_do_what_its_routes_admit(
    head: Head, method: str, path: str, body: dict[str, Any] | None, roles: set[Role]
) -> None:
    for role in Role:
        response = await head.client.request(method, path, json=body, headers=bearer(role))
        if role in roles or role is Role.ADMIN:
            assert response.status_code not in (401, 403), (role, response.text)
        else:
            assert response.status_code == 403, (role, response.text)
            assert f"the {role} role may not do this" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body", "roles"), ROUTES, ids=ROUTE_IDS)
async def test_no_token_or_an_unknown_one_is_401(
    head: Head, method: str, path: str, body: dict[str, Any] | None, roles: set[Role]
) -> None:
    wrong = secrets.token_hex(16)
    for headers in (
        {},
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": f"Basic {TOKENS[Role.ADMIN]}"},
        {"Authorization": "Bearer"},
    ):
        response = await head.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_every_v1_route_of_the_app_needs_a_token(head: Head) -> None:
    """Whatever router is added later: the OpenAPI document lists every route, and each under
    /v1 but the signed downloads and the published schema refuses a caller without a token."""
    paths = (await head.client.get("/openapi.json")).json()["paths"]
    open_routes = {"/v1/objects/{key}", "/v1/schemas/request-created"}
    checked = 0
    for path, operations in paths.items():
        if not path.startswith("/v1/") or path in open_routes:
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method, operation in operations.items():
            response = await head.client.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.text)
            assert "401" in operation["responses"], (method, path)
            assert {"HTTPBearer": []} in operation.get("security", []), (method, path)
            checked += 1
    assert checked >= len(ROUTES)


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/openapi.json", "/docs", "/v1/schemas/request-created"]
)
async def test_health_and_documentation_are_open(head: Head, path: str) -> None:
    response = await head.client.get(path)
    assert response.status_code == 200, response.text


async def test_a_pilot_looks_up_and_downloads_but_cannot_create_or_cancel(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    prepared = await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="auth-pilot",
        lfn=LFN,
        n_events=200,
        events_per_range=100,
    )
    pilot = bearer(Role.PILOT)

    before = int(time.time())
    found = await head.client.get(
        "/v1/ranges",
        params={"scope": SCOPE, "LFN": LFN, "startEvent": 101, "lastEvent": 150},
        headers=pilot,
    )
    assert found.status_code == 200, found.text
    (piece,) = found.json()["pieces"]
    # Made at this lookup, alive for the configured minutes only.
    expires = int(re.search(r"expires=(\d+)", piece["url"]).group(1))  # type: ignore[union-attr]
    ttl = head.state.settings.signed_url_ttl_s
    assert before + ttl <= expires <= int(time.time()) + ttl
    # The signed URL is its own credential: no token goes with the download.
    download = await head.client.get(piece["url"])
    assert download.status_code == 200
    assert len(download.content) == piece["size"]

    status = await head.client.get(f"/v1/requests/{prepared.request_id}", headers=pilot)
    assert status.status_code == 200
    assert status.json()["status"] == RequestStatus.READY

    created = await head.client.post("/v1/requests", json=request_body("by-pilot"), headers=pilot)
    cancelled = await head.client.post(f"/v1/requests/{prepared.request_id}/cancel", headers=pilot)
    assert (created.status_code, cancelled.status_code) == (403, 403)


async def test_panda_creates_and_cancels_with_its_token(head: Head) -> None:
    panda = bearer(Role.PANDA)
    created = await head.client.post("/v1/requests", json=request_body("auth-2"), headers=panda)
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]
    cancelled = await head.client.post(f"/v1/requests/{request_id}/cancel", headers=panda)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == RequestStatus.CANCELLED


@pytest.mark.parametrize(
    "lfn", ["../../x", "EVNT/../../x", "..", "a/b", "%2e%2e%2fx", ".hidden", "x" * 300]
)
async def test_an_lfn_that_could_leave_its_prefix_is_refused(head: Head, lfn: str) -> None:
    body = request_body("auth-climb")
    body["files"][0]["lfn"] = lfn
    response = await head.client.post("/v1/requests", json=body, headers=bearer(Role.PANDA))
    assert response.status_code == 422, response.text
    assert any("lfn" in map(str, p["loc"]) for p in response.json()["detail"])


async def test_a_signed_key_climbing_out_is_refused_without_a_token(head: Head) -> None:
    key = "ranges/../../secret.txt"
    expires = int(time.time()) + 60
    escaped = quote(key, safe="").replace(".", "%2E")
    response = await head.client.get(
        f"/v1/objects/{escaped}",
        params={"expires": expires, "signature": sign(SECRET, key, expires)},
    )
    assert response.status_code == 422, response.text
    assert "not a safe relative path" in response.json()["detail"]


async def test_without_tokens_the_api_is_open_and_says_so_loudly(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "objects", "http://testserver", SECRET)
    with structlog.testing.capture_logs() as logs:
        async with running_head(sessions, store) as head:
            response = await head.client.post("/v1/requests", json=request_body("open"))
    assert response.status_code == 201, response.text
    (warning,) = [entry for entry in logs if entry["event"] == "auth.DISABLED"]
    assert warning["log_level"] == "warning"
    assert "ESS_TOKENS" in warning["detail"]


async def test_with_tokens_the_start_up_names_the_roles(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "objects", "http://testserver", SECRET)
    settings = HeadSettings.model_validate({"tokens": {"pilot": [TOKENS[Role.PILOT]]}})
    with structlog.testing.capture_logs() as logs:
        create_app(HeadState(settings, sessions, store, relay=None))  # type: ignore[arg-type]
    (entry,) = [e for e in logs if e["event"].startswith("auth.")]
    assert (entry["event"], entry["roles"]) == ("auth.enabled", ["pilot"])


def test_a_token_maps_to_its_role() -> None:
    book = TokenBook.from_settings({"pilot": [SecretStr("p" * 20)], "admin": [SecretStr("a" * 20)]})
    assert book.role_of("p" * 20) is Role.PILOT
    assert book.role_of("a" * 20) is Role.ADMIN
    assert book.role_of("p" * 19) is None
    assert book.role_of("") is None
    assert not TokenBook.from_settings({}).enabled


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        ({"operator": ["x" * 20]}, "unknown roles ['operator']"),
        ({"pilot": ["short"]}, "shorter than 16"),
        ({"pilot": [" " + "x" * 20]}, "surrounding spaces"),
        ({"pilot": ["x" * 20], "panda": ["x" * 20]}, "given twice or to two roles"),
    ],
)
def test_wrong_token_settings_stop_the_start(tokens: dict[str, list[str]], reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HeadSettings.model_validate({"tokens": tokens})
    assert reason in str(caught.value)


def test_tokens_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESS_TOKENS", json.dumps({"panda": [TOKENS[Role.PANDA]]}))
    settings = HeadSettings()
    assert [t.get_secret_value() for t in settings.tokens["panda"]] == [TOKENS[Role.PANDA]]
    # A secret is never shown by the settings.
    assert TOKENS[Role.PANDA] not in repr(settings)


# --- edges' messages ------------------------------------------------------------------------


async def dead_letters(sessions: SessionMaker) -> list[DeadLetter]:
    async with sessions() as session:
        return list((await session.scalars(select(DeadLetter).order_by(DeadLetter.id))).all())


async def edge_names(sessions: SessionMaker) -> set[str]:
    async with sessions() as session:
        return set((await session.scalars(select(Edge.name))).all())


@pytest.fixture
async def signed_broker(sessions: SessionMaker, bus: Bus) -> AsyncIterator[Broker]:
    settings = HeadSettings.model_validate(
        {"sweep_interval_s": 0.1, "tokens": {"edge": [TOKENS[Role.EDGE]]}}
    )
    broker = Broker(settings, bus, sessions)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def test_the_broker_takes_only_heartbeats_signed_with_an_edge_token(
    signed_broker: Broker, sessions: SessionMaker, bus: Bus, tmp_path: Path
) -> None:
    # Unsigned, then signed with a token the head does not know, then forged after signing.
    await publish_event(bus, heartbeat("edge-unsigned"))
    await publish_event(bus, heartbeat("edge-forged"), signed_with=SecretStr("y" * 32))
    beat = heartbeat("edge-altered")
    signature = edge_signature(beat.model_dump_json().encode(), SecretStr(TOKENS[Role.EDGE]))
    altered = beat.model_copy(update={"free_bytes": 1}).model_dump_json().encode()
    await bus.publish(beat.routing_key(), altered, headers={EDGE_SIGNATURE_HEADER: signature})
    # What a real edge sends: its heartbeat, signed with its token.
    edge = EdgeSettings.model_validate(
        {
            "edge_name": "edge-signed",
            "edge_cache_dir": tmp_path / "cache",
            "edge_token": TOKENS[Role.EDGE],
        }
    )
    edge.edge_cache_dir.mkdir()
    await send_heartbeat(edge, bus)

    async def three() -> list[DeadLetter]:
        rows = await dead_letters(sessions)
        return rows if len(rows) == 3 else []

    rows = await eventually(three, message="three heartbeats dead-lettered")
    reasons = sorted(r.reason for r in rows)
    assert reasons == [
        "Forbidden: edge signature invalid",
        "Forbidden: edge signature invalid",
        "Forbidden: edge signature missing",
    ]
    assert await eventually(lambda: edge_names(sessions)) == {"edge-signed"}


async def test_results_are_taken_only_when_signed_by_the_edges_workers(
    signed_broker: Broker, sessions: SessionMaker, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unsigned: refused before it is even read.
    await bus.publish("split.done.edge-a", b"{}")
    # Published by a worker of an edge whose environment holds its token: signed, so the
    # broker reads it (and dead-letters it for what it says: the request is unknown here).
    monkeypatch.setenv("ESS_EDGE_TOKEN", TOKENS[Role.EDGE])
    work = FileWork(
        request_id=REQUEST_ID,
        file_id=7,
        attempt=1,
        edge="edge-a",
        file=DatasetFile.model_validate(file_entry(LFN)),
        events_per_range=100,
    )
    assigned = FileAssigned(work=work)

    async def precache(_: FileAssigned) -> FileCached:
        raise PermanentError("no source has the file")

    handler = work_handler(bus, FileAssigned, "precache", 3, precache)
    await handler(Delivery("q", assigned.routing_key(), assigned.model_dump_json().encode()))

    async def two() -> list[str]:
        rows = await dead_letters(sessions)
        return sorted(r.reason for r in rows) if len(rows) == 2 else []

    reasons = await eventually(two, message="both results dead-lettered")
    assert reasons == [
        f"BadMessage: request {REQUEST_ID} is unknown",
        "Forbidden: edge signature missing",
    ]


async def test_without_edge_tokens_unsigned_heartbeats_are_taken(
    sessions: SessionMaker, bus: Bus
) -> None:
    broker = Broker(HeadSettings.model_validate({"sweep_interval_s": 0.1}), bus, sessions)
    await broker.start()
    try:
        await publish_event(bus, heartbeat("edge-open"))
        assert await eventually(lambda: edge_names(sessions)) == {"edge-open"}
    finally:
        await broker.stop()
    async with unit_of_work(sessions) as session:
        assert (await session.get(Edge, "edge-open")) is not None
