"""What an edge's workers check before they touch a file, so that an edge works only for
assignments the head made and that still stand.

- `file.assigned` must carry the head's signature for this edge (`x-ess-head-signature`,
  with the downward key of the edge's token), and `file.cached`, passed from the edge's
  precacher to its splitter, the edge's own (`x-ess-edge-signature`): anything else is
  refused (dead-lettered with the reason), before any download.
- The head is then asked where the file's work stands (`GET /v1/edges/<edge>/assignments/<file
  id>`). A file the head does not know (its request is unknown or gone), or one of another
  request, is refused; a file that moved on (another edge has it, a later attempt, already
  split) is dropped unworked. An edge that comes back after it was declared lost thus drops
  its old assignments, which other edges now hold, before it does any work for them.
- Before its results leave the edge (the splitter's uploads and its `split.done`) the head is
  asked again (`still_current`): a file moved to another edge while it was being split
  uploads nothing and reports nothing for the stale attempt (`MovedOn`).

The head unreachable is a passing fault: the work is retried later.
"""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from ess_common import enrollment
from ess_common.errors import BadMessage, Forbidden, HeadUnavailable, RetryableError
from ess_common.events import FileAssigned, FileCached, FileWork
from ess_common.messaging.bus import EDGE_SIGNATURE_HEADER, Delivery
from ess_common.settings import EdgeSettings

log = structlog.get_logger("ess.work_guard")

#: A file's statuses in which an edge still has its work.
_IN_FLIGHT = ("assigned", "cached")


#: The head's answers while it cannot serve (its database down, a proxy without it).
_UNAVAILABLE = frozenset({502, 503, 504})


class MovedOn(Exception):
    """The assignment of the work being done moved on: its results are dropped, unsent."""


class WorkGuard:
    def __init__(
        self,
        edge: str,
        token: SecretStr | None,
        head_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.edge = edge
        self.token = token
        self.head_url = head_url.rstrip("/")
        self._http = http
        self._own_http = http is None
        self.timeout_s = timeout_s

    @classmethod
    def for_edge(cls, settings: EdgeSettings) -> WorkGuard:
        return cls(settings.edge_name, settings.edge_token, settings.head_url)

    async def close(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s)
        return self._http

    def check_signature(self, delivery: Delivery, event: FileAssigned | FileCached) -> None:
        if self.token is None:
            raise Forbidden("this edge has no token (ESS_EDGE_TOKEN): it does no work")
        if event.work.edge != self.edge:
            raise BadMessage(f"work of edge {event.work.edge}, not of this edge ({self.edge})")
        key = enrollment.key_of(self.token.get_secret_value())
        if isinstance(event, FileAssigned):
            signing_key, header = enrollment.downward_key(key), enrollment.HEAD_SIGNATURE_HEADER
        else:
            signing_key, header = enrollment.upward_key(key), EDGE_SIGNATURE_HEADER
        if header not in delivery.headers:
            raise Forbidden(f"{event.event_type} not signed ({header} missing)")
        if not enrollment.signed_with(signing_key, delivery.body, delivery.headers, header):
            raise Forbidden(f"{event.event_type} signature invalid")

    async def where_it_stands(self, file_id: int) -> dict[str, Any] | None:
        """The head's answer for the file, None when it does not know it."""
        assert self.token is not None
        url = f"{self.head_url}/v1/edges/{self.edge}/assignments/{file_id}"
        headers = {"Authorization": f"Bearer {self.token.get_secret_value()}"}
        try:
            answer = await self._client().get(url, headers=headers)
        except httpx.TransportError as exc:
            raise HeadUnavailable(f"the head did not answer ({url}): {exc}") from exc
        if answer.status_code == 404:
            return None
        if answer.status_code in (401, 403):
            # Not enrolled (any more): this edge's work can never be checked, so never done.
            raise Forbidden(f"the head refused this edge's token ({answer.status_code})")
        if answer.status_code in _UNAVAILABLE:
            raise HeadUnavailable(f"the head answered {answer.status_code} ({url})")
        if answer.status_code != 200:
            raise RetryableError(f"the head answered {answer.status_code} ({url})")
        found: dict[str, Any] = answer.json()
        return found

    async def admit(self, delivery: Delivery, event: FileAssigned | FileCached) -> bool:
        """True: do the work. False: the assignment moved on, drop it. Raises for work that
        must be refused (dead letter) or when the head cannot be asked now (retry)."""
        self.check_signature(delivery, event)
        work = event.work
        stands = await self.where_it_stands(work.file_id)
        if stands is None:
            raise BadMessage(f"file {work.file_id} of request {work.request_id} is unknown")
        if stands["request_id"] != work.request_id:
            raise BadMessage(
                f"file {work.file_id} is of request {stands['request_id']}, not {work.request_id}"
            )
        return self._current(work, stands)

    async def still_current(self, work: FileWork) -> bool:
        """Whether the work admitted earlier still stands now (a file the head no longer
        knows does not). Raises when the head cannot be asked now (retry)."""
        stands = await self.where_it_stands(work.file_id)
        if stands is None or stands["request_id"] != work.request_id:
            log.info("work.gone", request_id=work.request_id, file_id=work.file_id)
            return False
        return self._current(work, stands)

    def _current(self, work: FileWork, stands: dict[str, Any]) -> bool:
        current = (
            stands["edge"] == self.edge
            and stands["attempt"] == work.attempt
            and stands["status"] in _IN_FLIGHT
        )
        if not current:
            log.info(
                "work.moved_on",
                request_id=work.request_id,
                file_id=work.file_id,
                attempt=work.attempt,
                now_edge=stands["edge"],
                now_attempt=stands["attempt"],
                now_status=stands["status"],
            )
        return bool(current)
