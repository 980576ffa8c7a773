"""The head API under hostile input: text no database can hold, names that slip past their
patterns, types that would be coerced, and the OpenAPI document that clients and fuzzers read.
Every refusal is a 4xx with a reason, never a 500 or a cut connection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ess_common.db.session import SessionMaker
from ess_common.store.local import LocalStore
from ess_head_api.routes.events import EVENT_SCHEMA
from ess_head_api.schemas import RequestView
from tests.head_api.support import Head, file_entry, request_body, running_head


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store) as running:
        yield running


def raw(body: dict[str, Any], field: str, literal: str) -> bytes:
    """`body` as JSON with `field`'s value replaced by the JSON text `literal` verbatim (a lone
    surrogate cannot be written by Python's encoder in a way that survives to the wire)."""
    marker = "@@MARKER@@"
    text = json.dumps({**body, field: marker})
    return text.replace(json.dumps(marker), literal).encode()


@pytest.mark.parametrize(
    "where",
    ["dataset", "idempotency_key", "files"],
)
async def test_a_lone_surrogate_in_any_string_is_a_422(head: Head, where: str) -> None:
    body = request_body("surrogate")
    if where == "files":
        entry = json.dumps(file_entry("EVNT.01.pool.root.1")).replace(
            '"2FC641BA-0000-0000-0000-000000000000"', '"\\ud800"'
        )
        content = raw(body, "files", f"[{entry}]")
    else:
        content = raw(body, where, '"mc15_13TeV:x\\ud800"')
    response = await head.client.post(
        "/v1/requests", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


async def test_a_lone_surrogate_in_an_unknown_field_or_a_non_string_place_is_a_422(
    head: Head,
) -> None:
    for content in (
        raw(request_body("s2"), "\\ud800", '"x"').replace(b'"\\\\ud800"', b'"\\ud800"'),
        raw(request_body("s3"), "events_per_range", '"\\udfff"'),
        b'{"\\ud800": 1}',
        b'"\\ud800"',
    ):
        response = await head.client.post(
            "/v1/requests", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, (content, response.text)
        response.json()


async def test_a_lone_surrogate_in_a_query_or_batch_lookup_is_a_4xx(head: Head) -> None:
    # A surrogate's UTF-8-like bytes, percent-encoded: not UTF-8, read as replacement characters.
    found = await head.client.get("/v1/ranges?scope=s&LFN=x%ED%A0%80&startEvent=1&lastEvent=2")
    assert 400 <= found.status_code < 500, found.text
    batch = (
        b'{"eventRanges": [{"eventRangeID": "\\ud800", "scope": "s", "LFN": "f", '
        b'"startEvent": 1, "lastEvent": 2}]}'
    )
    answer = await head.client.post(
        "/v1/ranges/lookup", content=batch, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text


async def test_json_nested_past_parsing_is_a_400(head: Head) -> None:
    for content in (b"[" * 100_000 + b"]" * 100_000, b"[" * 100_000 + b'"\\u0041"'):
        response = await head.client.post(
            "/v1/requests", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text


@pytest.mark.parametrize("field", ["scope", "lfn", "dataset"])
async def test_names_ending_in_a_newline_are_refused(head: Head, field: str) -> None:
    body = request_body("newline")
    if field == "dataset":
        body["dataset"] += "\n"
    else:
        body["files"][0][field] += "\n"
    response = await head.client.post("/v1/requests", json=body)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("place", "value"),
    [
        ("n_events", "12"),
        ("n_events", True),
        ("n_events", 12.5),
        ("size", "1000"),
        ("events_per_range", "100"),
        ("events_per_range", True),
        ("priority", "5"),
        ("notify.message", "true"),
        ("notify.message", 1),
        ("prepare", "false"),
        ("schema_version", True),
        ("schema_version", "1"),
        ("dataset", 12),
    ],
)
async def test_types_are_strict(head: Head, place: str, value: Any) -> None:
    body = request_body("strict")
    if place in ("n_events", "size"):
        body["files"][0][place] = value
    elif place.startswith("notify."):
        body["notify"] = {place.removeprefix("notify."): value}
    else:
        body[place] = value
    response = await head.client.post("/v1/requests", json=body)
    assert response.status_code == 422, (place, value, response.text)


async def test_strict_types_still_take_what_json_carries(head: Head) -> None:
    body = request_body("strict-ok", notify={"message": False, "files": True})
    body["schema_version"] = 1
    # JSON has numbers: 100.0 is the integer 100 (as JSON Schema's "integer" says).
    body["events_per_range"] = 100.0
    body["files"][0]["n_events"] = 2000.0
    response = await head.client.post("/v1/requests", json=body)
    assert response.status_code == 201, response.text


async def test_every_ref_of_the_openapi_document_resolves(head: Head) -> None:
    document = (await head.client.get("/openapi.json")).json()
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                refs.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
            target = target[part]


async def test_options_lists_the_methods_and_a_405_carries_allow(head: Head) -> None:
    options = await head.client.options("/v1/requests")
    assert options.status_code == 200, options.text
    assert set(options.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    refused = await head.client.delete("/v1/requests")
    assert refused.status_code == 405
    assert set(refused.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_the_range_parameters_state_their_bounds(head: Head) -> None:
    document = (await head.client.get("/openapi.json")).json()
    parameters = {p["name"]: p for p in document["paths"]["/v1/ranges"]["get"]["parameters"]}
    for name in ("startEvent", "lastEvent"):
        assert parameters[name]["schema"]["minimum"] == 1, parameters[name]
    assert "startEvent <= lastEvent" in parameters["lastEvent"]["description"]
    backwards = await head.client.get(
        "/v1/ranges", params={"scope": "s", "LFN": "f", "startEvent": 5, "lastEvent": 2}
    )
    assert backwards.status_code == 422, backwards.text
    zero = await head.client.get(
        "/v1/ranges", params={"scope": "s", "LFN": "f", "startEvent": 0, "lastEvent": 2}
    )
    assert zero.status_code == 422, zero.text


async def test_the_event_stream_matches_its_documented_schema(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store, events_max_s=0.5, events_poll_interval_s=0.1) as head:
        created = await head.client.post("/v1/requests", json=request_body("sse-schema"))
        assert created.status_code == 201, created.text
        request_id = created.json()["id"]
        document = (await head.client.get("/openapi.json")).json()
        stream = await head.client.get(f"/v1/requests/{request_id}/events")
    assert stream.status_code == 200
    media = document["paths"]["/v1/requests/{request_id}/events"]["get"]["responses"]["200"][
        "content"
    ]["text/event-stream"]
    assert media["schema"] == EVENT_SCHEMA
    # Each frame (block of lines) is one event of the schema, its data the JSON it names.
    events = [
        dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        for block in stream.text.split("\n\n")
        if block.strip() and not block.startswith(":")
    ]
    assert events[0] == {"retry": "3000"}
    for event in events[1:]:
        assert set(event) == {"event", "id", "data"}, event
        assert event["event"] in EVENT_SCHEMA["properties"]["event"]["enum"]  # type: ignore[index]
        RequestView.model_validate_json(event["data"])


async def test_limits_answer_413_naming_the_limit(sessions: SessionMaker, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    limits = {
        "max_body_bytes": 64 * 1024,
        "max_request_files": 3,
        "max_file_sources": 2,
        "max_file_replicas": 2,
    }
    async with running_head(sessions, store, **limits) as head:
        lfns = [f"EVNT.{i:02d}.pool.root.1" for i in range(1, 5)]
        cases = {
            "ESS_MAX_REQUEST_FILES": request_body("many-files", *lfns),
            "ESS_MAX_FILE_SOURCES": request_body(
                "many-sources",
                files=[file_entry(lfns[0], sources=[f"https://s{i}.org/f" for i in range(3)])],
            ),
            "ESS_MAX_FILE_REPLICAS": request_body(
                "many-replicas",
                files=[file_entry(lfns[0], replicas=[{"site": f"S{i}"} for i in range(3)])],
            ),
            "ESS_MAX_BODY_BYTES": request_body("huge"),
        }
        cases["ESS_MAX_BODY_BYTES"]["files"][0]["guid"] = "g" * 70_000
        replica = {"site": "S", "sources": [f"https://s{i}.org/f" for i in range(3)]}
        many_in_a_replica = request_body(
            "many-replica-sources", files=[file_entry(lfns[0], replicas=[replica])]
        )
        for limit, body in [*cases.items(), ("ESS_MAX_FILE_SOURCES", many_in_a_replica)]:
            response = await head.client.post("/v1/requests", json=body)
            assert response.status_code == 413, (limit, response.text)
            assert limit in response.json()["detail"]
        at_the_limits = request_body(
            "at-limits",
            files=[
                file_entry(
                    lfn,
                    sources=[f"https://s{i}.org/{lfn}" for i in range(2)],
                    replicas=[{"site": f"S{i}"} for i in range(2)],
                )
                for lfn in lfns[:3]
            ],
        )
        taken = await head.client.post("/v1/requests", json=at_the_limits)
        assert taken.status_code == 201, taken.text


@pytest.mark.parametrize(
    ("where", "url", "reason"),
    [
        ("source", "file:///etc/passwd", "ESS_SOURCE_FILE_ROOTS"),
        ("source", "http://169.254.169.254/latest/meta-data/", "link-local"),
        ("source", "http://[::1]/f", "loopback"),
        ("source", "http://127.0.0.1:8080/f", "loopback"),
        ("source", "davs://[::ffff:127.0.0.1]/f", "loopback"),
        ("source", "https://user:pass@storage.example.org/f", "credentials"),
        ("callback", "http://127.0.0.1:1/ssrf", "ESS_CALLBACK_NETWORKS"),
        ("callback", "http://localhost:15672/api/definitions", "loopback"),
        ("callback", "https://panda:secret@panda.example.org/cb", "credentials"),
    ],
)
async def test_sources_and_callbacks_the_policy_refuses_are_a_422(
    sessions: SessionMaker, tmp_path: Path, where: str, url: str, reason: str
) -> None:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    # The defaults, whatever the tests' own servers need.
    strict: dict[str, list[str]] = {
        "source_networks": [],
        "callback_networks": [],
        "source_file_roots": [],
    }
    async with running_head(sessions, store, **strict) as head:
        if where == "source":
            body = request_body("policy", files=[file_entry("EVNT.01.pool.root.1", sources=[url])])
        else:
            body = request_body("policy", notify={"callback_url": url})
        response = await head.client.post("/v1/requests", json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert reason in detail and "pass@" not in detail and "secret" not in detail
        allowed = await head.client.post("/v1/requests", json=request_body("policy-ok"))
        assert allowed.status_code == 201, allowed.text
