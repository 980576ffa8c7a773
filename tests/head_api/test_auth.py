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

from ess_common.db.models import RequestStatus
from ess_common.db.session import SessionMaker
from ess_common.settings import HeadSettings
from ess_common.store.local import LocalStore, sign
from ess_head_api.app import create_app
from ess_head_api.auth import Role, TokenBook
from ess_head_api.state import HeadState
from tests.head_api.support import (
    SCOPE,
    Head,
    prepare,
    request_body,
    running_head,
)

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


# --- edges' own tokens ---------------------------------------------------------------------


async def test_an_enrolled_edges_token_is_an_edge_token_until_revoked(head: Head) -> None:
    enrolled = await head.client.post("/v1/edges/edge-a/enroll", headers=bearer(Role.ADMIN))
    assert enrolled.status_code == 201, enrolled.text
    token = enrolled.json()["token"]
    assert enrolled.json()["edge"] == "edge-a" and token.startswith("edge-a.")
    as_edge = {"Authorization": f"Bearer {token}"}
    lookup = f"/v1/ranges?scope={SCOPE}&LFN={LFN}&startEvent=1&lastEvent=1"
    assert (await head.client.get(lookup, headers=as_edge)).status_code not in (401, 403)
    refused = await head.client.post("/v1/admin/expire", headers=as_edge)
    assert refused.status_code == 403
    # Only an admin enrolls or revokes.
    for role in (Role.EDGE, Role.PANDA, Role.PILOT):
        assert (
            await head.client.post("/v1/edges/edge-b/enroll", headers=bearer(role))
        ).status_code == 403
        assert (
            await head.client.delete("/v1/edges/edge-a/enrollment", headers=bearer(role))
        ).status_code == 403
    # A token made up in the shape of one, or of an edge never enrolled, is not known.
    for forged in (f"edge-a.{'x' * 43}", f"edge-z.{token.partition('.')[2]}"):
        answer = await head.client.get(lookup, headers={"Authorization": f"Bearer {forged}"})
        assert answer.status_code == 401

    revoked = await head.client.delete("/v1/edges/edge-a/enrollment", headers=bearer(Role.ADMIN))
    assert revoked.status_code == 200 and revoked.json() == {"edge": "edge-a", "revoked": True}
    assert (await head.client.get(lookup, headers=as_edge)).status_code == 401
    again = await head.client.delete("/v1/edges/edge-a/enrollment", headers=bearer(Role.ADMIN))
    assert again.status_code == 404
    # Enrolled again: a new token; the old one stays dead.
    renewed = (
        await head.client.post("/v1/edges/edge-a/enroll", headers=bearer(Role.ADMIN))
    ).json()["token"]
    assert renewed != token
    assert (await head.client.get(lookup, headers=as_edge)).status_code == 401
    fresh = {"Authorization": f"Bearer {renewed}"}
    assert (await head.client.get(lookup, headers=fresh)).status_code not in (401, 403)
    bad_name = await head.client.post("/v1/edges/Bad_Name/enroll", headers=bearer(Role.ADMIN))
    assert bad_name.status_code == 422
