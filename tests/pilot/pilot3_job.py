"""One Event Service job run by pilot3's own `GenericExecutor` and `ESProcess`, in a process of
its own, with ESS installed as the step that hands ranges to the payload
(`ess_pilot.pilot3.install`). `python -m tests.pilot.pilot3_job CONFIG.json`.

pilot3 talks to PanDA as it always does (`PANDA_SERVER_URL`: getEventRanges, updateEventRanges,
over curl); the test serves those. The one stand-in is the payload's end of the yampl channel
(AthenaMP needs yampl, which cannot run here): `AthenaMPStandIn` asks for ranges as AthenaMP's
workers do ("Ready for events"), records every range it receives, and, at "No more events",
lets the placeholder payload process end.

CONFIG: {"workdir": ..., "received": <JSON file for the ranges the payload got>,
"job": <PanDA's job description>}.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from pilot.eventservice.esprocess import esprocess
from pilot.eventservice.workexecutor.plugins.genericexecutor import GenericExecutor
from pilot.info.jobdata import JobData

from ess_pilot import pilot3

RECEIVED: list[dict[str, Any]] = []
DONE_MARKER = "payload-may-end"


class AthenaMPStandIn(threading.Thread):
    def __init__(self, message_queue: queue.Queue[str], *_: Any) -> None:
        super().__init__(name="athenamp-stand-in", daemon=True)
        self.to_pilot = message_queue
        self.inbox: queue.Queue[str] = queue.Queue()
        self._stopped = threading.Event()

    def get_yampl_socket_name(self) -> str:
        return "EventService_EventRanges-ess-test"

    def send(self, message: str) -> None:
        self.inbox.put(message)

    def run(self) -> None:
        while True:
            self.to_pilot.put("Ready for events")
            message = self.inbox.get()
            if "No more events" in message:
                break
            RECEIVED.extend(json.loads(message))
        Path(DONE_MARKER).write_text("")

    def stop(self) -> None:
        self._stopped.set()

    def is_stopped(self) -> bool:
        return self._stopped.is_set()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    config = json.loads(Path(sys.argv[1]).read_text())
    pilot3.install()
    esprocess.MessageThread = AthenaMPStandIn
    job = JobData(config["job"])
    job.workdir = config["workdir"]
    payload = {
        # The placeholder payload: alive until the stand-in has had "No more events". pilot3
        # names the yampl channel to the payload in the variable the comment mentions.
        "executable": (
            f"while [ ! -e {DONE_MARKER} ]; do sleep 0.05; done # PILOT_EVENTRANGECHANNEL"
        ),
        "workdir": config["workdir"],
        "job": job,
    }
    executor = GenericExecutor()
    executor.set_payload(payload)
    executor.start()
    executor.join(120)
    Path(config["received"]).write_text(json.dumps(RECEIVED))
    sys.exit(0 if executor.get_exit_code() == 0 else f"exit code {executor.get_exit_code()}")


if __name__ == "__main__":
    main()
