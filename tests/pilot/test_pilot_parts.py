"""The client's parts that need no server: reading PanDA ranges and lookup answers, the retry
timing, the held-file index and the progress line."""

from __future__ import annotations

import io
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from ess_pilot import EventRange, Piece, Progress, RetryPolicy
from ess_pilot.download import retry_after_s
from ess_pilot.held import HeldFile, HeldFiles
from ess_pilot.ranges import BadAnswer, BadRange, check_cover

PANDA = {
    "eventRangeID": "12164365-3616045203-10980024041-4138-8",
    "LFN": "EVNT.08716373._000060.pool.root.1",
    "scope": "mc15_13TeV",
    "GUID": "2FC641BA-1B2C-4D5E-8F90-123456789ABC",
    "startEvent": 4138,
    "lastEvent": 4140,
}


def answer_piece(first: int, last: int, start: int, stop: int, **extra: Any) -> dict[str, Any]:
    return {
        "url": "http://store/x",
        "key": f"ranges/s/f/{first:09d}-{last:09d}.root",
        "size": 10,
        "adler32": "1a2b3c",
        "file_first_event": first,
        "file_last_event": last,
        "start_event": start,
        "last_event": stop,
        "local_start_event": start - first + 1,
        "local_last_event": stop - first + 1,
        "expires_in_s": 600,
        **extra,
    }


def test_a_panda_range_is_read_and_checked() -> None:
    r = EventRange.from_panda({**PANDA, "startEvent": "4138"})
    assert (r.start_event, r.last_event, r.lfn) == (4138, 4140, PANDA["LFN"])
    assert r.to_lookup()["startEvent"] == 4138
    for broken, why in [
        ({k: v for k, v in PANDA.items() if k != "LFN"}, "missing LFN"),
        ({**PANDA, "startEvent": 0}, "1 <= startEvent <= lastEvent"),
        ({**PANDA, "startEvent": 9000}, "1 <= startEvent <= lastEvent"),
        ({**PANDA, "lastEvent": True}, "not an integer"),
        ({**PANDA, "lastEvent": 4140.5}, "not an integer"),
        ({**PANDA, "scope": ""}, "scope"),
    ]:
        with pytest.raises(BadRange, match=why):
            EventRange.from_panda(broken)


def test_a_lookup_answer_is_checked_before_anything_is_downloaded() -> None:
    r = EventRange.from_panda({**PANDA, "startEvent": 450, "lastEvent": 620})
    second = Piece.from_answer(answer_piece(501, 1000, 501, 620))
    first = Piece.from_answer(answer_piece(1, 500, 450, 500))
    ordered = check_cover(r, [second, first])
    assert [(p.local_start_event, p.local_last_event) for p in ordered] == [(450, 500), (1, 120)]
    assert ordered[0].adler32 == "001a2b3c"
    with pytest.raises(BadAnswer, match="does not hold events 501-620"):
        check_cover(r, [Piece.from_answer(answer_piece(1, 500, 450, 500))])
    with pytest.raises(BadAnswer, match="does not hold event 450"):
        check_cover(r, [Piece.from_answer(answer_piece(460, 700, 460, 620))])
    with pytest.raises(BadAnswer, match="local_start_event 1 but the file numbering gives 2"):
        Piece.from_answer(answer_piece(1, 500, 2, 5, local_start_event=1))
    with pytest.raises(BadAnswer, match="not a safe relative path"):
        Piece.from_answer(answer_piece(1, 500, 2, 5, key="../../etc/passwd"))
    with pytest.raises(BadAnswer, match="outside"):
        check_cover(r, [Piece.from_answer(answer_piece(1, 500, 450, 620, local_last_event=620))])


def test_a_signed_url_is_renewed_before_it_expires() -> None:
    fresh = Piece.from_answer(answer_piece(1, 500, 1, 5))
    assert not fresh.url_expiring
    old = replace(fresh, received_at=time.monotonic() - 541)
    assert old.url_expiring, "600 s of life, less than 60 s left"
    assert not replace(old, url="").url_expiring, "a held file has no URL to renew"


def test_retry_after_is_read_and_waited() -> None:
    assert retry_after_s("3") == 3.0
    later = retry_after_s(format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True))
    assert later is not None and 25 < later <= 30
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    policy = RetryPolicy(retries=3, backoff_s=1.0, max_backoff_s=4.0, max_retry_after_s=10.0)
    assert 1.0 <= policy.delay(1) <= 1.25 and 2.0 <= policy.delay(2) <= 2.5
    assert 4.0 <= policy.delay(5) <= 5.0, "capped"
    assert policy.delay(1, 7.0) == 7.0 and policy.delay(1, 600.0) == 10.0
    assert 1.0 <= policy.delay(1, 0.0) <= 1.25, "never sooner than the backoff"


def test_held_files_cover_a_range_with_the_fewest(tmp_path: Path) -> None:
    held = HeldFiles(tmp_path)
    for first, last in [(1, 100), (101, 200), (1, 300), (301, 400)]:
        key = f"ranges/s/f/{first}-{last}.root"
        held.add(HeldFile(key, "s", "f", 1, "00000001", first, last))
    pieces = held.covering("s", "f", 150, 350)
    assert pieces is not None
    assert [(p.file_first_event, p.start_event, p.last_event) for p in pieces] == [
        (1, 150, 300),
        (301, 301, 350),
    ]
    assert held.covering("s", "f", 350, 401) is None
    assert held.covering("s", "other", 1, 1) is None
    # Sidecars are written apart from holding (the downloader does it in a worker thread).
    assert not list(tmp_path.rglob("*.ess.json"))
    held.write_sidecars(held.take_unwritten())
    assert held.take_unwritten() == []
    again = HeldFiles(tmp_path)
    again.load()
    assert again.covering("s", "f", 150, 350) == pieces, "found again from the sidecars"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_is_drawn_on_a_terminal_only() -> None:
    terminal = Terminal()
    progress = Progress(terminal, min_interval_s=0)
    progress.add(2, 3 * 1024 * 1024)
    progress.advance(1024 * 1024)
    progress.file_done(ok=True)
    progress.file_done(ok=False)
    progress.close()
    text = terminal.getvalue()
    assert text.endswith("ess-pilot: 2/2 files (0 reused, 1 failed) 1.0/3.0 MiB\n")
    assert text.count("\r") >= 3

    pipe = io.StringIO()
    quiet = Progress(pipe)
    quiet.add(1, 10)
    quiet.file_done(ok=True)
    quiet.close()
    assert pipe.getvalue() == ""
