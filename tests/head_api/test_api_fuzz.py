"""The head API tried by schemathesis from its own OpenAPI document.

The proof: schemathesis's engine, every phase (examples, coverage, fuzzing, and stateful runs
that follow the document's links from a created request) and every check, against the head on
the real PostgreSQL, served by uvicorn in this process with an admin token: no 5xx but the
documented one, and every answer one the document describes (status, content type, headers,
body schema, SSE events). A second pass, generated here (hypothesis, derandomised), sends no
token and expects 401 wherever one is needed. The published `request.created` schema in the
docs is checked to be the models' own.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events as st_events

from ess_common.db.session import SessionMaker
from ess_common.events import request_created_schema
from ess_common.store.local import LocalStore
from tests.head_api.support import Head, prepare, request_body, running_head
from tests.helpers import eventually, free_port

AnyCase = Case[Any]
ADMIN = "admin-token-for-the-fuzz-0123"
#: Examples per operation and mode of the token pass: enough to reach every operation.
EXAMPLES = 25
#: Examples per operation of the engine's fuzzing phase: bounded so the run stays near a minute.
ENGINE_EXAMPLES = 10
PHASES = ("examples", "coverage", "fuzzing", "stateful")
#: The one 5xx the document promises: an on-demand ask with no edge live to split it (503 and
#: Retry-After, as in a deployment whose edges are all busy or gone).
DOCUMENTED_5XX = {("POST /v1/ranges/on-demand", 503)}
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


@dataclass
class Run:
    """What one schemathesis run found: failures by operation and check, and its phases."""

    failures: list[str] = field(default_factory=list)
    phases: dict[str, str] = field(default_factory=dict)
    responses: Counter[tuple[str, int]] = field(default_factory=Counter)


def run_schemathesis(base_url: str) -> Run:
    """Every phase (examples, coverage, fuzzing, stateful) and every check of schemathesis's
    engine, against the head served at `base_url`, with an admin token."""
    config = SchemathesisConfig.from_dict(
        {
            "base-url": base_url,
            "headers": {"Authorization": f"Bearer {ADMIN}"},
            "generation": {"max-examples": ENGINE_EXAMPLES, "database": "none"},
            "seed": 20261206,
            # Nothing kept between runs (nor written into the checkout): each run is the same.
            "cache": {"enabled": False},
            "checks": {
                "enabled": True,
                # A schema-valid request may still break a rule no JSON Schema can state (the
                # URL policy, 1 <= startEvent <= lastEvent, text a database cannot hold): it
                # is refused with 422 and the reason, as the document says of every body.
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "413", "422"]
                },
            },
            "phases": {"stateful": {"max-steps": 30}},
            # No edge is live here: an on-demand ask is refused with the documented 503.
            "operations": [
                {
                    "include-path": "/v1/ranges/on-demand",
                    "checks": {
                        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "404", "409", "422", "503"]
                        },
                    },
                }
            ],
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    run = Run()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, st_events.ScenarioFinished):
            for case_id, interaction in event.recorder.interactions.items():
                if interaction.response is not None:
                    label = event.recorder.cases[case_id].value.operation.label
                    run.responses[label, interaction.response.status_code] += 1
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    sent = event.recorder.interactions.get(case_id)
                    answer = (
                        ""
                        if sent is None or sent.response is None
                        else (f" -> {sent.response.status_code} {sent.response.content[:300]!r}")
                    )
                    run.failures.append(
                        f"{event.recorder.label} [{check.name}] "
                        f"{check.failure_info.failure.title}{answer}"
                    )
        elif isinstance(event, st_events.PhaseFinished):
            run.phases[event.phase.name.value] = event.status.value
        elif isinstance(event, st_events.NonFatalError | st_events.FatalError):
            run.failures.append(f"error: {event}")
    return run


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_schemathesis_finds_no_5xx_and_no_answer_off_the_document(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    """The head on the real PostgreSQL, served by uvicorn in this process; the engine runs in
    a thread beside it, over HTTP, as a client would."""
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(
        sessions, store, tokens={"admin": [ADMIN]}, events_max_s=0.5, events_poll_interval_s=0.1
    ) as head:
        await seed(head, sessions, tmp_path)
        app = head.client._transport.app  # type: ignore[attr-defined]
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        serving = asyncio.create_task(server.serve())
        try:
            await eventually(lambda: server.started, message="uvicorn started")
            run = await asyncio.to_thread(run_schemathesis, f"http://127.0.0.1:{port}")
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)
    distinct = sorted(set(run.failures))
    assert not distinct, f"{len(distinct)} failures:\n\n" + "\n\n".join(distinct[:12])
    # Every phase ran (the stateful one follows the links from a created request).
    assert {p: s for p, s in run.phases.items() if p in PHASES} == dict.fromkeys(
        PHASES, "success"
    ), run.phases
    server_errors = {(op, code) for op, code in run.responses if code >= 500} - DOCUMENTED_5XX
    assert not server_errors, server_errors
    assert sum(run.responses.values()) > 300, run.responses


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
