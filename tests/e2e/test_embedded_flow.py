"""The same flow on the embedded default: one process, SQLite, in-process bus, local store.

Also runs `ess demo`, the first thing a new user types.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import skhep_testdata

from ess_cli.compare import compare_events
from ess_cli.embedded import Embedded, embedded_settings
from ess_cli.pilot import download
from ess_common.checksums import adler32_of_file
from tests.helpers import eventually, free_port

SCOPE = "data18_13TeV"
EVENTS_PER_RANGE = 333


async def test_embedded_request_to_verified_ranges(tmp_path: Path) -> None:
    sources = {}
    files: list[dict[str, Any]] = []
    for i, name in enumerate(["uproot-HZZ.root", "uproot-Zmumu.root", "uproot-HZZ-zstd.root"]):
        original = Path(skhep_testdata.data_path(name))
        lfn = f"NTUP.{i:06d}.{name}"
        copy = tmp_path / "source" / lfn
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(original, copy)
        sources[lfn] = original
        n_events = 2304 if "Zmumu" in name else 2421
        files.append(
            {
                "scope": SCOPE,
                "lfn": lfn,
                "n_events": n_events,
                "size": copy.stat().st_size,
                "adler32": adler32_of_file(copy),
                "sources": [copy.as_uri()],
            }
        )
    head, edges = embedded_settings(tmp_path / "ess", free_port(), edges=2)
    async with Embedded(head, edges) as ess, httpx.AsyncClient(timeout=30) as client:
        body = {
            "dataset": f"{SCOPE}:embedded.test",
            "idempotency_key": f"task-{uuid.uuid4().hex[:6]}",
            "events_per_range": EVENTS_PER_RANGE,
            "files": files,
        }
        created = await client.post(f"{ess.url}/v1/requests", json=body)
        assert created.status_code == 201, created.text
        again = await client.post(f"{ess.url}/v1/requests", json=body)
        assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
        url = f"{ess.url}/v1/requests/{created.json()['id']}"

        async def ready() -> dict[str, Any] | None:
            view: dict[str, Any] = (await client.get(url)).json()
            assert view["status"] != "failed", view
            return view if view["status"] == "ready" else None

        view = await eventually(ready, timeout=120, interval=0.2, message="request ready")
        assert view["ranges"] == sum(-(-f["n_events"] // EVENTS_PER_RANGE) for f in files)
        for f in files:
            for first in range(1, f["n_events"] + 1, EVENTS_PER_RANGE):
                last = min(first + EVENTS_PER_RANGE - 1, f["n_events"])
                answer = await client.get(
                    f"{ess.url}/v1/ranges",
                    params={
                        "scope": SCOPE,
                        "LFN": f["lfn"],
                        "startEvent": first,
                        "lastEvent": last,
                    },
                )
                (piece,) = answer.json()["pieces"]
                path = await download(client, piece, tmp_path / "pilot")
                checks = compare_events(sources[f["lfn"]], path, first, last, 1, last - first + 1)
                assert checks and all(c.equal for c in checks), checks


def test_demo_command_runs_the_whole_flow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESS_")}
    result = subprocess.run(
        [sys.executable, "-m", "ess_cli.main", "demo", "--workdir", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every event equals the source's" in result.stdout
    assert "DIFFERENT" not in result.stdout
    assert "split on demand in" in result.stdout
