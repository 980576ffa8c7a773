"""The edge's HTTP server under hostile input: text no answer can hold, bodies past the limit,
and object keys that name a directory. Every refusal is a 4xx with a reason, never a 500."""

from __future__ import annotations

from ess_common.store.base import range_key
from tests.edge.test_cdn_server import LFN, Cdn, cdn
from tests.head_api.support import SCOPE

__all__ = ["cdn"]  # the fixture, shared with the server's own tests

JSON = {"Content-Type": "application/json"}


async def test_a_lone_surrogate_in_a_json_body_is_a_422(cdn: Cdn) -> None:
    batch = (
        b'{"eventRanges": [{"eventRangeID": "\\ud800", "scope": "s", "LFN": "f", '
        b'"startEvent": 1, "lastEvent": 2}]}'
    )
    lookup = await cdn.edge.post("/v1/ranges/lookup", content=batch, headers=JSON)
    assert lookup.status_code == 422, lookup.text
    ask = b'{"scope": "s\\udc00", "LFN": "f", "startEvent": 1, "lastEvent": 2}'
    on_demand = await cdn.edge.post("/v1/ranges/on-demand", content=ask, headers=JSON)
    assert on_demand.status_code == 422, on_demand.text
    assert "surrogate" in on_demand.json()["detail"]


async def test_a_body_past_the_limit_is_a_413_naming_it(cdn: Cdn) -> None:
    limit = cdn.state.settings.max_body_bytes
    body = b'{"eventRanges": [' + b" " * limit + b"]}"
    refused = await cdn.edge.post("/v1/ranges/lookup", content=body, headers=JSON)
    assert refused.status_code == 413, refused.text
    assert "ESS_MAX_BODY_BYTES" in refused.json()["detail"]


async def test_a_key_that_is_a_directory_is_a_404(cdn: Cdn) -> None:
    prepared = await cdn.prepare()
    first = prepared.ranges[0]
    # Served once: the edge's disk now holds the key's directories too.
    served = await cdn.edge.get(f"/v1/objects/{first.key}")
    assert served.status_code == 200, served.text
    prefix = range_key(SCOPE, LFN, 100, prepared.file_id, 1, 1, 1).rsplit("/", 1)[0]
    for directory in (f"ranges/{SCOPE}", f"ranges/{SCOPE}/{LFN}", prefix):
        answer = await cdn.edge.get(f"/v1/objects/{directory}")
        assert answer.status_code == 404, (directory, answer.text)
        assert answer.json()["detail"]
    below_a_file = await cdn.edge.get(f"/v1/objects/{first.key}/more")
    assert below_a_file.status_code == 404, below_a_file.text
