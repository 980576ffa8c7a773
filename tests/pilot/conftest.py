"""The pilot client's fixture: the embedded ESS (every real service in one process, SQLite, the
in-process bus, a local directory as object store) with a dataset of two ROOT files prepared
once per session at 500 events per range.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import skhep_testdata

from ess_cli.embedded import Embedded, embedded_settings
from ess_common.checksums import adler32_of_file
from tests.helpers import eventually, free_port
from tests.pilot.support import EVENTS_PER_RANGE, SCOPE, SOURCES, TASK, Prepared


@pytest.fixture(scope="session")
async def prepared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Prepared]:
    workdir = tmp_path_factory.mktemp("pilot-ess")
    sources: dict[str, Path] = {}
    n_events_of: dict[str, int] = {}
    files = []
    for i, (name, n_events) in enumerate(SOURCES.items(), start=1):
        lfn = f"NTUP_PILOT.{TASK}._{i:06d}.root"
        copy = workdir / "source" / lfn
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(skhep_testdata.data_path(name), copy)
        sources[lfn] = copy
        n_events_of[lfn] = n_events
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
    head, edges = embedded_settings(workdir / "ess", free_port(), edges=2)
    async with Embedded(head, edges) as ess, httpx.AsyncClient(timeout=10) as client:
        created = await client.post(
            f"{ess.url}/v1/requests",
            json={
                "dataset": f"{SCOPE}:pilot.test",
                "idempotency_key": f"task-{TASK}",
                "events_per_range": EVENTS_PER_RANGE,
                "files": files,
            },
        )
        assert created.status_code == 201, created.text
        url = f"{ess.url}/v1/requests/{created.json()['id']}"

        async def ready() -> bool:
            view = (await client.get(url)).json()
            assert view["status"] != "failed", view
            return bool(view["status"] == "ready")

        await eventually(ready, timeout=60, interval=0.1, message="the dataset is prepared")
        yield Prepared(ess, sources, n_events_of)
