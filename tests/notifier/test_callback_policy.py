"""Callbacks the URL policy refuses (`ess_common.url_policy`) are never posted: a request
recorded before the policy said so (or by another way than the head API) fails its callback
at once, with the reason, and nothing reaches the address, not even by a name that resolves
elsewhere between the check and the connection."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from ess_common.db.models import NotificationStatus
from ess_common.db.session import SessionMaker
from ess_common.messaging.memory import MemoryBus
from ess_notifier.delivery import callback_client
from ess_notifier.service import Notifier
from tests.helpers import Rebinding
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


async def test_a_callback_name_rebound_to_loopback_never_reaches_it(
    sessions: SessionMaker, memory_bus: MemoryBus, receiver: CallbackReceiver
) -> None:
    """The callback's name resolves to a public address, then to 127.0.0.1 (where the receiver
    listens): each connection goes to the address checked for it, never to the later answer,
    and the loopback answer is refused with the reason."""
    port = urlsplit(receiver.url).port
    url = f"http://rebind.invalid:{port}/ess/callback"
    event = await ready_request(sessions, message=False, callback_url=url)
    refusing = settings(callback_networks=[], callback_timeout_s=1.0)
    rebinding = Rebinding()
    async with callback_client(refusing, resolver=rebinding) as http:
        notifier = Notifier(refusing, memory_bus, sessions, http)
        await handle(notifier, event)

        # One round, two attempts (no backoff here): the first resolved to the public address
        # and connected there (nothing answers), not to what the name resolves to next; the
        # second resolved to loopback and was refused for good with the reason.
        await notifier.deliver_due()
        n = await the_notification(sessions)
        assert (n.status, n.attempts) == (NotificationStatus.FAILED, 2)
        assert rebinding.lookups == ["rebind.invalid", "rebind.invalid"]
        assert n.last_error is not None
        assert "rebind.invalid resolves to 127.0.0.1" in n.last_error
        assert "ESS_CALLBACK_NETWORKS" in n.last_error
    assert receiver.posts == []
