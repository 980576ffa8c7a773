"""What pilot3 tells PanDA about event ranges ESS served or could not serve, without pilot3
itself (ess_pilot.pilot3 is the glue that imports it).

A range ESS could not serve is reported with `updateEventRanges` as pilot3 reports a failed
range: `failed` with pilot3's STAGEINFAILED (1099, "Failed to stage-in file") when the download
failed (PanDA may hand the range out again), `fatal` with ESFATAL (1228, "Event service: fatal
error") when ESS refused the range itself (not a PanDA range, or events beyond the file). A
range that reached the payload as several pieces is reported finished when every piece is, and
failed once, at its first failed piece (`Pieces`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ess_pilot.ranges import RangeOutcome

#: pilot3's `ErrorCodes` (pilot.common.errorcodes), checked against it by ess_pilot.pilot3.
STAGEINFAILED = 1099
ESFATAL = 1228
PILOT_VERSION = "3.7.0.36"
#: Refusals that no other attempt can change: the range itself does not fit.
_FATAL = frozenset({"bad_range", "outside_file"})


def range_update(outcome: RangeOutcome) -> dict[str, Any]:
    """The `updateEventRanges` entry for a range ESS could not serve, as pilot3 writes one."""
    fatal = outcome.code in _FATAL
    return {
        "eventRangeID": outcome.event_range_id,
        "eventStatus": "fatal" if fatal else "failed",
        "errorCode": ESFATAL if fatal else STAGEINFAILED,
        "errorDiag": (outcome.reason or "")[:500],
    }


def update_message(updates: list[dict[str, Any]]) -> dict[str, Any]:
    """The body pilot3 posts to `updateEventRanges` for failed ranges (version 0)."""
    return {"version": 0, "eventRanges": json.dumps(updates)}


@dataclass
class Pieces:
    """The payload's reports of ranges that reached it as several pieces: a range is finished
    when all its pieces are, failed at its first failed piece."""

    expected: dict[str, int] = field(default_factory=dict)
    finished: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def sent(self, payload: list[dict[str, Any]]) -> None:
        for piece in payload:
            range_id = str(piece["eventRangeID"])
            self.expected[range_id] = self.expected.get(range_id, 0) + 1

    def reported(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """What to pass on to pilot3 for one parsed payload message (may be nothing yet)."""
        range_id = str(message.get("id"))
        wanted = self.expected.get(range_id, 1)
        if range_id in self.failed:
            return []
        if message.get("status") in ("failed", "fatal"):
            self.failed.add(range_id)
            self.finished.pop(range_id, None)
            return [message]
        held = self.finished.setdefault(range_id, [])
        held.append(message)
        if len(held) < wanted:
            return []
        return self.finished.pop(range_id)
