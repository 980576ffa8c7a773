"""ESS as pilot3's step that hands event ranges to the payload.

pilot3 (PyPI `panda-pilot`) runs an Event Service job through its `GenericExecutor`: it gets
ranges from PanDA (`getEventRanges`, through its `CommunicationManager`), and its `ESProcess`
gives the payload (AthenaMP, over yampl) one range at a time in `get_event_range_to_payload`.
`EssESProcess` is that process with the step done through ESS: the ranges PanDA handed out are
fetched with `ess_pilot` (close edge first, then the head), each verified on local disk, and
the payload gets them with `PFN` set to the local range file and `startEvent`/`lastEvent`
counted within it. A range that straddles two prepared files reaches the payload as two
ranges with the same `eventRangeID`; the range is reported finished to PanDA only once every
piece is, and failed once if any piece fails.

A range ESS could not serve never reaches the payload: it is reported to PanDA at once with
`updateEventRanges`, with the status and error code pilot3 uses (see ess_pilot.panda_updates).

Activation: `install()` makes pilot3's generic executor run `EssESProcess`; a site's pilot
wrapper does it by starting pilot3 as `python -m ess_pilot.pilot3 /path/to/pilot.py ARGS...`.
Settings come from the environment: `ESS_PILOT_HEAD_URL` (required), `ESS_PILOT_EDGE_URL`,
`ESS_PILOT_TOKEN`, `ESS_PILOT_SITE`, `ESS_PILOT_DEST` (default `ess-input` under the job's
work directory), `ESS_PILOT_ON_DEMAND` (1: split ranges no request prepared).

The one module that knows pilot3's internals; written for panda-pilot 3.7.0.36, refused on
another version (`install` raises).
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pilot.common.errorcodes import ErrorCodes
from pilot.eventservice.esprocess.esprocess import ESProcess
from pilot.eventservice.workexecutor.plugins import genericexecutor

from ess_pilot.client import SyncPilotClient
from ess_pilot.panda_updates import ESFATAL, STAGEINFAILED, Pieces, range_update, update_message
from ess_pilot.ranges import RangeOutcome

log = logging.getLogger("ess_pilot.pilot3")

PILOT_VERSION = "3.7.0.36"


@dataclass(frozen=True)
class EssConfig:
    head_url: str
    dest: Path
    edge_url: str | None = None
    token: str | None = None
    site: str | None = None
    on_demand: bool = False

    @classmethod
    def from_environment(cls, workdir: str | None = None) -> EssConfig:
        head = os.environ.get("ESS_PILOT_HEAD_URL")
        if not head:
            raise RuntimeError("ESS_PILOT_HEAD_URL is not set: pilot3 cannot fetch from ESS")
        dest = os.environ.get("ESS_PILOT_DEST") or os.path.join(workdir or ".", "ess-input")
        return cls(
            head_url=head,
            dest=Path(dest),
            edge_url=os.environ.get("ESS_PILOT_EDGE_URL") or None,
            token=os.environ.get("ESS_PILOT_TOKEN") or None,
            site=os.environ.get("ESS_PILOT_SITE") or None,
            on_demand=os.environ.get("ESS_PILOT_ON_DEMAND") == "1",
        )


class EssESProcess(ESProcess):  # type: ignore[misc]
    """pilot3's ESProcess, its ranges fetched through ESS (see the module's doc)."""

    def __init__(self, payload: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(payload, *args, **kwargs)
        self.ess = EssConfig.from_environment(payload.get("workdir"))
        self.pieces = Pieces()
        self.update_events: Callable[[dict[str, Any]], Any] | None = None
        self._client: SyncPilotClient | None = None

    def set_handle_out_message_hook(self, hook: Callable[[dict[str, Any]], None]) -> None:
        super().set_handle_out_message_hook(hook)
        # The executor whose hook this is reports ranges to PanDA: failed downloads go there.
        self.update_events = getattr(getattr(hook, "__self__", None), "update_events", None)

    def _fetch(self, ranges: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if self._client is None:
            # Made in the thread that runs the process: its event loop lives there.
            self._client = SyncPilotClient(
                self.ess.head_url,
                self.ess.dest,
                edge_url=self.ess.edge_url,
                token=self.ess.token,
                site=self.ess.site,
                on_demand=self.ess.on_demand,
                progress=False,
            )
        result = self._client.fetch(ranges)
        payload: list[dict[str, Any]] = []
        for outcome in result.outcomes:
            if outcome.ok:
                payload += outcome.payload()
            else:
                log.warning("ess range failed %s: %s", outcome.event_range_id, outcome.reason)
        if result.failed:
            self._report_failed(result.failed)
        self.pieces.sent(payload)
        return payload

    def _report_failed(self, failed: list[RangeOutcome]) -> None:
        message = update_message([range_update(o) for o in failed])
        if self.update_events is None:
            log.error("ess cannot report failed ranges to PanDA: %s", message)
            return
        self.update_events(message)

    def get_event_range_to_payload(self) -> dict[str, Any] | list[Any]:
        """One range for the payload, its file fetched and verified through ESS."""
        while not self.event_ranges_cache:
            ranges = self.get_event_ranges()
            if not ranges:
                return []
            self.event_ranges_cache.extend(self._fetch(ranges))
        event_range: dict[str, Any] = self.event_ranges_cache.pop(0)
        return event_range

    def handle_out_message(self, message: str) -> None:
        if not self.handle_out_message_hook:
            super().handle_out_message(message)
            return
        for passed in self.pieces.reported(self.parse_out_message(message)):
            self.handle_out_message_hook(passed)

    def clean(self) -> None:
        try:
            super().clean()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None


def install() -> None:
    """Make pilot3's generic Event Service executor hand ranges to the payload through ESS."""
    found = metadata.version("panda-pilot")
    if found != PILOT_VERSION:
        raise RuntimeError(
            f"ess_pilot.pilot3 is written for panda-pilot {PILOT_VERSION}, this is {found}"
        )
    if (ErrorCodes.STAGEINFAILED, ErrorCodes.ESFATAL) != (STAGEINFAILED, ESFATAL):
        raise RuntimeError("pilot3's error codes are not those ess_pilot.panda_updates reports")
    genericexecutor.ESProcess = EssESProcess


def main() -> None:
    """`python -m ess_pilot.pilot3 PILOT_PY [ARGS...]`: pilot3 itself, with ESS installed."""
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m ess_pilot.pilot3 /path/to/pilot.py [pilot arguments]")
    install()
    pilot_py = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(pilot_py)))
    runpy.run_path(pilot_py, run_name="__main__")


if __name__ == "__main__":
    main()
