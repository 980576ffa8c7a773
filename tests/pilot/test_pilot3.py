"""pilot3 (PyPI `panda-pilot` 3.7.0.36) with ESS as its range step: its own `GenericExecutor`
and `ESProcess` run an Event Service job in a child process (tests/pilot/pilot3_job.py), get
PanDA's range dicts from PanDA's `getEventRanges`, and hand the payload local, verified range
files with renumbered events; ranges ESS cannot serve go to PanDA's `updateEventRanges` with the
status and error code pilot3 uses. PanDA's server is served here at its HTTP boundary.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from ess_cli.compare import compare_events
from ess_pilot.panda_updates import ESFATAL, STAGEINFAILED, Pieces, range_update
from ess_pilot.ranges import RangeOutcome
from tests.pilot.support import PANDA_ID, TASK, Prepared, subprocess_env

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PandaServer:
    """PanDA's server as pilot3 sees it: hands out `ranges` a few at a time, records updates."""

    ranges: list[dict[str, Any]]
    updates: list[dict[str, Any]] = field(default_factory=list)
    asked: list[dict[str, list[str]]] = field(default_factory=list)
    url: str = ""

    async def _form(self, request: web.Request) -> dict[str, list[str]]:
        return parse_qs((await request.read()).decode())

    async def get_event_ranges(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        self.asked.append(form)
        n = int(form["nRanges"][0])
        handed, self.ranges = self.ranges[:n], self.ranges[n:]
        return web.json_response({"StatusCode": 0, "eventRanges": handed})

    async def update_event_ranges(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        self.updates += json.loads(form["eventRanges"][0])
        return web.json_response({"StatusCode": 0, "Returns": [True]})


@asynccontextmanager
async def serving_panda(ranges: list[dict[str, Any]]) -> AsyncIterator[PandaServer]:
    """PanDA's server on a free local port, handing out `ranges`."""
    server = PandaServer(ranges)
    app = web.Application()
    app.router.add_post("/server/panda/getEventRanges", server.get_event_ranges)
    app.router.add_post("/server/panda/updateEventRanges", server.update_event_ranges)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def panda_server(prepared: Prepared) -> AsyncIterator[PandaServer]:
    hzz, zmumu = prepared.lfns
    ranges = [
        prepared.range(hzz, 1, 10, 1),
        prepared.range(hzz, 450, 620, 2),  # straddles two prepared files
        prepared.range(zmumu, 2300, 2304, 3),
        prepared.range("NTUP_PILOT.unknown._000009.root", 1, 5, 4),
        prepared.range(zmumu, 2300, 2400, 5),  # beyond the file
    ]
    async with serving_panda(ranges) as server:
        yield server


async def run_pilot3_job(tmp_path: Path, head_url: str, panda_url: str) -> list[dict[str, Any]]:
    """An Event Service job of pilot3 with ESS (tests/pilot/pilot3_job.py) against PanDA's
    server at `panda_url`: the ranges its payload received."""
    workdir = tmp_path / "job"
    workdir.mkdir()
    config = tmp_path / "job.json"
    received_file = tmp_path / "received.json"
    config.write_text(
        json.dumps(
            {
                "workdir": str(workdir),
                "received": str(received_file),
                "job": {
                    "PandaID": PANDA_ID,
                    "jobsetID": 1,
                    "taskID": TASK,
                    "eventService": "True",
                    "coreCount": 1,
                },
            }
        )
    )
    env = {
        **subprocess_env(),
        "PANDA_SERVER_URL": panda_url,
        "PILOT_HOME": str(tmp_path),
        "PILOT_USER": "generic",
        "ESS_PILOT_HEAD_URL": head_url,
        "ESS_PILOT_DEST": str(tmp_path / "ess-input"),
    }
    process = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.pilot.pilot3_job", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    received: list[dict[str, Any]] = json.loads(received_file.read_text())
    return received


def check_payload_ranges(
    handed_out: list[dict[str, Any]],
    received: list[dict[str, Any]],
    sources: dict[str, Path],
    dest: Path,
) -> list[dict[str, Any]]:
    """Every range the payload received holds, in its local file, the source's events PanDA
    asked for; returns the PanDA ranges that were served."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in received:
        by_id.setdefault(r["eventRangeID"], []).append(r)
    served = [r for r in handed_out if r["eventRangeID"] in by_id]
    for original in served:
        first = original["startEvent"]
        for piece in by_id[original["eventRangeID"]]:
            path = Path(piece["PFN"])
            assert path.is_file() and path.is_relative_to(dest)
            n = piece["lastEvent"] - piece["startEvent"] + 1
            checks = compare_events(
                sources[original["LFN"]],
                path,
                first,
                first + n - 1,
                piece["startEvent"],
                piece["lastEvent"],
            )
            assert checks and all(c.equal and c.events == n for c in checks), checks
            first += n
        assert first == original["lastEvent"] + 1
    return served


async def test_pilot3_hands_the_payload_verified_range_files(
    tmp_path: Path, prepared: Prepared, panda_server: PandaServer
) -> None:
    handed_out = list(panda_server.ranges)
    received = await run_pilot3_job(tmp_path, prepared.url, panda_server.url)

    served = check_payload_ranges(handed_out, received, prepared.sources, tmp_path / "ess-input")
    assert [r["eventRangeID"] for r in served] == [handed_out[i]["eventRangeID"] for i in (0, 1, 2)]
    straddling = handed_out[1]["eventRangeID"]
    assert len([r for r in received if r["eventRangeID"] == straddling]) == 2

    updates = {u["eventRangeID"]: u for u in panda_server.updates}
    unknown, beyond = handed_out[3]["eventRangeID"], handed_out[4]["eventRangeID"]
    assert set(updates) == {unknown, beyond}
    assert (updates[unknown]["eventStatus"], updates[unknown]["errorCode"]) == (
        "failed",
        STAGEINFAILED,
    )
    assert (updates[beyond]["eventStatus"], updates[beyond]["errorCode"]) == ("fatal", ESFATAL)
    assert panda_server.asked[0]["pandaID"] == [str(PANDA_ID)]


def test_a_range_is_finished_when_every_piece_is_and_failed_once() -> None:
    pieces = Pieces()
    pieces.sent([{"eventRangeID": "r1"}, {"eventRangeID": "r1"}, {"eventRangeID": "r2"}])
    first = {"id": "r1", "status": "finished", "output": "/a.pool.root"}
    second = {"id": "r1", "status": "finished", "output": "/b.pool.root"}
    assert pieces.reported(first) == []
    assert pieces.reported(second) == [first, second]

    pieces.sent([{"eventRangeID": "r3"}, {"eventRangeID": "r3"}])
    failed = {"id": "r3", "status": "failed", "message": "ERR_ATHENAMP_PROCESS r3: boom"}
    assert pieces.reported({"id": "r3", "status": "finished", "output": "/c"}) == []
    assert pieces.reported(failed) == [failed]
    assert pieces.reported({"id": "r3", "status": "finished", "output": "/d"}) == []
    assert pieces.reported({"id": "r2", "status": "finished", "output": "/e"}) != []


def test_failed_ranges_map_to_pilot3s_status_and_error_code() -> None:
    download = RangeOutcome({"eventRangeID": "r1"}, reason="adler32 mismatch after 5 attempts")
    refused = RangeOutcome({"eventRangeID": "r2"}, reason="beyond the file", code="outside_file")
    assert range_update(download) == {
        "eventRangeID": "r1",
        "eventStatus": "failed",
        "errorCode": STAGEINFAILED,
        "errorDiag": "adler32 mismatch after 5 attempts",
    }
    assert range_update(refused)["eventStatus"] == "fatal"
    assert range_update(refused)["errorCode"] == ESFATAL
