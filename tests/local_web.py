"""A peer the tests stand in for, served over HTTP: an aiohttp application on a free 127.0.0.1
port. Each peer adds its own routes (`routes`); starting and stopping are the same for all."""

from __future__ import annotations

from aiohttp import web

from tests.helpers import free_port


class LocalWebServer:
    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
