"""Stuck requests: a request whose work vanished (an edge that takes assignments and never
answers) is driven again, then failed with the reason and announced; an operator's retry sends
it out again, and it completes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import select

from ess_broker.service import Broker
from ess_common.db.models import (
    File,
    FileStatus,
    Request,
    RequestEvent,
    RequestEventKind,
    RequestStatus,
)
from ess_common.db.session import SessionMaker
from ess_common.events import FileAssigned, FileWork, RequestFailed, RequestStalled, parse_event
from ess_common.messaging.bus import Bus, Delivery, publish_event
from ess_common.settings import HeadSettings
from ess_common.store.local import LocalStore
from tests.broker.factories import enroll_edge, file_cached, heartbeat, request_spec, split_done
from tests.head_api.support import running_head
from tests.helpers import UniqueNames, eventually

STUCK_AFTER_S = 1.0


@dataclass
class SilentEdge:
    """Takes every assignment; answers only once told to."""

    bus: Bus
    #: The enrolled edge's token, which signs what it sends.
    token: SecretStr
    answering: bool = False
    work: list[FileWork] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        event = parse_event(delivery.body)
        assert isinstance(event, FileAssigned), event
        self.work.append(event.work)
        if self.answering:
            await publish_event(self.bus, file_cached(event.work), signed_with=self.token)
            await publish_event(self.bus, split_done(event.work), signed_with=self.token)


@dataclass
class Failures:
    """The `request.failed` and `request.stalled` the broker announces."""

    events: list[RequestFailed] = field(default_factory=list)
    stalled: list[RequestStalled] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        event = parse_event(delivery.body)
        if isinstance(event, RequestStalled):
            self.stalled.append(event)
            return
        assert isinstance(event, RequestFailed), event
        self.events.append(event)


async def request_status(sessions: SessionMaker) -> str | None:
    async with sessions() as session:
        return await session.scalar(select(Request.status))


async def test_a_stuck_request_is_driven_then_failed_then_retried_to_ready(
    sessions: SessionMaker, bus: Bus, unique: UniqueNames, tmp_path: Path
) -> None:
    edge, failures = SilentEdge(bus, await enroll_edge(sessions, "edge-a")), Failures()
    await bus.consume(unique("edge"), ["file.assigned.*"], edge)
    await bus.consume(unique("failed"), ["request.failed", "request.stalled"], failures)
    settings = HeadSettings.model_validate(
        {
            "sweep_interval_s": 0.1,
            "edge_lost_after_s": 60.0,
            "stuck_after_s": STUCK_AFTER_S,
            "stuck_max_drives": 1,
        }
    )
    broker = Broker(settings, bus, sessions)
    await broker.start()
    try:
        await publish_event(bus, heartbeat("edge-a"), signed_with=edge.token)
        await bus.publish(
            "request.created", request_spec("stuck", n_files=1).model_dump_json().encode()
        )

        await eventually(lambda: failures.events, timeout=30, message="request.failed announced")
        (failed,) = failures.events
        assert failed.reason.startswith("stuck: no progress for"), failed.reason
        assert "after 1 drives" in failed.reason
        # Assigned, driven once (assigned again as a new attempt), then failed.
        assert [w.attempt for w in edge.work] == [1, 2]
        async with sessions() as session:
            request = await session.scalar(select(Request))
            file = await session.scalar(select(File))
            kinds = (
                await session.scalars(select(RequestEvent.kind).order_by(RequestEvent.id))
            ).all()
        assert request is not None and file is not None
        assert (request.status, request.error) == (RequestStatus.FAILED, failed.reason)
        assert (file.status, file.error) == (FileStatus.FAILED, failed.reason)
        assert kinds.count(RequestEventKind.DRIVEN) == 1
        # PanDA heard of the drive too, before the failure.
        (stalled,) = failures.stalled
        assert (stalled.request_id, stalled.drive, stalled.max_drives) == (request.id, 1, 1)
        assert stalled.reason.startswith("no progress for"), stalled.reason
        assert kinds[-1] == RequestEventKind.FAILED

        # The operator retries it; the edge answers this time.
        edge.answering = True
        store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
        await store.start()
        try:
            async with running_head(sessions, store) as head:
                answer = await head.client.post(f"/v1/requests/{request.id}/retry")
                assert answer.status_code == 200, answer.text
        finally:
            await store.close()

        async def ready() -> bool:
            return await request_status(sessions) == RequestStatus.READY

        await eventually(ready, timeout=30, message="the retried request ready")
        # Sent out again as attempt 3 (a busy machine may let the sweep drive it once more
        # before the edge's answer is recorded).
        assert [w.attempt for w in edge.work][:3] == [1, 2, 3]
    finally:
        await broker.stop()
