"""The operator's commands (`ess requests`, `ess request`, `ess edges`, `ess edge`, `ess cancel`,
`ess retry`, `ess dead-letters`) as an operator runs them: child processes against the embedded
ESS with tokens on; tables for a person, `--json` for scripts, and the exit codes the commands
document (0 done, 3 not found, 4 refused, 5 unreachable)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ess_cli.demo import request_body
from ess_cli.embedded import Embedded, embedded_settings
from ess_cli.head_client import Exit
from ess_cli.sample import SampleFile, make_sample_dataset
from tests.helpers import eventually, free_port

ADMIN = "admin-token-of-the-cli-tests"
PANDA = "panda-token-of-the-cli-tests"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Ess:
    url: str
    http: httpx.AsyncClient
    files: list[SampleFile]

    async def ess(self, *args: str, token: str | None = ADMIN, head: str | None = None) -> Run:
        # A child process, awaited: the embedded ESS answering it runs on this event loop.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESS_")}
        env["ESS_HEAD_URL"] = head or self.url
        if token:
            env["ESS_TOKEN"] = token
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ess_cli.main",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode is not None
        return Run(process.returncode, out.decode(), err.decode())

    async def request(self, files: list[SampleFile], key: str) -> str:
        body = request_body(files, 300)
        body["idempotency_key"] = key
        answer = await self.http.post("/v1/requests", json=body)
        assert answer.status_code == 201, answer.text
        request_id: str = answer.json()["id"]
        return request_id

    async def status(self, request_id: str) -> str:
        status: str = (await self.http.get(f"/v1/requests/{request_id}")).json()["status"]
        return status


@pytest.fixture
async def ess(tmp_path: Path) -> AsyncIterator[Ess]:
    head, edges = embedded_settings(tmp_path / "ess", free_port(), edges=2)
    tokens = {"admin": [SecretStr(ADMIN)], "panda": [SecretStr(PANDA)]}
    head = head.model_copy(update={"tokens": tokens})
    async with (
        Embedded(head, edges) as running,
        httpx.AsyncClient(
            base_url=running.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
        ) as http,
    ):

        async def edges_alive() -> bool:
            listed: list[dict[str, Any]] = (await http.get("/v1/edges")).json()
            return sum(bool(e["alive"]) for e in listed) == len(edges)

        await eventually(edges_alive, message="both edges heartbeat")
        yield Ess(running.url, http, make_sample_dataset(tmp_path / "dataset"))


async def test_a_request_from_the_list_to_its_history(ess: Ess) -> None:
    request_id = await ess.request(ess.files[:2], "cli-ready")
    watched = await ess.ess("request", request_id, "--watch", "--json")
    assert watched.code == Exit.OK, watched.stderr
    view = watched.json()
    assert view["status"] == "ready" and view["ranges"] == 4 + 4
    assert [f["status"] for f in view["files"]] == ["split", "split"]
    kinds = [e["kind"] for e in view["history"]]
    assert kinds[0] == "received" and "ready" in kinds
    assert kinds.count("assigned") == kinds.count("cached") == kinds.count("split") == 2

    listed = await ess.ess("requests", "--state", "ready", "--json")
    assert listed.code == Exit.OK and [r["id"] for r in listed.json()] == [request_id]
    table = await ess.ess("requests")
    assert request_id in table.stdout and "ready" in table.stdout and "2/2" in table.stdout
    shown = await ess.ess("request", request_id)
    assert shown.code == Exit.OK, shown.stderr
    for expected in ("Files", "History", "DAOD_SAMPLE.ess_demo._000001.root", "assigned"):
        assert expected in shown.stdout, expected


async def test_edges_are_listed_and_drained_enabled_disabled(ess: Ess) -> None:
    table = await ess.ess("edges")
    assert table.code == Exit.OK and "edge-1" in table.stdout and "edge-2" in table.stdout
    for action, state in (("drain", "draining"), ("enable", "alive"), ("disable", "disabled")):
        done = await ess.ess("edge", action, "edge-1", "--json")
        assert done.code == Exit.OK, done.stderr
        assert done.json()["status"] == state
    edges = {e["name"]: e for e in (await ess.ess("edges", "--json")).json()}
    assert edges["edge-1"]["status"] == "disabled" and edges["edge-2"]["status"] == "alive"


async def test_an_edge_is_enrolled_with_a_token_shown_once_and_revoked(ess: Ess) -> None:
    enrolled = await ess.ess("edge", "enroll", "edge-9", "--json")
    assert enrolled.code == Exit.OK, enrolled.stderr
    token = enrolled.json()["token"]
    assert enrolled.json()["edge"] == "edge-9" and token.startswith("edge-9.")
    again = await ess.ess("edge", "enroll", "edge-9")
    assert again.code == Exit.OK, again.stderr
    assert "shown once" in again.stdout and "edge-9." in again.stdout and token not in again.stdout
    refused = await ess.ess("edge", "enroll", "edge-9", "--json", token=PANDA)
    assert refused.code == Exit.REFUSED
    revoked = await ess.ess("edge", "revoke", "edge-9", "--json")
    assert revoked.code == Exit.OK, revoked.stderr
    assert revoked.json() == {"edge": "edge-9", "revoked": True}
    assert (await ess.ess("edge", "revoke", "edge-9")).code == Exit.NOT_FOUND


async def test_cancel_retry_and_dead_letters(ess: Ess, tmp_path: Path) -> None:
    # A source that is not there: the file fails on every edge, and the request with it.
    missing = tmp_path / "missing.root"
    body = request_body(ess.files[:1], 300)
    body["idempotency_key"] = "cli-failing"
    body["files"][0]["sources"] = [missing.as_uri()]  # type: ignore[index]
    request_id = (await ess.http.post("/v1/requests", json=body)).json()["id"]

    async def failed() -> bool:
        return await ess.status(request_id) == "failed"

    await eventually(failed, timeout=60, message="the request failed")
    shown = await ess.ess("request", request_id)
    assert "no source delivered the file" in shown.stdout
    retried = await ess.ess("retry", request_id)
    assert retried.code == Exit.OK and "1 files to do again" in retried.stdout
    cancelled = await ess.ess("cancel", request_id, "--reason", "operator gave up", "--json")
    assert cancelled.code == Exit.OK and cancelled.json()["status"] == "cancelled"
    shown = await ess.ess("request", request_id, "--json")
    history = [e["kind"] for e in shown.json()["history"]]
    assert history.index("retry_requested") < history.index("cancelled"), history
    again = await ess.ess("retry", request_id)
    assert again.code == Exit.REFUSED and "only a failed request" in again.stderr
    letters = await ess.ess("dead-letters", "--json")
    assert letters.code == Exit.OK and isinstance(letters.json(), list)


async def test_exit_codes_say_what_went_wrong(ess: Ess) -> None:
    unknown = await ess.ess("request", "no-such-request")
    assert unknown.code == Exit.NOT_FOUND and "not found" in unknown.stderr
    assert (await ess.ess("edge", "drain", "no-such-edge")).code == Exit.NOT_FOUND
    no_token = await ess.ess("requests", token=None)
    assert no_token.code == Exit.REFUSED and "401" in no_token.stderr
    wrong_role = await ess.ess("edge", "drain", "edge-1", token=PANDA)
    assert wrong_role.code == Exit.REFUSED and "403" in wrong_role.stderr
    down = await ess.ess("edges", head=f"http://127.0.0.1:{free_port()}")
    assert down.code == Exit.UNREACHABLE and "did not answer" in down.stderr
    usage = await ess.ess("edge", "explode", "edge-1")
    assert usage.code == Exit.USAGE
