"""Property-based tests of the head API from its own OpenAPI document (schemathesis), on SQLite
and PostgreSQL: requests generated for every operation, valid and invalid, never get a 5xx, and
every answer is one the document describes (status code, content type, body schema).

The cases are generated first (hypothesis, a bounded number per operation, derandomised so a
failure repeats) and then sent to the app in-process with an admin token, so that the checks
reach past authentication; a second pass sends none and expects 401 wherever a token is
needed. The published `request.created` schema in the docs is checked to be the models' own.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from ess_common.db.session import SessionMaker
from ess_common.events import request_created_schema
from ess_common.store.local import LocalStore
from tests.head_api.support import Head, prepare, request_body, running_head

AnyCase = Case[Any]
ADMIN = "admin-token-for-the-fuzz-0123"
#: Examples per operation and mode: enough to reach every parameter's edges, bounded in time.
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "panda-interface.md"


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    # A stream of an open request ends quickly: no generated case can hold the test up.
    async with running_head(
        sessions, store, tokens={"admin": [ADMIN]}, events_max_s=0.5, events_poll_interval_s=0.1
    ) as running:
        yield running


def generate(schema: Any, mode: GenerationMode) -> list[AnyCase]:
    cases: list[AnyCase] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            database=None,
            derandomize=True,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def collect(case: AnyCase) -> None:
            cases.append(case)

        try:
            collect()
        except Unsatisfiable:
            # An operation with nothing to get wrong (no parameters, no body) has no invalid
            # cases; its valid ones are sent in the positive pass.
            assert mode is GenerationMode.NEGATIVE, operation.label
    return cases


async def send(client: httpx.AsyncClient, case: AnyCase, token: str | None) -> httpx.Response:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: v for k, v in (kwargs.pop("headers", None) or {}).items()}
    headers.pop("Authorization", None)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    cookies = kwargs.pop("cookies", None)
    if cookies:
        headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    request = client.build_request(
        kwargs.pop("method"),
        kwargs.pop("url"),
        headers=headers,
        params=kwargs.pop("params", None),
        json=kwargs.pop("json", None),
        content=kwargs.pop("data", None),
    )
    assert not kwargs, f"transport arguments not sent: {sorted(kwargs)}"
    return await client.send(request)


async def seed(head: Head, sessions: SessionMaker, tmp_path: Path) -> None:
    """Something to find: a prepared file and an open request."""
    await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="fuzz-ready",
        lfn="EVNT.01.pool.root.1",
        n_events=200,
        events_per_range=100,
    )
    headers = {"Authorization": f"Bearer {ADMIN}"}
    created = await head.client.post("/v1/requests", json=request_body("fuzz"), headers=headers)
    assert created.status_code == 201, created.text


def _checks_for(case: AnyCase, response: httpx.Response) -> list[Any]:
    """Every check; but an on-demand ask may be refused with 503 and Retry-After, as documented:
    no edge is live here to split it."""
    refused = response.status_code == 503 and "retry-after" in response.headers
    if refused and case.operation.path == "/v1/ranges/on-demand":
        return [c for c in CHECKS if c is not not_a_server_error]
    return CHECKS


async def test_generated_requests_never_get_a_5xx_and_match_the_document(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    await seed(head, sessions, tmp_path)
    document = (await head.client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    sent = 0
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for case in generate(schema, mode):
            sent += 1
            try:
                response = await send(head.client, case, ADMIN)
                case.validate_response(response, checks=_checks_for(case, response))
            except Exception as exc:
                failures.append(f"{case.method} {case.formatted_path} ({mode}): {exc}")
    distinct = sorted({failure.split("Reproduce with")[0] for failure in failures})
    assert not distinct, f"{len(failures)} failures:\n\n" + "\n\n".join(distinct[:8])
    assert sent >= 10 * EXAMPLES


async def test_without_a_token_every_protected_operation_is_401(head: Head) -> None:
    document = (await head.client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    protected = 0
    for case in generate(schema, GenerationMode.POSITIVE)[:: EXAMPLES // 5]:
        response = await send(head.client, case, None)
        operation = document["paths"][case.operation.path][case.method.lower()]
        if operation.get("security"):
            protected += 1
            assert response.status_code == 401, (case.method, case.formatted_path)
        else:
            assert response.status_code < 500, (case.method, case.formatted_path)
    assert protected > 0


def test_the_documented_request_created_schema_is_the_models() -> None:
    """docs/panda-interface.md shows the output of `ess schema request-created`."""
    text = DOCS.read_text()
    found = re.search(r"<!-- schema:request-created -->\n```json\n(.*?)\n```", text, re.S)
    assert found is not None, "the schema block is missing from the docs"
    assert json.loads(found.group(1)) == request_created_schema()
