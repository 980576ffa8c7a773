"""Fixtures of the whole suite: the real PostgreSQL, RabbitMQ and S3 servers, and the embedded
stand-ins (SQLite, the in-process bus, a local directory) that must pass the same tests.

A server that does not answer fails (errors) the tests that need it with its address and how
to start it; nothing is ever skipped. Each test gets its own state: a truncated database, its
own exchange and queues, its own bucket. Servers are only contacted by the tests that use them.

Addresses come from `ESS_TEST_*` variables (set by scripts/test.sh), with local defaults.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
import structlog
from aio_pika.exceptions import AMQPError
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

# Test modules import `tests.helpers`: the name mypy gives that file (namespace package from the
# project root). pytest puts only `tests/` itself on sys.path, so the root is added here.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from tests.helpers import local_servers_allowed  # noqa: E402 - needs the root on sys.path

# Every process the tests start may reach the tests' own servers on this machine: the URL
# policy refuses loopback addresses and file:// outside named folders by default.
os.environ.update(local_servers_allowed())

from ess_common.db.migrate import upgrade  # noqa: E402
from ess_common.db.session import SessionMaker, make_engine, make_session_maker  # noqa: E402
from ess_common.messaging.amqp import AmqpBus  # noqa: E402
from ess_common.messaging.bus import Bus, Handler, audit_queue, dead_exchange  # noqa: E402
from ess_common.messaging.memory import MemoryBus  # noqa: E402
from ess_common.store.base import ObjectStore  # noqa: E402
from ess_common.store.local import LocalStore  # noqa: E402
from ess_common.store.s3 import S3Store  # noqa: E402
from tests.helpers import S3Settings, UniqueNames  # noqa: E402
from tests.rucio_server import RUCIO_URL, RucioServer, RucioWorld  # noqa: E402

if TYPE_CHECKING:
    from tests.e2e.deployment import Deployment

DATABASE_URL = os.environ.get(
    "ESS_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/ess_test"
)
AMQP_URL = os.environ.get("ESS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
S3 = S3Settings(
    endpoint_url=os.environ.get("ESS_TEST_S3_ENDPOINT_URL", "http://127.0.0.1:8080"),
    access_key=os.environ.get("ESS_TEST_S3_ACCESS_KEY", "test:tester"),
    secret_key=os.environ.get("ESS_TEST_S3_SECRET_KEY", "testing"),
    region=os.environ.get("ESS_TEST_S3_REGION", "us-east-1"),
)

#: What every bus of the tests uses: fast retries, few attempts.
MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.05
LOCAL_STORE_BASE_URL = "http://testserver"
LOCAL_STORE_SECRET = b"k"


# --- which tests need a server ---------------------------------------------------------------

#: Fixtures that contact their server when they are set up.
_SERVER_FIXTURES = frozenset({"pg_url", "amqp_url", "s3_settings", "xrootd"})
#: Fixtures that stand for a server and contact it only when asked to (their `url()` or
#: `check()`): a test needs the server when it, or a fixture of its own, takes one.
_LAZY_SERVERS = frozenset({"postgres_server", "amqp_server", "s3_server"})
#: Fixtures run once per backend, which take a lazy server for one of their parameters only.
_BACKENDS = {"db_url": "postgresql", "bus": "amqp", "store": "s3"}


def needs_server(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if names & _SERVER_FIXTURES:
        return True
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    if any(params.get(fixture) == server for fixture, server in _BACKENDS.items()):
        return True
    takers: set[str] = set(getattr(getattr(item, "_fixtureinfo", None), "argnames", ()))
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for name, defs in definitions.items():
        if name not in _BACKENDS:
            takers.update(arg for d in defs for arg in d.argnames)
    return bool(takers & _LAZY_SERVERS)


#: Tests that need no server but take seconds each: ROOT splitting, the API's fuzzing, whole
#: flows and benchmark runs. The fast path (`scripts/test.sh --fast`) leaves them out too.
_SLOW = (
    "tests/splitter/",
    "tests/e2e/",
    "tests/benchmarks/",
    "tests/cli/",
    "tests/head_api/test_api_fuzz.py",
    "tests/chaos/",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need a server `servers`, and the slow ones `slow`: the fast path is
    `-m "not servers and not slow"`."""
    for item in items:
        if needs_server(item):
            item.add_marker(pytest.mark.servers)
        if item.nodeid.startswith(_SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterable[None]:
    """A command run in-process (a benchmark's `main`) configures logging for the process;
    the next test starts from structlog's defaults again."""
    yield
    structlog.reset_defaults()


class ServerCheck:
    """Whether a server answered. A server that did not fails every test needing it at once,
    with the reason and how to start one."""

    def __init__(self, what: str, where: str, variable: str) -> None:
        self.what = what
        self.where = where
        self.variable = variable
        self.ok = False
        self.problem: str | None = None

    def failed(self, exc: BaseException) -> None:
        self.problem = (
            f"{self.what} at {self.where} is not usable ({type(exc).__name__}: {exc}); "
            f"start the servers with `bash scripts/ensure-services.sh` "
            f"or point {self.variable} at one"
        )

    def raise_problem(self) -> None:
        # Outside any `except` block, so that the report is this one line, not a chain.
        if self.problem is not None:
            pytest.fail(self.problem, pytrace=False)


# --- PostgreSQL ---------------------------------------------------------------------------------


class PostgresServer:
    """The PostgreSQL server of the tests: one fresh database per session, made on first use."""

    def __init__(self, url: str) -> None:
        self.server_url: URL = make_url(url)
        self.database = f"ess_t_{uuid.uuid4().hex[:12]}"
        self._created = False
        self._url: str | None = None
        self._engine: AsyncEngine | None = None
        self._lock = asyncio.Lock()
        self.check = ServerCheck("PostgreSQL", self.where, "ESS_TEST_DATABASE_URL")

    @property
    def where(self) -> str:
        return self.server_url.render_as_string(hide_password=True)

    async def _admin(self, statement: str) -> None:
        # CREATE/DROP DATABASE cannot run in a transaction, hence AUTOCOMMIT.
        engine = create_async_engine(
            self.server_url,
            isolation_level="AUTOCOMMIT",
            poolclass=NullPool,
            connect_args={"timeout": 5},
        )
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    async def url(self) -> str:
        """The migrated database of this session."""
        async with self._lock:
            self.check.raise_problem()
            if self._url is None:
                try:
                    await self._admin(f'CREATE DATABASE "{self.database}"')
                except (OSError, TimeoutError, SQLAlchemyError) as exc:
                    self.check.failed(exc)
                self.check.raise_problem()
                self._created = True
                url = self.server_url.set(database=self.database).render_as_string(
                    hide_password=False
                )
                await upgrade(url)
                self._url = url
            return self._url

    async def truncate(self) -> None:
        """Empty every table but alembic's, and restart the sequences."""
        url = await self.url()
        if self._engine is None:
            # A lock held by a connection a test leaked fails the next test instead of hanging.
            self._engine = create_async_engine(
                url, poolclass=NullPool, connect_args={"server_settings": {"lock_timeout": "10s"}}
            )
        async with self._engine.begin() as connection:
            tables = (
                await connection.scalars(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                        "AND tablename <> 'alembic_version' ORDER BY tablename"
                    )
                )
            ).all()
            if tables:
                names = ", ".join(f'"{t}"' for t in tables)
                await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))

    async def drop(self) -> None:
        """Drop the database, whoever is still connected to it."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._created:
            await self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self._created = False
            self._url = None


@pytest.fixture(scope="session")
async def postgres_server() -> AsyncIterator[PostgresServer]:
    """The PostgreSQL server; its database is made when a test first needs it."""
    server = PostgresServer(DATABASE_URL)
    try:
        yield server
    finally:
        await server.drop()


@pytest.fixture(scope="session")
async def pg_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of a fresh, migrated PostgreSQL database, dropped after the session."""
    return await postgres_server.url()


