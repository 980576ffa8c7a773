"""`ess demo`: the whole flow on the embedded default, then the pilot's view of it.

Makes a sample dataset, starts every service in this process, asks for two of its files as
PanDA would, shows progress until they are ready, then fetches an event range that straddles
two range files and shows that its events equal the source's. Last, PanDA registers the third
file for on-demand use only, and the pilot client gets a range of it that nobody prepared: an
edge splits it from the source there and then.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import httpx

from ess_cli.compare import compare_events
from ess_cli.embedded import Embedded, embedded_settings, free_port
from ess_cli.pilot import fetch_range
from ess_cli.sample import SampleFile, make_sample_dataset
from ess_pilot.client import PilotClient

SCOPE = "user.ess"


def say(text: str = "") -> None:
    print(text, flush=True)


def bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def request_body(
    files: list[SampleFile], events_per_range: int, *, prepare: bool = True
) -> dict[str, object]:
    kind = "sample" if prepare else "on_demand"
    return {
        "dataset": f"{SCOPE}:ess_demo.{kind}",
        "idempotency_key": f"demo-{kind}-{events_per_range}",
        "events_per_range": events_per_range,
        "prepare": prepare,
        "files": [
            {
                "scope": SCOPE,
                "lfn": f.lfn,
                "guid": f"00000000-0000-0000-0000-{i:012d}",
                "n_events": f.n_events,
                "size": f.size,
                "adler32": f.adler32,
                "sources": [f.path.resolve().as_uri()],
            }
            for i, f in enumerate(files, start=1)
        ],
    }


async def follow(client: httpx.AsyncClient, url: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    last_line = ""
    while time.monotonic() < deadline:
        view = (await client.get(url)).json()
        by_status: dict[str, int] = view["files_by_status"]
        split = by_status.get("split", 0)
        line = (
            f"  {bar(split, view['files_total'])} {split}/{view['files_total']} files split, "
            f"{view['ranges']} ranges, request {view['status']}"
        )
        if line != last_line:
            say(line)
            last_line = line
        if view["status"] in ("ready", "failed", "cancelled"):
            return dict(view)
        await asyncio.sleep(0.2)
    raise TimeoutError(f"request not ready after {timeout_s} s")


async def run_demo(workdir: Path, events_per_range: int, edges: int, fresh: bool) -> int:
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"ESS demo in {workdir} (embedded: SQLite, in-process bus, local object store)")
    files = make_sample_dataset(workdir / "dataset")
    say(f"dataset: {len(files)} ROOT files, {sum(f.n_events for f in files)} events")
    # The demo's sources are the sample files it made: their folder is the one file:// root.
    head, edge_settings = embedded_settings(
        workdir, free_port(), edges, source_file_roots=[workdir / "dataset"]
    )
    async with Embedded(head, edge_settings) as ess, httpx.AsyncClient(timeout=30) as client:
        say(f"head API on {ess.url} with {edges} edges; docs at {ess.url}/docs")
        response = await client.post(
            f"{ess.url}/v1/requests", json=request_body(files[:2], events_per_range)
        )
        response.raise_for_status()
        request = response.json()
        say(f"PanDA asked for {request['dataset']} at {events_per_range} events per range")
        view = await follow(client, f"{ess.url}/v1/requests/{request['id']}", timeout_s=120)
        if view["status"] != "ready":
            say(f"request {view['status']}: {view['error']}")
            return 1
        # A range that straddles two range files: the pilot gets both pieces.
        source = files[1]
        start, last = events_per_range - 2, events_per_range + 3
        say(f"\npilot asks for {source.lfn} events {start}-{last} (1-based, in-file positions)")
        fetched = await fetch_range(
            client, ess.url, SCOPE, source.lfn, start, last, workdir / "pilot"
        )
        ok = True
        for item in fetched:
            p = item.piece
            say(
                f"  piece {p['key']}\n"
                f"    holds events {p['file_first_event']}-{p['file_last_event']}, "
                f"asked {p['start_event']}-{p['last_event']} = local "
                f"{p['local_start_event']}-{p['local_last_event']}; "
                f"{p['size']} bytes, adler32 {p['adler32']} verified"
            )
            checks = compare_events(
                source.path,
                item.path,
                p["start_event"],
                p["last_event"],
                p["local_start_event"],
                p["local_last_event"],
            )
            for c in checks:
                ok &= c.equal
                mark = "equal" if c.equal else "DIFFERENT"
                say(f"    {c.tree}/{c.branch:<12} {c.events} events {mark} to the source")
        ok &= await on_demand(client, ess.url, files[2], events_per_range, workdir)
        say("\nevery event equals the source's" if ok else "\nMISMATCH")
        return 0 if ok else 1


async def on_demand(
    client: httpx.AsyncClient, url: str, source: SampleFile, events_per_range: int, workdir: Path
) -> bool:
    """PanDA registers `source` for on-demand use only; the pilot client asks for a range of
    it, which an edge splits now; its events are compared with the source's."""
    response = await client.post(
        f"{url}/v1/requests",
        json=request_body([source], events_per_range, prepare=False),
    )
    response.raise_for_status()
    say(f"\nPanDA registers {source.lfn} for on-demand splits only (nothing prepared)")
    start, last = 101, 350
    asked = {
        "eventRangeID": "demo-on-demand-1",
        "LFN": source.lfn,
        "scope": SCOPE,
        "GUID": "",
        "startEvent": start,
        "lastEvent": last,
    }
    say(f"pilot client (on_demand=True) asks for events {start}-{last}")
    began = time.monotonic()
    async with PilotClient(
        url, workdir / "pilot-on-demand", on_demand=True, progress=False
    ) as pilot:
        result = await pilot.fetch([asked])
    (outcome,) = result.outcomes
    if not outcome.ok:
        say(f"  failed: {outcome.reason}")
        return False
    ok = True
    for served in outcome.pieces:
        p = served.piece
        say(
            f"  piece {p.key}\n    split on demand in {time.monotonic() - began:.2f} s; "
            f"local events {p.local_start_event}-{p.local_last_event}, {p.size} bytes, "
            f"adler32 {p.adler32} verified"
        )
        for c in compare_events(
            source.path,
            served.path,
            p.start_event,
            p.last_event,
            p.local_start_event,
            p.local_last_event,
        ):
            ok &= c.equal
            mark = "equal" if c.equal else "DIFFERENT"
            say(f"    {c.tree}/{c.branch:<12} {c.events} events {mark} to the source")
    return ok


def demo_main(workdir: Path, events_per_range: int, edges: int, fresh: bool) -> None:
    sys.exit(asyncio.run(run_demo(workdir, events_per_range, edges, fresh)))
