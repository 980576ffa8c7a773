"""`python -m ess_pilot.cli fetch` as a pilot runs it: a child process against the embedded ESS,
JSON in (a file or stdin), JSON out, the exit code saying whether every range was served."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import free_port
from tests.pilot.support import Prepared, subprocess_env


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def payload(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads(self.stdout)
        return data


async def ess_pilot(*args: str, stdin: str = "", stderr: int | None = None) -> Run:
    """`stderr`: a descriptor for the command's stderr (else it is read into `Run.stderr`)."""
    # A child process, awaited: the embedded ESS answering it runs on this event loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ess_pilot.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr,
        env=subprocess_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), (err or b"").decode())


def fetch_args(head: str, dest: Path, *more: str) -> list[str]:
    return [
        "fetch",
        "--head",
        head,
        "--dest",
        str(dest),
        "--retries",
        "1",
        "--backoff",
        "0.01",
        *more,
    ]


async def test_every_range_served_exits_0(prepared: Prepared, tmp_path: Path) -> None:
    hzz, zmumu = prepared.lfns
    ranges = [prepared.range(hzz, 990, 1010, 1), prepared.range(zmumu, 7, 7, 2)]
    source = tmp_path / "ranges.json"
    source.write_text(json.dumps(ranges))
    run = await ess_pilot(*fetch_args(prepared.url, tmp_path / "dest", str(source)))
    assert run.code == 0, run.stderr
    assert "ess-pilot:" not in run.stderr, "no progress line when stderr is not a terminal"
    payload = run.payload()
    assert [d["eventRangeID"] for d in payload] == [ranges[i]["eventRangeID"] for i in (0, 0, 1)]
    assert [(d["startEvent"], d["lastEvent"]) for d in payload] == [(490, 500), (1, 10), (7, 7)]
    for d in payload:
        assert "status" not in d and Path(d["PFN"]).is_file()
        assert d["GUID"] == next(
            r["GUID"] for r in ranges if r["eventRangeID"] == d["eventRangeID"]
        )
    assert payload[0]["PFN"] != payload[1]["PFN"]


async def test_some_range_failed_exits_2_and_says_why(prepared: Prepared, tmp_path: Path) -> None:
    ranges = [
        prepared.range(prepared.lfns[0], 5, 6, 1),
        prepared.range("NTUP_PILOT.unknown._000001.root", 1, 2, 2),
    ]
    run = await ess_pilot(
        *fetch_args(prepared.url, tmp_path / "dest", "--progress", "-"), stdin=json.dumps(ranges)
    )
    assert run.code == 2, run.stderr
    served, failed = run.payload()
    assert served["PFN"] and (served["startEvent"], served["lastEvent"]) == (5, 6)
    assert failed["status"] == "failed" and "not known" in failed["reason"]
    assert failed["eventRangeID"] == ranges[1]["eventRangeID"]
    assert "ess-pilot: 1/1 files" in run.stderr, "the progress line, when asked for"


async def test_a_head_that_is_down_exits_2(prepared: Prepared, tmp_path: Path) -> None:
    head = f"http://127.0.0.1:{free_port()}"
    ranges = [prepared.range(prepared.lfns[0], 5, 6, 1)]
    output = tmp_path / "out.json"
    run = await ess_pilot(
        *fetch_args(head, tmp_path / "dest", "--output", str(output), "-"),
        stdin=json.dumps(ranges),
    )
    assert run.code == 2, run.stderr
    assert run.stdout == ""
    (failed,) = json.loads(output.read_text())
    assert failed["status"] == "failed" and "unreachable" in failed["reason"]


async def test_wrong_input_exits_1(prepared: Prepared, tmp_path: Path) -> None:
    run = await ess_pilot(*fetch_args(prepared.url, tmp_path, "-"), stdin='{"not": "a list"}')
    assert run.code == 1 and "expected a JSON list" in run.stderr
    run = await ess_pilot(*fetch_args(prepared.url, tmp_path, "-"), stdin="[{")
    assert run.code == 1 and "cannot read the event ranges" in run.stderr
    run = await ess_pilot("fetch", "--dest", str(tmp_path), "-")
    assert run.code == 1 and "--head" in run.stderr


async def test_a_terminal_gets_the_progress_line_a_pipe_does_not(
    prepared: Prepared, tmp_path: Path
) -> None:
    """No flag given: stderr on a terminal (a pseudo-terminal here) shows the download's
    progress; the JSON on stdout, a pipe, stays clean."""
    ranges = json.dumps([prepared.range(prepared.lfns[0], 5, 6, 1)])
    terminal, seen_by_process = pty.openpty()
    try:
        try:
            run = await ess_pilot(
                *fetch_args(prepared.url, tmp_path / "dest", "-"),
                stdin=ranges,
                stderr=seen_by_process,
            )
        finally:
            os.close(seen_by_process)
        shown = await asyncio.to_thread(read_all, terminal)
    finally:
        os.close(terminal)
    assert run.code == 0, shown
    assert "ess-pilot: 1/1 files (0 reused, 0 failed)" in shown
    assert "\r" in shown, "the line is redrawn in place"
    assert "ess-pilot" not in run.stdout
    assert run.payload()[0]["PFN"]


def read_all(fd: int) -> str:
    """What a process wrote to its terminal, once it has closed it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