class SqliteTemplate:
    """A SQLite file migrated once per session (by the migrations, as a deployment's), copied
    for each test that wants a fresh database: the migrations' time is spent once, not per
    test."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "template.db"
        self._made = False

    async def copy_to(self, directory: Path) -> str:
        if not self._made:
            await upgrade(f"sqlite+aiosqlite:///{self.path}")
            self._made = True
        target = directory / "ess.db"
        shutil.copyfile(self.path, target)
        return f"sqlite+aiosqlite:///{target}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    return SqliteTemplate(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture
async def sqlite_url(tmp_path: Path, sqlite_template: SqliteTemplate) -> str:
    """SQLAlchemy URL of a fresh, migrated SQLite file in this test's tmp_path."""
    return await sqlite_template.copy_to(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_server: PostgresServer,
    sqlite_template: SqliteTemplate,
) -> str:
    """Either database, migrated and empty: SQLite in tmp_path or the session's PostgreSQL
    database with every table truncated before the test."""
    if request.param == "sqlite":
        return await sqlite_template.copy_to(tmp_path)
    if request.param == "postgresql":
        await postgres_server.truncate()
        return await postgres_server.url()
    raise ValueError(f"unknown database {request.param!r}")


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[SessionMaker]:
    """A session maker over `db_url`; its engine is disposed after the test."""
    engine = make_engine(db_url)
    try:
        yield make_session_maker(engine)
    finally:
        await engine.dispose()


