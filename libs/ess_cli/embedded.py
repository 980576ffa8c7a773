"""The embedded mode: head API, broker, notifier and edges in one process, on SQLite, an
in-process bus and a local directory as object store. The same classes as the separate
services, wired together here; nothing is faked: each edge is enrolled at start and uses its
token. Each edge serves pilots on a local port of its
own (lookups, range files, on-demand splits), as a deployed edge does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from pathlib import Path

import httpx
import uvicorn
from pydantic import SecretStr

from ess_broker.service import Broker
from ess_common.cache_space import CacheSpace
from ess_common.db import enrollments
from ess_common.db.migrate import upgrade
from ess_common.db.session import make_engine, make_session_maker, unit_of_work
from ess_common.messaging.memory import MemoryBus
from ess_common.messaging.outbox import OutboxRelay
from ess_common.rucio import make_catalogue
from ess_common.settings import EdgeSettings, EssSettings, HeadSettings
from ess_common.store.factory import make_store
from ess_edge.server import EdgeState, create_edge_app, make_server
from ess_edge.service import Edge
from ess_head_api.app import create_app
from ess_head_api.state import HeadState
from ess_notifier.service import Notifier
from ess_precacher.service import Precacher
from ess_splitter.service import Splitter


def free_port() -> int:
    """A local TCP port nobody listens on (bound for a moment, then let go): a connection
    to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def embedded_settings(
    workdir: Path, port: int, edges: int = 2, source_file_roots: Sequence[Path] = ()
) -> tuple[HeadSettings, list[EdgeSettings]]:
    """Settings of the embedded head and its edges in `workdir`. `source_file_roots` are
    folders `file://` sources may be read from, besides `ESS_SOURCE_FILE_ROOTS`."""
    workdir.mkdir(parents=True, exist_ok=True)
    common: dict[str, object] = {
        "database_url": f"sqlite+aiosqlite:///{workdir / 'ess.db'}",
        "bus_url": "memory://",
        "store_url": f"file://{workdir / 'objects'}",
        "head_url": f"http://127.0.0.1:{port}",
        "retry_backoff_s": 0.2,
    }
    if source_file_roots:
        named = EssSettings().source_file_roots
        common["source_file_roots"] = [*named, *(p.resolve() for p in source_file_roots)]
    # Built from values, not the environment: the embedded mode is self-contained.
    head = HeadSettings.model_validate({**common, "api_port": port, "sweep_interval_s": 0.5})
    edge_list = [
        EdgeSettings.model_validate(
            {
                **common,
                "url_signing_key": head.url_signing_key,
                "edge_name": f"edge-{i + 1}",
                "edge_cache_dir": workdir / f"cache-{i + 1}",
                "edge_port": edge_port,
                "edge_url": f"http://127.0.0.1:{edge_port}",
                "heartbeat_interval_s": 1.0,
            }
        )
        for i, edge_port in enumerate(free_port() for _ in range(edges))
    ]
    return head, edge_list


class Embedded:
    def __init__(self, head: HeadSettings, edges: list[EdgeSettings]) -> None:
        self.head = head
        self.edges = edges
        self.bus = MemoryBus(
            head.exchange,
            max_attempts=head.max_attempts,
            backoff_s=head.retry_backoff_s,
            backoff_max_s=head.retry_backoff_max_s,
        )
        self.engine = make_engine(head.database_url)
        self.sessions = make_session_maker(self.engine)
        self.store = make_store(head)
        self._stack = contextlib.AsyncExitStack()
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self.head.head_url

    async def start(self) -> None:
        await upgrade(self.head.database_url, self.engine)
        await self._enroll_edges()
        await self.bus.start()
        await self.store.start()
        self._stack.push_async_callback(self.engine.dispose)
        self._stack.push_async_callback(self.store.close)
        self._stack.push_async_callback(self.bus.close)
        http = await self._stack.enter_async_context(
            httpx.AsyncClient(timeout=self.head.callback_timeout_s)
        )
        # A request naming only its dataset is resolved in Rucio when ESS_RUCIO_URL says where.
        catalogue = make_catalogue(self.head)
        if catalogue is not None:
            self._stack.push_async_callback(catalogue.close)
        daemons: list[Broker | Notifier | Precacher | Splitter | Edge] = [
            Broker(self.head, self.bus, self.sessions, catalogue),
            Notifier(self.head, self.bus, self.sessions, http),
        ]
        for edge in self.edges:
            space = CacheSpace(
                edge.edge_cache_dir, edge.edge_quota_bytes, pin_ttl_s=edge.edge_pin_ttl_s
            )
            state = EdgeState.build(edge, self.store, space, http, self.bus)
            self._stack.push_async_callback(state.on_demand.close)
            server = make_server(create_edge_app(state), edge)
            daemons += [
                Precacher(edge, self.bus, catalogue),
                Splitter(edge, self.bus, self.store),
                Edge(edge, self.bus, children=[], server=server, on_demand=state.on_demand),
            ]
        for daemon in daemons:
            await daemon.start()
            self._stack.push_async_callback(daemon.stop)
        relay = OutboxRelay(self.sessions, self.bus)
        app = create_app(HeadState(self.head, self.sessions, self.store, relay, catalogue))
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host=self.head.api_host, port=self.head.api_port, log_level="warning"
            )
        )
        self._serve_task = asyncio.create_task(self._server.serve(), name="embedded-api")
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the embedded head API did not answer at {self.url}")

    async def _enroll_edges(self) -> None:
        """Each edge enrolled, as an operator would, and given its token: the broker hears no
        edge that is not."""
        async with unit_of_work(self.sessions) as session:
            tokens = [await enrollments.enroll(session, e.edge_name) for e in self.edges]
        self.edges = [
            e.model_copy(update={"edge_token": SecretStr(token)})
            for e, token in zip(self.edges, tokens, strict=True)
        ]

    async def wait(self) -> None:
        """Until the API server stops (Ctrl-C)."""
        if self._serve_task is not None:
            await self._serve_task

    async def stop(self) -> None:
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            await self._serve_task
        await self._stack.aclose()

    async def __aenter__(self) -> Embedded:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
