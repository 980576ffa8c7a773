"""The PanDA side of the chaos tests: a storage endpoint whose files take their time to come
(so that a request is still being worked on when a component is killed), an HTTP endpoint for
callbacks that can hold a callback open (so that the notifier can be killed in the middle of
one), and the PanDA queue on the PanDA-facing exchange, read over a connection opened for each
look (the broker under it is killed too).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from aiohttp import web

from tests.local_web import LocalWebServer


@dataclass(frozen=True)
class Notice:
    """One notification as PanDA received it: for which request, what it said, and the id
    ESS gave it (a repeat after a crash carries the same id)."""

    request_id: str
    event: str
    notification_id: str


class PandaSide(LocalWebServer):
    """Files served with a delay per name, and callbacks recorded (and held while `hold`)."""

    def __init__(self, files_dir: Path) -> None:
        super().__init__()
        self.files_dir = files_dir
        self.delays: dict[str, float] = {}
        self.callbacks: list[Notice] = []
        #: Callbacks wait while it is clear; `arrived` is set when one is waiting.
        self.open = asyncio.Event()
        self.open.set()
        self.arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return self.origin

    def file_url(self, name: str) -> str:
        return f"{self.url}/files/{name}"

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        await asyncio.sleep(self.delays.get(name, 0.0))
        return web.FileResponse(self.files_dir / name)

    async def _callback(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.arrived.set()
        await self.open.wait()
        self.callbacks.append(
            Notice(body["request_id"], body["event"], request.headers["Idempotency-Key"])
        )
        return web.json_response({"ok": True})

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/files/{name}", self._file)
        app.router.add_post("/callback", self._callback)


class PandaQueue:
    """A durable queue on the PanDA-facing exchange; what arrived, kept across looks."""

    def __init__(self, amqp_url: str, exchange: str) -> None:
        self.amqp_url = amqp_url
        self.exchange = exchange
        self.queue = f"{exchange}.inbox"
        self.received: list[Notice] = []

    async def declare(self) -> None:
        connection = await aio_pika.connect(self.amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.queue, durable=True)
            await queue.bind(exchange, "request.*")

    async def drain(self) -> list[Notice]:
        """Everything that arrived so far (acknowledged, so each is counted once)."""
        connection = await aio_pika.connect(self.amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(self.queue)
            while (message := await queue.get(fail=False)) is not None:
                body: dict[str, Any] = json.loads(message.body)
                notification_id = str((message.headers or {}).get("x-ess-notification-id"))
                self.received.append(Notice(body["request_id"], body["event"], notification_id))
                await message.ack()
        return self.received