# --- RabbitMQ -----------------------------------------------------------------------------------


class AmqpServer:
    """The RabbitMQ server of the tests, checked once on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlsplit(url)
        where = f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 5672}{parsed.path}"
        self._check = ServerCheck("RabbitMQ", where, "ESS_TEST_AMQP_URL")

    async def check(self) -> str:
        if not self._check.ok and self._check.problem is None:
            try:
                connection = await aio_pika.connect(self.url, timeout=5)
            except (OSError, TimeoutError, AMQPError) as exc:
                self._check.failed(exc)
            else:
                await connection.close()
                self._check.ok = True
        self._check.raise_problem()
        return self.url

    async def delete(self, queues: Sequence[str], exchanges: Sequence[str]) -> None:
        """Delete what a test made; missing queues and exchanges are fine."""
        connection = await aio_pika.connect(self.url, timeout=5)
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            for exchange in exchanges:
                await channel.exchange_delete(exchange)


@pytest.fixture(scope="session")
def amqp_server() -> AmqpServer:
    """The RabbitMQ server, not contacted until `check()` (or `amqp_url`)."""
    return AmqpServer(AMQP_URL)


@pytest.fixture(scope="session")
async def amqp_url(amqp_server: AmqpServer) -> str:
    """URL of the RabbitMQ server, checked to answer."""
    return await amqp_server.check()


@pytest.fixture
def unique() -> UniqueNames:
    """`unique("q")` -> `"q-<12 hex>"`; queues of these names are deleted after the test."""
    return UniqueNames()


class TrackedAmqpBus(AmqpBus):
    """An AmqpBus that remembers the queues it declared, so that the test can delete them."""

    def __init__(self, url: str, exchange: str, *, max_attempts: int, backoff_s: float) -> None:
        super().__init__(url, exchange, max_attempts=max_attempts, backoff_s=backoff_s)
        self.queues: set[str] = {audit_queue(exchange)}

    async def declare(self, queue: str, bindings: Sequence[str]) -> None:
        self.queues.add(queue)
        await super().declare(queue, bindings)

    async def consume(
        self,
        queue: str,
        bindings: Sequence[str],
        handler: Handler,
        *,
        exchange: str | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.queues.add(queue)
        await super().consume(queue, bindings, handler, exchange=exchange, prefetch=prefetch)


def _queue_family(queues: Iterable[str]) -> list[str]:
    # Every consumed queue Q comes with Q.retry and Q.dead (and Q.dead with its own).
    suffixes = ("", ".retry", ".dead", ".dead.retry", ".dead.dead")
    return sorted({f"{q}{suffix}" for q in queues for suffix in suffixes})


@pytest.fixture(params=["memory", "amqp"])
async def bus(
    request: pytest.FixtureRequest, unique: UniqueNames, amqp_server: AmqpServer
) -> AsyncIterator[Bus]:
    """A started bus on an exchange of its own (`ess-t-<hex>`), max_attempts=3, retry backoff
    0.05 s. For RabbitMQ its exchanges and every queue it declared or that `unique` named are
    deleted afterwards."""
    exchange = f"ess-t-{uuid.uuid4().hex[:12]}"
    if request.param == "memory":
        memory = MemoryBus(exchange, max_attempts=MAX_ATTEMPTS, backoff_s=RETRY_BACKOFF_S)
        await memory.start()
        try:
            yield memory
        finally:
            await memory.close()
        return
    if request.param != "amqp":
        raise ValueError(f"unknown bus {request.param!r}")
    url = await amqp_server.check()
    amqp = TrackedAmqpBus(url, exchange, max_attempts=MAX_ATTEMPTS, backoff_s=RETRY_BACKOFF_S)
    try:
        await amqp.start()
        yield amqp
    finally:
        await amqp.close()
        await amqp_server.delete(
            _queue_family([*amqp.queues, *unique.names]), [exchange, dead_exchange(exchange)]
        )


# --- object stores ------------------------------------------------------------------------------


class S3Server:
    """The S3 server of the tests, checked once on first use."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._check = ServerCheck("S3", settings.endpoint_url, "ESS_TEST_S3_ENDPOINT_URL")

    async def check(self) -> S3Settings:
        if not self._check.ok and self._check.problem is None:
            # A plain HTTP request first: the S3 client would retry a refused connection for
            # several seconds. Any answer will do; the listing then checks the credentials.
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    await client.get(self.settings.endpoint_url)
            except httpx.HTTPError as exc:
                self._check.failed(exc)
        if not self._check.ok and self._check.problem is None:
            probe = self.settings.store("unused", create_bucket=False)
            try:
                await probe.start()
                await probe.client.list_buckets()
            except (BotoCoreError, ClientError) as exc:
                self._check.failed(exc)
            else:
                self._check.ok = True
            finally:
                await probe.close()
        self._check.raise_problem()
        return self.settings


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """The S3 server, not contacted until `check()` (or `s3_settings`)."""
    return S3Server(S3)


