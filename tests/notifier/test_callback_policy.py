"""Callbacks the URL policy refuses (`ess_common.url_policy`) are never posted: a request
recorded before the policy said so (or by another way than the head API) fails its callback
at once, with the reason, and nothing reaches the address."""

from __future__ import annotations

import httpx
import pytest

from ess_common.db.models import NotificationStatus
from ess_common.db.session import SessionMaker
from ess_common.messaging.memory import MemoryBus
from ess_notifier.service import Notifier
from tests.notifier.test_notifier import (
    CallbackReceiver,
    handle,
    ready_request,
    settings,
    the_notification,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_a_callback_to_a_refused_address_is_never_posted(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
    host: str,
) -> None:
    url = receiver.url.replace("127.0.0.1", host)
    event = await ready_request(sessions, message=False, callback_url=url)
    notifier = Notifier(settings(callback_networks=[]), memory_bus, sessions, http)
    await handle(notifier, event)

    assert await notifier.deliver_due() == 0
    n = await the_notification(sessions)
    assert (n.status, n.attempts, n.sent_at) == (NotificationStatus.FAILED, 1, None)
    assert n.last_error is not None and "ESS_CALLBACK_NETWORKS" in n.last_error
    assert receiver.posts == []


async def test_a_callback_the_settings_allow_is_posted(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
) -> None:
    event = await ready_request(sessions, message=False, callback_url=receiver.url)
    allowed = settings(callback_networks="127.0.0.1/32")
    notifier = Notifier(allowed, memory_bus, sessions, http)
    await handle(notifier, event)

    assert await notifier.deliver_due() == 1
    n = await the_notification(sessions)
    assert n.status == NotificationStatus.SENT
    assert len(receiver.posts) == 1
