"""The pilot client against the embedded ESS: real head API, real range files, real downloads
over HTTP; and, at the head's HTTP boundary, a stand-in that is overloaded, refuses or drops
connections (support.StandIn).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ess_cli.compare import compare_events
from ess_common.checksums import adler32_of_file
from ess_pilot import FetchResult, PilotClient, SyncPilotClient
from tests.helpers import free_port
from tests.pilot.support import (
    FAST,
    Prepared,
    StandIn,
    pilot,
    removed,
    subprocess_env,
    tampered,
)

#: A range for the stand-in head, whose one file holds events 1-100.
STAND_IN_RANGE: dict[str, Any] = {
    "eventRangeID": "1-2-3-4-1",
    "LFN": "f.root",
    "scope": "s",
    "startEvent": 5,
    "lastEvent": 9,
}

#: What the package must never pull in: it is installed on worker nodes on its own.
SERVER_MODULES = {
    "ess_common",
    "ess_cli",
    "ess_head_api",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "pydantic",
    "uproot",
    "awkward",
    "numpy",
    "aiohttp",
}


def _loaded_top_level(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter loads for `statement`."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {name.split(".")[0] for name in out.split()}


def test_the_package_loads_only_the_standard_library_and_httpx() -> None:
    httpx_needs = _loaded_top_level("import httpx")
    pilot_needs = _loaded_top_level("import ess_pilot, ess_pilot.cli")
    third_party = {m for m in pilot_needs if m not in sys.stdlib_module_names}
    assert "httpx" in third_party
    assert not third_party & SERVER_MODULES, third_party
    assert third_party - {"ess_pilot"} <= httpx_needs, third_party - httpx_needs


async def test_a_batch_is_rewritten_for_the_payload(prepared: Prepared, tmp_path: Path) -> None:
    hzz, zmumu = prepared.lfns
    ranges = [
        prepared.range(hzz, 1, 50, 1, attemptNr=3),
        prepared.range(hzz, 450, 620, 2),  # straddles the files of 1-500 and 501-1000
        prepared.range("NTUP_PILOT.unknown._000009.root", 1, 10, 3),
        prepared.range(zmumu, 2290, 2304, 4),  # the last events of the file
        prepared.range(hzz, 0, 3, 5),  # PanDA's positions start at 1
        prepared.range(hzz, 2400, 2500, 6),  # beyond the 2421 events of the file
    ]
    dest = tmp_path / "dest"
    async with pilot(prepared.url, dest, token="t0ken") as (client, recorder):
        result = await client.fetch(ranges)

    # One lookup for the batch; each file once, though two ranges need the first one.
    assert len(recorder.lookups) == 1
    # The token goes to the head, not to the signed URLs (S3 refuses two authentications).
    assert recorder.lookups[0].request.headers["authorization"] == "Bearer t0ken"
    assert not any("authorization" in r.request.headers for r in recorder.downloads)
    keys = recorder.downloaded_keys()
    assert len(keys) == len(set(keys)) == 3, keys

    payload = result.payload
    assert [d["eventRangeID"] for d in payload] == [
        ranges[i]["eventRangeID"] for i in (0, 1, 1, 2, 3, 4, 5)
    ]
    assert [(d["startEvent"], d["lastEvent"]) for d in payload if "PFN" in d] == [
        (1, 50),
        (450, 500),  # events 450-500 of the file holding 1-500
        (1, 120),  # events 501-620 of the file holding 501-1000
        (290, 304),  # events 2290-2304 of the file holding 2001-2304
    ]
    served = [o for o in result.outcomes if o.ok]
    assert [o.original for o in served] == [ranges[0], ranges[1], ranges[3]]
    for outcome in served:
        lfn = str(outcome.original["LFN"])
        for served_piece, d in zip(outcome.pieces, outcome.payload(), strict=True):
            # Everything PanDA gave is handed on; only the file and its numbering change.
            assert {k: v for k, v in d.items() if k not in ("PFN", "startEvent", "lastEvent")} == {
                k: v for k, v in outcome.original.items() if k not in ("startEvent", "lastEvent")
            }
            pfn = Path(d["PFN"])
            assert pfn.is_file() and pfn.is_relative_to(dest)
            assert adler32_of_file(pfn) == served_piece.piece.adler32
            piece = served_piece.piece
            checks = compare_events(
                prepared.sources[lfn],
                pfn,
                piece.start_event,
                piece.last_event,
                d["startEvent"],
                d["lastEvent"],
            )
            assert checks and all(c.equal for c in checks), checks
            assert all(c.events == piece.last_event - piece.start_event + 1 for c in checks)

    failed = {d["eventRangeID"]: d for d in payload if d.get("status") == "failed"}
    assert set(failed) == {ranges[i]["eventRangeID"] for i in (2, 4, 5)}
    for i in (2, 4, 5):
        d = failed[ranges[i]["eventRangeID"]]
        assert {k: v for k, v in d.items() if k not in ("status", "reason")} == ranges[i]
        assert "PFN" not in d
    assert "not known" in failed[ranges[2]["eventRangeID"]]["reason"]
    assert "1-based" in failed[ranges[4]["eventRangeID"]]["reason"]
    assert "beyond the 2421 events" in failed[ranges[5]["eventRangeID"]]["reason"]
    assert not result.all_served and len(result.failed) == 3


async def test_a_held_file_serves_later_ranges_without_downloading(
    prepared: Prepared, tmp_path: Path
) -> None:
    hzz = prepared.lfns[0]
    dest = tmp_path / "dest"
    async with pilot(prepared.url, dest) as (client, recorder):
        first = await client.fetch([prepared.range(hzz, 1001, 1010, 1)])
        (held,) = first.payload
        mtime = Path(held["PFN"]).stat().st_mtime_ns
        asked = len(recorder.responses)
        later = await client.fetch([prepared.range(hzz, 1200, 1300, 2)])
        assert len(recorder.responses) == asked, "no lookup, no download"
    (again,) = later.payload
    assert again["PFN"] == held["PFN"] and Path(again["PFN"]).stat().st_mtime_ns == mtime
    assert (again["startEvent"], again["lastEvent"]) == (200, 300)
    assert later.outcomes[0].pieces[0].reused

    # A new process on the same directory finds the file too: a range straddling it and the
    # next file downloads only the next one.
    async with pilot(prepared.url, dest) as (client, recorder):
        result = await client.fetch([prepared.range(hzz, 1450, 1550, 3)])
    assert result.all_served
    assert len(recorder.lookups) == 1
    assert recorder.downloaded_keys() == await prepared.keys(hzz, 1501, 1550)
    first_piece, second_piece = result.outcomes[0].pieces
    assert first_piece.reused and first_piece.path == Path(held["PFN"])
    assert not second_piece.reused
    assert [(d["startEvent"], d["lastEvent"]) for d in result.payload] == [(450, 500), (1, 50)]


async def test_a_partial_download_is_resumed(prepared: Prepared, tmp_path: Path) -> None:
    hzz = prepared.lfns[0]
    (key,) = await prepared.keys(hzz, 1501, 1600)
    stored = prepared.object_path(key).read_bytes()
    half = len(stored) // 2
    dest = tmp_path / "dest"
    part = dest / f"{key}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(stored[:half])

    async with pilot(prepared.url, dest) as (client, recorder):
        result = await client.fetch([prepared.range(hzz, 1501, 1600, 1)])
    assert result.all_served, result.failed
    (download,) = recorder.downloads
    assert download.request.headers["range"] == f"bytes={half}-"
    assert download.status_code == 206
    assert int(download.headers["content-length"]) == len(stored) - half
    pfn = Path(result.payload[0]["PFN"])
    assert pfn.read_bytes() == stored and not part.exists()

    # A spoilt beginning is caught by the checksum and the file fetched whole.
    dest = tmp_path / "spoilt"
    part = dest / f"{key}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(bytes(half))
    async with pilot(prepared.url, dest) as (client, recorder):
        result = await client.fetch([prepared.range(hzz, 1501, 1600, 1)])
    assert result.all_served, result.failed
    assert [r.status_code for r in recorder.downloads] == [206, 200]
    assert Path(result.payload[0]["PFN"]).read_bytes() == stored


async def test_a_wrong_checksum_fails_that_range_only(prepared: Prepared, tmp_path: Path) -> None:
    zmumu = prepared.lfns[1]
    (key,) = await prepared.keys(zmumu, 1, 10)
    ranges = [prepared.range(zmumu, 1, 10, 1), prepared.range(zmumu, 501, 510, 2)]
    dest = tmp_path / "dest"
    with tampered(prepared.object_path(key)):
        async with pilot(prepared.url, dest, retries=1) as (client, recorder):
            result = await client.fetch(ranges)
    bad, good = result.outcomes
    assert bad.reason is not None and "adler32 mismatch" in bad.reason and key in bad.reason
    assert "after 2 attempts" in bad.reason
    assert good.ok
    assert recorder.downloaded_keys().count(key) == 2, "retried once"
    assert not (dest / key).exists() and not (dest / f"{key}.part").exists()
    assert result.payload[0]["status"] == "failed"


async def test_a_missing_object_fails_that_range_only(prepared: Prepared, tmp_path: Path) -> None:
    zmumu = prepared.lfns[1]
    (key,) = await prepared.keys(zmumu, 1001, 1010)
    ranges = [prepared.range(zmumu, 1001, 1010, 1), prepared.range(zmumu, 1501, 1510, 2)]
    with removed(prepared.object_path(key)):
        async with pilot(prepared.url, tmp_path / "dest") as (client, recorder):
            result = await client.fetch(ranges)
    missing, good = result.outcomes
    assert missing.reason is not None
    assert "missing" in missing.reason and "404" in missing.reason and key in missing.reason
    assert good.ok
    assert recorder.downloaded_keys().count(key) == 1, "a missing object is not asked again"


async def test_a_local_disk_that_cannot_take_the_file_fails_the_range(
    prepared: Prepared, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "ranges").write_text("a file where the directory of the pieces goes")
    async with pilot(prepared.url, dest) as (client, _):
        result = await client.fetch([prepared.range(prepared.lfns[0], 1, 2, 1)])
    (outcome,) = result.outcomes
    assert outcome.reason is not None and outcome.reason.count("local file") == 1


async def test_a_head_that_is_down_fails_every_range(prepared: Prepared, tmp_path: Path) -> None:
    hzz, zmumu = prepared.lfns
    closed = f"http://127.0.0.1:{free_port()}"
    ranges = [prepared.range(hzz, 1, 10, 1), prepared.range(zmumu, 11, 20, 2)]
    async with PilotClient(closed, tmp_path / "dest", **FAST) as client:
        result = await client.fetch(ranges)
    assert [o.original for o in result.outcomes] == ranges
    for d in result.payload:
        assert d["status"] == "failed"
        assert f"head {closed} unreachable" in d["reason"] and "after 3 attempts" in d["reason"]


async def test_an_edge_that_is_down_is_passed_over(prepared: Prepared, tmp_path: Path) -> None:
    hzz = prepared.lfns[0]
    closed = f"http://127.0.0.1:{free_port()}"
    async with pilot(prepared.url, tmp_path / "dest", edge_url=closed) as (client, recorder):
        result = await client.fetch([prepared.range(hzz, 700, 720, 1)])
    assert result.all_served, result.failed
    assert [r.request.url.host for r in recorder.lookups] == ["127.0.0.1"]
    assert recorder.lookups[0].request.url.port == int(prepared.url.rsplit(":", 1)[1])


async def test_an_overloaded_head_is_retried_after_retry_after_then_fails(
    prepared: Prepared, tmp_path: Path
) -> None:
    ranges = [prepared.range(prepared.lfns[0], 1, 10, 1), prepared.range("other.root", 1, 2, 2)]
    async with StandIn() as head, PilotClient(head.url, tmp_path / "dest", **FAST) as client:
        result = await client.fetch(ranges)
    assert len(head.lookups) == 3, "the first attempt and 2 retries"
    gaps = [b - a for a, b in zip(head.lookups, head.lookups[1:], strict=False)]
    assert all(gap >= 0.9 for gap in gaps), f"Retry-After: 1 honoured, not backoff_s: {gaps}"
    assert [o.original for o in result.outcomes] == ranges
    for outcome in result.outcomes:
        assert outcome.reason is not None
        assert "HTTP 503: the head is overloaded" in outcome.reason
        assert "after 3 attempts" in outcome.reason


async def test_an_overloaded_edge_is_asked_once_then_the_head(
    prepared: Prepared, tmp_path: Path
) -> None:
    async with (
        StandIn() as edge,
        pilot(prepared.url, tmp_path / "dest", edge_url=edge.url) as (client, _),
    ):
        result = await client.fetch([prepared.range(prepared.lfns[0], 30, 40, 1)])
    assert result.all_served, result.failed
    assert len(edge.lookups) == 1


async def test_ranges_an_edge_cannot_serve_are_asked_of_the_head(
    prepared: Prepared, tmp_path: Path
) -> None:
    ranges = [prepared.range(prepared.lfns[0], 30, 40, 1), prepared.range("nowhere.root", 1, 1, 2)]
    async with (
        StandIn(refuse="not held at this edge") as edge,
        pilot(prepared.url, tmp_path / "dest", edge_url=edge.url) as (client, recorder),
    ):
        edge.overloaded = False
        result = await client.fetch(ranges)
    served, unknown = result.outcomes
    assert served.ok
    assert unknown.reason is not None and "not known" in unknown.reason, "the head's reason"
    assert len(edge.lookups) == 1 and len(recorder.lookups) == 2


async def test_busy_and_dropped_downloads_are_retried_and_resumed(tmp_path: Path) -> None:
    content = bytes(range(256)) * 4096
    ranges = [STAND_IN_RANGE]
    async with StandIn(content, busy_downloads=1, drop=True) as head:
        head.overloaded = False
        async with PilotClient(head.url, tmp_path / "dest", **FAST) as client:
            result = await client.fetch(ranges)
    assert result.all_served, result.failed
    assert head.downloads == [None, None, f"bytes={len(content) // 2}-"]
    (d,) = result.payload
    assert Path(d["PFN"]).read_bytes() == content
    assert (d["startEvent"], d["lastEvent"]) == (5, 9)

    async with StandIn(content, busy_downloads=10) as head:
        head.overloaded = False
        async with PilotClient(head.url, tmp_path / "busy", **FAST) as client:
            result = await client.fetch(ranges)
    (outcome,) = result.outcomes
    assert outcome.reason is not None
    assert "HTTP 503: busy" in outcome.reason and "after 3 attempts" in outcome.reason
    assert len(head.downloads) == 3


async def test_a_refused_signed_url_is_asked_for_again(tmp_path: Path) -> None:
    content = b"event data" * 1000
    async with StandIn(content, forbidden_downloads=1) as head:
        head.overloaded = False
        async with PilotClient(head.url, tmp_path / "dest", **FAST) as client:
            result = await client.fetch([STAND_IN_RANGE])
    assert result.all_served, result.failed
    # The batch lookup, then one for a new URL of the file after the 403.
    assert len(head.lookups) == 2
    assert head.signed_urls == ["signature=1", "signature=2"]


async def test_the_sync_client(prepared: Prepared, tmp_path: Path) -> None:
    ranges = [prepared.range(prepared.lfns[1], 480, 520, 1)]

    def fetch() -> FetchResult:
        with SyncPilotClient(prepared.url, tmp_path / "dest", **FAST) as client:
            return client.fetch(ranges)

    # The embedded ESS runs on this loop; the sync client runs its own, in a thread.
    result = await asyncio.to_thread(fetch)
    assert [(d["startEvent"], d["lastEvent"]) for d in result.payload] == [(480, 500), (1, 20)]
    assert json.loads(json.dumps(result.payload)) == result.payload
