"""PanDA's side of the STOMP boundary, with PanDA's own client (`panda-common`'s
`pandacommon.pandamsgbkr.msg_bkr_utils`): `MBSenderProxy` sends as JEDI does, `MBListenerProxy`
receives as PanDA's message processors do.

Run as a child process (`python -m tests.panda_stomp send|listen ...`): panda-common configures
logging for its whole process when imported, and reads its configuration from
`$PANDA_HOME/etc/panda/panda_common.cfg`, which `panda_home` writes.

    send DESTINATION FILE...   each file's content as one message; prints "sent" when done
    listen DESTINATION N       prints each message body as one JSON line, until N were received
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STOMP_HOST_PORT = os.environ.get("ESS_TEST_STOMP_HOST_PORT", "127.0.0.1:61613")


def panda_home(directory: Path) -> dict[str, str]:
    """The environment of a PanDA client process: its configuration (a `[logger]` section is
    all the message-broker client needs) and its log directory under `directory`."""
    (directory / "etc" / "panda").mkdir(parents=True, exist_ok=True)
    (directory / "log").mkdir(exist_ok=True)
    (directory / "etc" / "panda" / "panda_common.cfg").write_text(
        "[logger]\n"
        f"logdir = {directory / 'log'}\n"
        "log_level = DEBUG\n"
        "loghost = 127.0.0.1\n"
        "monport-apache = 9\n"
        "monurlprefix = /\n"
        "method = POST\n"
        "encoding = json\n"
    )
    return {**os.environ, "PANDA_HOME": str(directory)}


def start(directory: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.panda_stomp", *args],
        env=panda_home(directory),
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _proxy_args(destination: str) -> dict[str, Any]:
    return {
        "host_port_list": [STOMP_HOST_PORT],
        "destination": destination,
        # RabbitMQ reads the virtual host from the CONNECT frame's host header.
        "vhost": "/",
        "username": "guest",
        "passcode": "guest",
    }


def _send(destination: str, files: list[str]) -> None:
    from pandacommon.pandamsgbkr.msg_bkr_utils import MBSenderProxy

    sender = MBSenderProxy("ess-test-sender", **_proxy_args(destination))
    sender.go()
    for name in files:
        sender.send(Path(name).read_text(), headers={"persistent": "true"})
    # A DISCONNECT with a receipt: every SEND before it has reached the broker.
    sender.conn.disconnect(receipt="ess-test-done")
    print("sent", flush=True)


def _listen(destination: str, count: int, timeout_s: float) -> None:
    from pandacommon.pandamsgbkr.msg_bkr_utils import MBListenerProxy

    listener = MBListenerProxy("ess-test-listener", **_proxy_args(destination))
    listener.go()
    print("listening", flush=True)
    deadline = time.monotonic() + timeout_s
    received = 0
    while received < count and time.monotonic() < deadline:
        for message in listener.get_messages():
            with message:
                print(json.dumps({"body": message.data}), flush=True)
                received += 1
        time.sleep(0.05)
    listener.stop()
    sys.exit(0 if received >= count else 1)


def main() -> None:
    command, destination, *rest = sys.argv[1:]
    if command == "send":
        _send(destination, rest)
    elif command == "listen":
        _listen(destination, int(rest[0]), float(rest[1]) if len(rest) > 1 else 60.0)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
