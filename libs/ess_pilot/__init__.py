"""ess_pilot: the pilot's side of ESS, on the standard library and httpx only.

Give it PanDA event ranges; get them back rewritten for the payload, each piece a verified
local file (`PFN`) with `startEvent`/`lastEvent` counted within it, or marked failed with a
reason. See README.md in this directory.
"""

from __future__ import annotations

from ess_pilot.client import FetchResult, PilotClient, PilotOptions, SyncPilotClient
from ess_pilot.download import DownloadFailed, RetryPolicy
from ess_pilot.progress import Progress
from ess_pilot.ranges import EventRange, Piece, RangeOutcome, ServedPiece, payload_ranges

__all__ = [
    "DownloadFailed",
    "EventRange",
    "FetchResult",
    "Piece",
    "PilotClient",
    "PilotOptions",
    "Progress",
    "RangeOutcome",
    "RetryPolicy",
    "ServedPiece",
    "SyncPilotClient",
    "payload_ranges",
]