@pytest.fixture(scope="session")
async def s3_settings(s3_server: S3Server) -> S3Settings:
    """Endpoint and credentials of the S3 server, checked to answer."""
    return await s3_server.check()


@pytest.fixture(params=["local", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server
) -> AsyncIterator[ObjectStore]:
    """A started object store: a LocalStore in tmp_path (base URL http://testserver, secret
    b"k"), or an S3Store on a bucket of its own, emptied and deleted afterwards."""
    if request.param == "local":
        local = LocalStore(tmp_path / "objects", LOCAL_STORE_BASE_URL, LOCAL_STORE_SECRET)
        await local.start()
        try:
            yield local
        finally:
            await local.close()
        return
    if request.param != "s3":
        raise ValueError(f"unknown store {request.param!r}")
    settings = await s3_server.check()
    s3 = settings.store(f"ess-t-{uuid.uuid4().hex[:12]}")
    try:
        await s3.start()
        try:
            yield s3
        finally:
            await empty_and_delete_bucket(s3)
    finally:
        await s3.close()


async def empty_and_delete_bucket(s3: S3Store) -> None:
    paginator = s3.client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=s3.bucket):
        for item in page.get("Contents", []):
            await s3.client.delete_object(Bucket=s3.bucket, Key=item["Key"])
    await s3.client.delete_bucket(Bucket=s3.bucket)


# --- XRootD -------------------------------------------------------------------------------------

XROOTD_URL = os.environ.get("ESS_TEST_XROOTD_URL", "root://127.0.0.1:1094")
XROOTD_DIR = Path(os.environ.get("ESS_TEST_XROOTD_DIR", "/var/tmp/ess/xrootd/data"))


class XRootDServer:
    """The XRootD server of the tests, serving `directory` at `url` (read-only): a file is
    served once it is written there."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url.rstrip("/")
        self.directory = directory
        self._check = ServerCheck(
            "XRootD", f"{self.url} (serving {directory})", "ESS_TEST_XROOTD_URL"
        )

    def check(self) -> XRootDServer:
        if not self._check.ok and self._check.problem is None:
            try:
                self._probe()
            except Exception as exc:
                self._check.failed(exc)
            else:
                self._check.ok = True
        self._check.raise_problem()
        return self

    def _probe(self) -> None:
        client: Any = importlib.import_module("XRootD.client")
        canary = self.directory / f".ess-test-{uuid.uuid4().hex}"
        canary.write_bytes(b"ess")
        try:
            status, info = client.FileSystem(self.url).stat(f"/{canary.name}", timeout=10)
        finally:
            canary.unlink()
        if not status.ok or info.size != 3:
            raise OSError(f"stat /{canary.name}: {status.message}")

    def serve(self, source: Path) -> tuple[str, Path]:
        """Copy `source` into a directory of its own under the served one: its root:// URL and
        the copy (delete its directory after use)."""
        place = self.directory / f"ess-test-{uuid.uuid4().hex[:12]}"
        place.mkdir(mode=0o755)
        copy = place / source.name
        shutil.copyfile(source, copy)
        copy.chmod(0o644)
        return f"{self.url}//{place.name}/{source.name}", copy


@pytest.fixture(scope="session")
def xrootd() -> XRootDServer:
    """The XRootD server, checked to serve its directory."""
    return XRootDServer(XROOTD_URL, XROOTD_DIR).check()


# --- a running deployment -----------------------------------------------------------------------


@pytest.fixture
async def deployment(
    tmp_path: Path,
    postgres_server: PostgresServer,
    amqp_server: AmqpServer,
    s3_settings: S3Settings,
) -> AsyncIterator[Deployment]:
    """Every service its own process on the real servers, with metrics and tokens on
    (`tests/e2e/deployment.py`)."""
    from tests.e2e.deployment import running_deployment

    async with running_deployment(
        tmp_path / "ess", postgres_server, amqp_server, s3_settings
    ) as running:
        yield running


# --- Rucio --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rucio_server() -> RucioServer:
    """The Rucio server, not contacted until a test asks for `rucio_world`."""
    return RucioServer(RUCIO_URL)


@pytest.fixture
def rucio_world(rucio_server: RucioServer) -> Iterator[RucioWorld]:
    """A scope of this test's own on the Rucio server, for its RSEs, files and datasets."""
    rucio_server.check()
    if rucio_server.problem is not None:
        pytest.fail(rucio_server.problem, pytrace=False)
    world = rucio_server.world()
    try:
        yield world
    finally:
        world.cleanup()
