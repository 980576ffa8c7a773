"""`python -m ess_head_api`: one process, or `ESS_HEAD_WORKERS` uvicorn workers each building
the app with its own bus, store, outbox relay and database pool."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

import ess_head_api.__main__ as head_main
from ess_head_api.__main__ import main, worker_app
from tests.helpers import free_port


@pytest.fixture
def head_env(monkeypatch: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path) -> None:
    monkeypatch.setenv("ESS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("ESS_STORE_URL", f"file://{tmp_path / 'objects'}")
    monkeypatch.setenv("ESS_LOG_LEVEL", "WARNING")
    monkeypatch.delenv("ESS_HEAD_WORKERS", raising=False)


def relays() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "head-outbox" and not t.done()]


@pytest.mark.usefixtures("head_env")
async def test_a_worker_runs_its_relay_while_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESS_BUS_URL", "memory://")
    app = worker_app()

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        assert (await client.get("/readyz")).status_code == 200
        assert len(relays()) == 1
    await asyncio.sleep(0)
    assert relays() == []


@pytest.mark.usefixtures("head_env")
def test_one_worker_is_the_app_served_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append((args, kwargs)))
    monkeypatch.setenv("ESS_BUS_URL", "amqp://guest:guest@127.0.0.1:5672/")
    monkeypatch.setenv("ESS_API_PORT", "8123")

    main()

    ((args, kwargs),) = served
    assert isinstance(args[0], FastAPI)
    assert kwargs == {"host": "127.0.0.1", "port": 8123, "log_config": None}


class Supervised:
    """Stands for uvicorn's supervisor: what it was given to run."""

    runs: list[Supervised] = []

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.config = config
        self.sockets = sockets

    def run(self) -> None:
        self.runs.append(self)


@pytest.mark.usefixtures("head_env")
def test_several_workers_build_their_app_on_a_tcp_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(head_main, "Multiprocess", Supervised)
    monkeypatch.setattr(Supervised, "runs", [])
    port = free_port()
    monkeypatch.setenv("ESS_BUS_URL", "amqp://guest:guest@127.0.0.1:5672/")
    monkeypatch.setenv("ESS_HEAD_WORKERS", "3")
    monkeypatch.setenv("ESS_API_PORT", str(port))

    main()

    (run,) = Supervised.runs
    (listener,) = run.sockets
    try:
        assert (run.config.app, run.config.factory) == ("ess_head_api.__main__:worker_app", True)
        assert (run.config.workers, run.config.log_config) == (3, None)
        assert listener.getsockname() == ("127.0.0.1", port)
        # What asyncio looks at before it sets TCP_NODELAY on an accepted connection.
        assert (listener.family, listener.proto) == (socket.AF_INET, socket.IPPROTO_TCP)
    finally:
        listener.close()


@pytest.mark.usefixtures("head_env")
def test_the_head_api_process_refuses_an_in_process_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESS_BUS_URL", "memory://")
    monkeypatch.setenv("ESS_HEAD_WORKERS", "2")

    with pytest.raises(SystemExit, match="shared bus"):
        main()
