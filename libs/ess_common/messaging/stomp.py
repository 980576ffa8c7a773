"""STOMP 1.2, the protocol PanDA's and JEDI's message-broker clients (`pandacommon.pandamsgbkr`)
speak: requests in, notices out. The one module that knows stomp.py (written for 9.0.0).

`StompIngress` consumes the queue PanDA sends `request.created` to (`/queue/ess.requests` or
`/amq/queue/ess.requests` name the queue `ess.requests`) and hands every message, unchanged, to
ESS's own bus as `request.created`, with publisher confirms, before it acknowledges the STOMP
frame: the broker then reads it exactly as it reads one published over AMQP (same schema, same
idempotency key, same retries and dead-lettering of a bad message, with its reason recorded). A
message that cannot be handed over is NACKed: the queue keeps it, and past the queue's delivery
limit dead-letters it. On RabbitMQ, PanDA may also send straight to
`/exchange/<ESS exchange>/request.created`, which needs no ingress at all.

The queue is a work queue like every other of ESS: the ingress declares it through the bus (on
the same RabbitMQ as the STOMP plugin), a quorum queue with ESS's delivery limit and
dead-lettering (`amqp_queues`), before it subscribes, and subscribes as `/amq/queue/<name>`, a
destination that declares nothing. RabbitMQ's STOMP plugin cannot declare such a queue itself
(3.10 passes no `x-delivery-limit` from SUBSCRIBE headers), and a `/queue/<name>` SEND or
SUBSCRIBE re-declares the queue without arguments, which the server refuses for a quorum queue
(PRECONDITION_FAILED). PanDA's client (panda-common's `msg_bkr_utils`) sends to
`/amq/queue/<name>` by itself when its configuration says `/queue/<name>` and the server is
RabbitMQ. A classic queue of that name (made by STOMP before this) stops the broker with
`QueueMigrationRequired` (docs/queues.md).

`StompPublisher` sends the notices for PanDA to a STOMP destination, each SEND confirmed by a
RECEIPT before it counts as sent.

`ESS_STOMP_URL` is `stomp://user:password@host:port/vhost` (`stomp+ssl://` for TLS); the
virtual host goes in the CONNECT frame's host header, as RabbitMQ wants it (`/` by default).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import stomp
import structlog
from stomp.exception import StompException

from ess_common.errors import RetryableError
from ess_common.messaging.bus import Bus
from ess_common.messaging.stomp_queue import ingress_queue

log = structlog.get_logger("ess.stomp")

#: The header carrying the STOMP message id onto the bus, for following a message through logs.
STOMP_MESSAGE_HEADER = "x-ess-stomp-message-id"


@dataclass(frozen=True)
class StompAddress:
    host: str
    port: int
    vhost: str
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> StompAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("stomp", "stomp+ssl") or not parts.hostname:
            raise ValueError(f"STOMP URL {url!r} must be stomp://[user:password@]host:port[/vhost]")
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return cls(
            host=parts.hostname,
            port=parts.port or 61613,
            vhost=vhost,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "stomp+ssl",
        )


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self, link: StompLink) -> None:
        self.link = link

    def on_receipt(self, frame: Any) -> None:
        self.link._receipt(frame.headers.get("receipt-id", ""))

    def on_error(self, frame: Any) -> None:
        log.error("stomp.error", headers=dict(frame.headers), body=str(frame.body)[:500])
        self.link._failed(str(frame.headers.get("message") or frame.body)[:500])

    def on_message(self, frame: Any) -> None:
        self.link._message(frame)

    def on_disconnected(self) -> None:
        self.link._disconnected()


class StompLink:
    """One STOMP connection: sends confirmed by receipts, one subscription with client acks.

    stomp.py runs a receiver thread; what it receives is handed to the event loop that
    connected. A lost connection is made again (and the subscription renewed) by `keep_up`.
    """

    def __init__(self, url: str, *, heartbeat_ms: int = 10_000, timeout_s: float = 10.0) -> None:
        self.address = StompAddress.parse(url)
        self.heartbeat_ms = heartbeat_ms
        self.timeout_s = timeout_s
        self._connection: Any = None
        self._receipts: dict[str, threading.Event] = {}
        self._errors: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._subscription: tuple[str, str] | None = None
        self._lost = asyncio.Event()

    def _connect_now(self) -> None:
        a = self.address
        connection = stomp.Connection12(
            [(a.host, a.port)],
            vhost=a.vhost,
            heartbeats=(self.heartbeat_ms, self.heartbeat_ms),
            reconnect_attempts_max=1,
            timeout=self.timeout_s,
        )
        if a.tls:
            connection.set_ssl(for_hosts=[(a.host, a.port)], ssl_version=ssl.PROTOCOL_TLS_CLIENT)
        connection.set_listener("ess", _Listener(self))
        connection.connect(a.username, a.password, wait=True)
        # Known before the subscription: a frame may arrive, and be acknowledged through it,
        # before this thread returns.
        self._connection = connection
        if self._subscription is not None:
            destination, subscription = self._subscription
            connection.subscribe(
                destination, id=subscription, ack="client-individual", headers={"durable": "true"}
            )

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lost.clear()
        try:
            await asyncio.to_thread(self._connect_now)
        except (StompException, OSError) as exc:
            raise RetryableError(f"STOMP broker {self.address.host}: {exc}") from exc

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_connected():
            await asyncio.to_thread(connection.disconnect)

    async def subscribe(self, destination: str) -> asyncio.Queue[Any]:
        """Frames of the destination, one at a time: `ack` or `nack` each."""
        self._queue = asyncio.Queue()
        self._subscription = (destination, f"ess-{uuid.uuid4().hex[:12]}")
        if self._connection is not None:
            _, subscription = self._subscription
            await asyncio.to_thread(
                self._connection.subscribe,
                destination,
                id=subscription,
                ack="client-individual",
                headers={"durable": "true"},
            )
        return self._queue

    async def ack(self, frame: Any) -> None:
        await asyncio.to_thread(self._connection.ack, frame.headers["ack"])

    async def nack(self, frame: Any) -> None:
        await asyncio.to_thread(self._connection.nack, frame.headers["ack"])

    async def send(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Send, and return once the broker's RECEIPT says it has the message."""
        if self._connection is None or not self._connection.is_connected():
            await self.connect()
        receipt = uuid.uuid4().hex
        done = threading.Event()
        self._receipts[receipt] = done
        try:
            await asyncio.to_thread(
                self._connection.send,
                destination,
                body,
                headers={"persistent": "true", **headers, "receipt": receipt},
            )
            if not await asyncio.to_thread(done.wait, self.timeout_s):
                raise RetryableError(f"STOMP broker sent no receipt for {destination}")
            if receipt in self._errors:
                raise RetryableError(f"STOMP broker refused {destination}: {self._errors[receipt]}")
        except (StompException, OSError) as exc:
            raise RetryableError(f"STOMP send to {destination}: {exc}") from exc
        finally:
            self._receipts.pop(receipt, None)
            self._errors.pop(receipt, None)

    async def keep_up(self, retry_s: float = 2.0) -> None:
        """Connect again whenever the connection is lost, forever."""
        while True:
            await self._lost.wait()
            try:
                await self.connect()
                log.info("stomp.reconnected", host=self.address.host)
            except RetryableError as exc:
                log.warning("stomp.reconnect_failed", reason=str(exc))
                await asyncio.sleep(retry_s)

    # Called on stomp.py's receiver thread.
    def _receipt(self, receipt_id: str) -> None:
        event = self._receipts.get(receipt_id)
        if event is not None:
            event.set()

    def _failed(self, reason: str) -> None:
        # An ERROR frame closes the connection: every send waiting for a receipt has failed.
        for receipt, event in list(self._receipts.items()):
            self._errors[receipt] = reason
            event.set()

    def _message(self, frame: Any) -> None:
        if self._loop is not None and self._queue is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, frame)

    def _disconnected(self) -> None:
        self._failed("connection lost")
        if self._loop is not None and self._connection is not None:
            self._loop.call_soon_threadsafe(self._lost.set)


