"""Sending one notification: a message on the PanDA-facing exchange, a message on PanDA's
STOMP destination, or an HTTP callback (through `callback_client`: each connection goes only
to addresses the callback policy checked for it, `ess_common.pinned_http`)."""

from __future__ import annotations

import json

import httpx

from ess_common import tracing
from ess_common.db.models import Notification
from ess_common.errors import PermanentError, RetryableError
from ess_common.messaging.bus import Bus
from ess_common.messaging.stomp import StompPublisher
from ess_common.pinned_http import Resolver, pinned_transport, system_resolver
from ess_common.settings import HeadSettings
from ess_common.url_policy import UrlPolicy

MESSAGE = "message"
STOMP = "stomp"
HTTP = "http"


def callback_client(
    settings: HeadSettings, *, resolver: Resolver = system_resolver
) -> httpx.AsyncClient:
    """The notifier's HTTP client: callbacks connect to the addresses the callback policy
    checked when the connection is made (a name resolving elsewhere a moment later, DNS
    rebinding, gains nothing); no redirects, no proxy from the environment."""
    return httpx.AsyncClient(
        timeout=settings.callback_timeout_s,
        transport=pinned_transport(settings.callback_policy, resolver=resolver),
        trust_env=False,
    )


async def send(
    notification: Notification,
    bus: Bus,
    http: httpx.AsyncClient,
    stomp: StompPublisher | None,
    callbacks: UrlPolicy,
) -> None:
    """Send it; a callback only to where the policy allows now (`ess_common.url_policy`):
    a refused one fails for good with the reason. Redirects are not followed."""
    body = json.dumps(notification.payload).encode()
    if notification.kind == STOMP:
        if stomp is None:
            raise RetryableError("a STOMP notice, and this notifier has no ESS_STOMP_URL")
        await stomp.send(notification.target, body, {"x-ess-notification-id": str(notification.id)})
        return
    if notification.kind == MESSAGE:
        exchange, _, routing_key = notification.target.partition(":")
        # PanDA's message carries the request's trace context too.
        await bus.publish(
            routing_key,
            body,
            exchange=exchange,
            headers=tracing.inject({"x-ess-notification-id": notification.id}),
        )
        return
    await callbacks.check_resolved(notification.target)
    try:
        response = await http.post(
            notification.target,
            content=body,
            headers={
                "Content-Type": "application/json",
                # The receiver can drop a repeat after a crash between sending and recording.
                "Idempotency-Key": f"ess-notification-{notification.id}",
            },
        )
    except httpx.HTTPError as exc:
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code < 300:
        return
    reason = f"HTTP {response.status_code}: {response.text[:200]}"
    if 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429):
        raise PermanentError(reason)
    raise RetryableError(reason)
