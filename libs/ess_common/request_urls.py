"""The URL policy (`ess_common.url_policy`) applied to a whole request: its files' sources and
its callback. The head API applies it to a `POST` (422 with the reason), the broker to a
`request.created` from the bus (the request recorded failed with the reason, the message
dead-lettered with it): one check, whichever way PanDA asks.
"""

from __future__ import annotations

from ess_common.events import RequestSpec
from ess_common.settings import EssSettings
from ess_common.source_urls import as_read


def check_request_urls(spec: RequestSpec, settings: EssSettings) -> None:
    """Raises `UrlRefused` (a permanent error) naming the first URL refused and the rule."""
    sources = settings.source_policy
    for f in spec.files:
        for url in f.sources:
            sources.check(as_read(url))
    if spec.notify.callback_url is not None:
        settings.callback_policy.check(spec.notify.callback_url)
