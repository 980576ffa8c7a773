"""PostgreSQL and RabbitMQ servers of one test alone, for tests that kill and restart them.

The machine's shared servers (PostgreSQL on 5432, RabbitMQ on 5672) serve every other test and
must never go down; a test that kills its database or broker starts its own: a PostgreSQL
cluster made by Debian's `initdb` and a RabbitMQ node with its own name, ports, data, logs,
Erlang cookie and no plugins, each in a directory of its own on free ports, each a child
process in the foreground, so that `kill()` is a real `kill -9` and `start()` brings the same
data back. Also what a test needs to check that a killed process left nothing behind: the
process tree under a pid, read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import aio_pika
import asyncpg  # type: ignore[import-untyped]
from aio_pika.exceptions import AMQPError

from tests.helpers import eventually, free_port

#: Debian's RabbitMQ start script itself: /usr/sbin/rabbitmq-server re-runs it as the
#: `rabbitmq` user with its logs redirected, which a test cannot kill and watch as its child.
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


# --- processes ----------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The name (in parentheses) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every living process under `pid`: its children, theirs, and so on."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[0] not in ("Z", "X"):
            children.setdefault(stat[1], []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_name(pid: int) -> str:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


async def wait_gone(pids: list[int], *, timeout: float, what: str) -> None:  # noqa: ASYNC109
    """Until none of `pids` runs; fails naming those left (with their command lines)."""

    def left() -> list[str]:
        return [f"{p} {command_name(p)}" for p in pids if running(p)]

    await eventually(lambda: not left(), timeout=timeout, interval=0.1, message=f"{what}: {left()}")


class _Child:
    """A server process in a session of its own, its output in a log file."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.log = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], env: dict[str, str], user: str | None = None) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                env=env,
                user=user,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"not running; its log ends:\n{self.tail()}")
        return self.process.pid

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)

    def terminate(self, sig: int, timeout_s: float = 30.0) -> None:
        """`sig` to the whole session, then SIGKILL to what is left after `timeout_s`."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def _private_directory(prefix: str, owner: str | None) -> Path:
    # Under the system's temporary directory rather than pytest's: those are private to the
    # user who runs the tests, and PostgreSQL may have to run as another one.
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    return directory


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's programs (Debian keeps them per major version)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not found:
        raise AssertionError("no PostgreSQL under /usr/lib/postgresql: apt-get install postgresql")
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL cluster of its own on a free port of 127.0.0.1 (trust authentication).

    PostgreSQL refuses to run as root; as root it runs as the `postgres` user.
    """

    def __init__(self) -> None:
        self.user = "postgres" if os.geteuid() == 0 else None
        self.directory = _private_directory("ess-pg-", self.user)
        self.data = self.directory / "data"
        self.port = free_port()
        self.bin = postgres_bin()
        self._child = _Child(self.directory, "postgres")
        self._initialised = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int:
        """The postmaster's."""
        return self._child.pid

    def tail(self) -> str:
        return self._child.tail()

    async def start(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Make the cluster on first use, start the postmaster and wait until it answers."""
        if not self._initialised:
            await asyncio.to_thread(
                subprocess.run,
                [
                    str(self.bin / "initdb"),
                    *("-D", str(self.data), "-U", "postgres", "--auth=trust"),
                    *("-E", "UTF8", "--no-sync"),
                ],
                user=self.user,
                cwd=self.directory,
                check=True,
                capture_output=True,
            )
            self._initialised = True
        self._child.spawn(
            [
                str(self.bin / "postgres"),
                *("-D", str(self.data), "-p", str(self.port), "-k", str(self.directory)),
                *("-c", "listen_addresses=127.0.0.1"),
                # Only the OS crashing loses what fsync would keep; a killed server loses nothing.
                *("-c", "fsync=off", "-c", "full_page_writes=off"),
                *("-c", "max_connections=200"),
            ],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            user=self.user,
        )

        async def answers() -> bool:
            self.pid  # noqa: B018 - fails with the log when the server exited
            try:
                connection = await asyncpg.connect(
                    host="127.0.0.1", port=self.port, user="postgres", timeout=2
                )
            except (OSError, asyncpg.PostgresError, TimeoutError):
                return False
            await connection.close()
            return True

        await eventually(answers, timeout=timeout, interval=0.2, message="private PostgreSQL")

    async def create_database(self, name: str) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        connection = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres")
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return self.url(name)

    def kill(self) -> list[int]:
        """`kill -9` of the postmaster; the pids of its processes, which should all end."""
        pids = [self.pid, *descendants(self.pid)]
        os.kill(self.pid, signal.SIGKILL)
        self._child.reap()
        return pids

    def stop(self) -> None:
        """A fast shutdown (SIGINT): sessions are ended, the data kept."""
        self._child.terminate(signal.SIGINT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- RabbitMQ -----------------------------------------------------------------------------------


class PrivateRabbit:
    """A RabbitMQ node of its own: its own node name, AMQP and distribution ports, data, logs,
    configuration and Erlang cookie (in its own HOME), and no plugins. Its data survives
    `kill()`, so durable queues and persistent messages come back with `start()`.

    The machine's Erlang port mapper (epmd on 4369) is shared: it keeps one entry per node name.
    """

    def __init__(self) -> None:
        if not RABBITMQ_SERVER.exists():
            raise AssertionError(f"no {RABBITMQ_SERVER}: apt-get install rabbitmq-server")
        self.directory = _private_directory("ess-rabbit-", None)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"ess-{uuid.uuid4().hex[:8]}@localhost"
        self._child = _Child(self.directory, "rabbitmq")
        (self.directory / "enabled_plugins").write_text("")
        # Settings of the machine's node (its NODENAME, its listener on 5672) stay out.
        (self.directory / "rabbitmq-env.conf").write_text("")
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nlog.console = true\nlog.file = false\n"
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        d = self.directory
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(d),  # where Erlang makes this node's cookie
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        }

    @property
    def pid(self) -> int:
        """The Erlang VM's (beam.smp), under the start script."""
        script = self._child.pid
        for pid in descendants(script):
            if command_name(pid).startswith("beam"):
                return pid
        raise AssertionError(f"no Erlang VM under {script}; log:\n{self.tail()}")

    def tail(self) -> str:
        return self._child.tail()

    async def start(self, timeout: float = 90.0) -> None:  # noqa: ASYNC109
        """Start the node and wait until it takes AMQP connections."""
        self._child.spawn([str(RABBITMQ_SERVER)], self.env())

        async def answers() -> bool:
            self._child.pid  # noqa: B018 - fails with the log when the node exited
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
            except (OSError, TimeoutError, AMQPError):
                return False
            await connection.close()
            return True

        await eventually(answers, timeout=timeout, interval=0.3, message="private RabbitMQ")

    async def pending(self) -> dict[str, int]:
        """Messages of each queue not yet done with: ready, or delivered and not acknowledged
        (which AMQP itself does not tell). Asked of the node with `rabbitmqctl`."""
        ctl = await asyncio.create_subprocess_exec(
            str(RABBITMQ_SERVER.parent / "rabbitmqctl"),
            *("-n", self.node, "list_queues", "-q", "--no-table-headers"),
            *("name", "messages_ready", "messages_unacknowledged"),
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await ctl.communicate()
        if ctl.returncode != 0:
            raise AssertionError(f"rabbitmqctl list_queues: {out.decode(errors='replace')}")
        counts = {}
        for line in out.decode().splitlines():
            name, ready, unacked = line.rsplit(maxsplit=2)
            counts[name] = int(ready) + int(unacked)
        return counts

    def kill(self) -> list[int]:
        """`kill -9` of the Erlang VM; the pids of the node's processes, which should all end."""
        beam = self.pid
        pids = [self._child.pid, beam, *descendants(beam)]
        os.kill(beam, signal.SIGKILL)
        self._child.reap()
        return pids

    def stop(self) -> None:
        self._child.terminate(signal.SIGTERM)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