def _body(frame: Any) -> bytes:
    body = frame.body
    return body if isinstance(body, bytes) else str(body).encode()


class StompIngress:
    """`request.created` from PanDA over STOMP, handed to ESS's bus (see the module's doc)."""

    def __init__(self, link: StompLink, destination: str, bus: Bus) -> None:
        self.link = link
        self.queue = ingress_queue(destination)
        #: What the ingress subscribes to: the queue it declared, declared by nobody else.
        self.destination = f"/amq/queue/{self.queue}"
        self.bus = bus
        self._tasks: list[asyncio.Task[None]] = []

    async def handle(self, frame: Any) -> None:
        message_id = str(frame.headers.get("message-id", ""))
        try:
            await self.bus.publish(
                "request.created", _body(frame), headers={STOMP_MESSAGE_HEADER: message_id}
            )
        except Exception as exc:
            log.warning("stomp.handover_failed", message_id=message_id, reason=str(exc))
            await self.link.nack(frame)
            return
        await self.link.ack(frame)
        log.info("stomp.request_received", message_id=message_id)

    async def _run(self, frames: asyncio.Queue[Any]) -> None:
        while True:
            frame = await frames.get()
            try:
                await self.handle(frame)
            except Exception:
                # The frame is neither acked nor nacked: the broker redelivers it when the
                # connection is made again.
                log.exception("stomp.frame_unsettled")

    async def start(self) -> None:
        """Declares the queue (raises `QueueMigrationRequired` for a classic one), subscribes."""
        await self.bus.declare(self.queue, [])
        frames = await self.link.subscribe(self.destination)
        await self.link.connect()
        self._tasks = [
            asyncio.create_task(self._run(frames), name="stomp-ingress"),
            asyncio.create_task(self.link.keep_up(), name="stomp-ingress-link"),
        ]
        log.info("stomp.subscribed", destination=self.destination)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.link.close()


class StompPublisher:
    """Notices for PanDA on a STOMP destination; connects on first use."""

    def __init__(self, link: StompLink) -> None:
        self.link = link
        self._lock = asyncio.Lock()

    async def send(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        async with self._lock:
            await self.link.send(destination, body, {"content-type": "application/json", **headers})

    async def close(self) -> None:
        await self.link.close()
