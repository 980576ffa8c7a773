"""The pilot's client: PanDA event ranges in, payload ranges on local disk out.

For a batch of ranges it first serves what files already held cover, then asks a close edge
(when configured) or the head for the rest in `POST /v1/ranges/lookup`s of growing batches (the
downloads of one batch run while the next is looked up), downloads every piece of the answers
in parallel and rewrites each range for the payload (`ess_pilot.ranges`). The edge is asked
once per batch; what it cannot serve (it is down, answers 5xx or anything but a
well-formed answer, or fails the range) is asked of the head, with retries. Nothing raises for
a range that could not be served: it comes back failed, with the reason.

With `site` (or `region`) the head names the closest live edge for each piece, and the file is
downloaded from there first. With `on_demand`, a range that no request prepared is asked for at
`POST /v1/ranges/on-demand` (the edge, else the head, which passes it to the closest edge): an
edge splits just that range; a 202 is asked again after its Retry-After, a 503 (no capacity) is
asked again only while `on_demand_wait_s` allows, else the range fails with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

import httpx

from ess_pilot.download import (
    Downloader,
    DownloadFailed,
    RetryPolicy,
    error_detail,
    gave_up,
    retry_after_s,
)
from ess_pilot.progress import Progress
from ess_pilot.ranges import (
    BadAnswer,
    BadRange,
    EventRange,
    Piece,
    RangeOutcome,
    check_cover,
    payload_ranges,
)

log = logging.getLogger("ess_pilot")

#: The head takes at most this many ranges in one lookup.
MAX_BATCH = 10_000
#: The first lookup of a fetch asks for this many ranges per download slot (`max_parallel`):
#: enough to keep every slot busy while the next, larger batch is looked up.
FIRST_BATCH_PER_SLOT = 4


class LookupFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FetchResult:
    """One outcome per input range, in input order."""

    outcomes: list[RangeOutcome]

    @property
    def payload(self) -> list[dict[str, Any]]:
        """What the payload gets: one dict per piece, failed ranges marked (see ranges.py)."""
        return payload_ranges(self.outcomes)

    @property
    def failed(self) -> list[RangeOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def all_served(self) -> bool:
        return not self.failed


class PilotOptions(TypedDict, total=False):
    edge_url: str | None
    token: str | None
    max_parallel: int
    retries: int
    timeout_s: float
    connect_timeout_s: float
    backoff_s: float
    max_backoff_s: float
    max_retry_after_s: float
    reuse_held: bool
    progress: Progress | bool | None
    http: httpx.AsyncClient | None
    site: str | None
    region: str | None
    on_demand: bool
    on_demand_wait_s: float


class PilotClient:
    """Fetches PanDA event ranges into `dest`.

    `token` goes to the head and the edge as `Authorization: Bearer`, never to the signed
    URLs (an object store refuses a second authentication). `retries` more attempts follow a
    failed lookup or download, `backoff_s` doubling up to `max_backoff_s`; a `Retry-After` of
    a 503 is waited (at most `max_retry_after_s`). `progress`: a Progress, or True/False, or
    None for a line on stderr when it is a terminal. `http` is an AsyncClient to use instead of
    one of our own (not closed here; its timeouts apply).
    """

    def __init__(
        self,
        head_url: str,
        dest: Path | str,
        *,
        edge_url: str | None = None,
        token: str | None = None,
        max_parallel: int = 4,
        retries: int = 4,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 120.0,
        reuse_held: bool = True,
        progress: Progress | bool | None = None,
        http: httpx.AsyncClient | None = None,
        site: str | None = None,
        region: str | None = None,
        on_demand: bool = False,
        on_demand_wait_s: float = 120.0,
    ) -> None:
        if max_parallel < 1 or retries < 0:
            raise ValueError("max_parallel must be at least 1 and retries not negative")
        self.place = {k: v for k, v in (("site", site), ("region", region)) if v}
        self.on_demand = on_demand
        self.on_demand_wait_s = on_demand_wait_s
        self.head_url = head_url.rstrip("/")
        self.edge_url = edge_url.rstrip("/") if edge_url else None
        self.dest = Path(dest)
        self.reuse_held = reuse_held
        self.first_batch = max(8, FIRST_BATCH_PER_SLOT * max_parallel)
        self.policy = RetryPolicy(retries, backoff_s, max_backoff_s, max_retry_after_s)
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._progress = progress
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s), follow_redirects=True
        )
        self.downloader = Downloader(
            self.http,
            self.dest,
            policy=self.policy,
            max_parallel=max_parallel,
            refresh=self._fresh_piece,
            auth=self._auth,
            ess_urls=[self.edge_url] if self.edge_url else [],
        )

    async def fetch(self, ranges: Iterable[Mapping[str, Any]]) -> FetchResult:
        """Every range served or failed with a reason; raises only for a non-dict item."""
        items = list(ranges)
        outcomes: list[RangeOutcome | None] = [None] * len(items)
        wanted: list[tuple[int, EventRange]] = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise TypeError(f"event range {i} is a {type(item).__name__}, not a dict")
            try:
                wanted.append((i, EventRange.from_panda(item)))
            except BadRange as exc:
                outcomes[i] = RangeOutcome(
                    item, reason=f"not a PanDA event range: {exc}", code="bad_range"
                )
        progress = self._make_progress()
        self.downloader.progress = progress
        try:
            self.dest.mkdir(parents=True, exist_ok=True)
            to_ask = []
            if self.reuse_held:
                await asyncio.to_thread(self.downloader.held.load)
            for i, r in wanted:
                served = await self._from_held(r) if self.reuse_held else None
                if served is not None:
                    outcomes[i] = served
                else:
                    to_ask.append((i, r))
            for (i, _), outcome in zip(to_ask, await self._ask_and_serve(to_ask), strict=True):
                outcomes[i] = outcome
        finally:
            await self.downloader.flush()
            progress.close()
        return FetchResult([o for o in outcomes if o is not None])

    async def _ask_and_serve(self, to_ask: Sequence[tuple[int, EventRange]]) -> list[RangeOutcome]:
        """Looks the ranges up in growing batches, one after another, each batch's downloads
        starting while the next batch is looked up: the first files arrive after a lookup of
        a few ranges, not of all of them."""
        serving: list[asyncio.Future[list[RangeOutcome]]] = []
        try:
            for batch in _growing(list(to_ask), self.first_batch):
                answers = await self._lookup([r for _, r in batch])
                if self.on_demand:
                    answers = await self._split_on_demand([r for _, r in batch], answers)
                serving.append(
                    asyncio.gather(
                        *(self._serve(r, a) for (_, r), a in zip(batch, answers, strict=True))
                    )
                )
            done = await asyncio.gather(*serving)
        except BaseException:
            for future in serving:
                future.cancel()
            await asyncio.gather(*serving, return_exceptions=True)
            raise
        return [outcome for outcomes in done for outcome in outcomes]

    async def rewrite(self, ranges: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """`fetch(ranges).payload`: the list to hand the payload."""
        return (await self.fetch(ranges)).payload

    async def aclose(self) -> None:
        await self.downloader.cancel()
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> PilotClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def _make_progress(self) -> Progress:
        if isinstance(self._progress, Progress):
            return self._progress
        return Progress(enabled=self._progress)

    async def _from_held(self, r: EventRange) -> RangeOutcome | None:
        pieces = self.downloader.held.covering(r.scope, r.lfn, r.start_event, r.last_event)
        if pieces is None:
            return None
        served = await self.downloader.reuse(pieces, r.scope, r.lfn)
        if served is None:
            return None
        log.info("range.held event_range_id=%s pieces=%d", r.event_range_id, len(served))
        return RangeOutcome(r.original, tuple(served))

    async def _serve(self, r: EventRange, answer: list[Piece] | str) -> RangeOutcome:
        if isinstance(answer, str):
            code = answer.code if isinstance(answer, Refused) else None
            return RangeOutcome(r.original, reason=str(answer), code=code)
        got = await asyncio.gather(
            *(self.downloader.get(p, r.scope, r.lfn) for p in answer), return_exceptions=True
        )
        reasons = []
        for result in got:
            if isinstance(result, DownloadFailed):
                reasons.append(result.reason)
            elif isinstance(result, BaseException):
                raise result
        if reasons:
            return RangeOutcome(r.original, reason="; ".join(reasons))
        return RangeOutcome(r.original, tuple(p for p in got if not isinstance(p, BaseException)))

    def _sources(self) -> list[tuple[str, str, RetryPolicy]]:
        """Whom to ask, in order: the edge once, then the head with retries."""
        sources = [(f"head {self.head_url}", self.head_url, self.policy)]
        if self.edge_url is not None:
            sources.insert(0, (f"edge {self.edge_url}", self.edge_url, RetryPolicy(0)))
        return sources

    async def _fresh_piece(self, piece: Piece, scope: str, lfn: str) -> Piece | None:
        """The same file with a new signed URL: a lookup of all the events it holds."""
        probe = EventRange(
            event_range_id=f"url-refresh {piece.key}",
            lfn=lfn,
            scope=scope,
            guid="",
            start_event=piece.file_first_event,
            last_event=piece.file_last_event,
            original={},
        )
        for where, base_url, _ in self._sources():
            try:
                (result,) = await self._post(where, base_url, [probe], RetryPolicy(0))
            except LookupFailed:
                continue
            answer = _pieces(probe, result)
            if not isinstance(answer, str):
                for fresh in answer:
                    if fresh.key == piece.key:
                        return fresh
        return None

    async def _split_on_demand(
        self, ranges: Sequence[EventRange], answers: list[list[Piece] | str]
    ) -> list[list[Piece] | str]:
        """The answers, with every range no request prepared asked for on demand."""
        unprepared = [i for i, a in enumerate(answers) if isinstance(a, NotPrepared)]
        split = await asyncio.gather(*(self._ask_on_demand(ranges[i]) for i in unprepared))
        out = list(answers)
        for i, answer in zip(unprepared, split, strict=True):
            out[i] = answer
        return out

    async def _ask_on_demand(self, r: EventRange) -> list[Piece] | str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.on_demand_wait_s
        body = {
            "scope": r.scope,
            "LFN": r.lfn,
            "startEvent": r.start_event,
            "lastEvent": r.last_event,
            **self.place,
        }
        where, base_url = self._sources()[0][:2]
        while True:
            left = deadline - loop.time()
            try:
                response = await self.http.post(
                    f"{base_url}/v1/ranges/on-demand",
                    params={"wait": round(max(0.0, min(left, 20.0)), 1)},
                    json=body,
                    headers=self._auth,
                    timeout=httpx.Timeout(max(left, 1.0) + 15.0, connect=10.0),
                )
            except httpx.TransportError as exc:
                if base_url == self.head_url:
                    return f"on-demand split: {where} unreachable: {type(exc).__name__}"
                where, base_url = f"head {self.head_url}", self.head_url
                continue
            status = response.status_code
            if status == 200:
                return _pieces(r, {"status": "ok", "pieces": _json(response).get("pieces")})
            detail = await error_detail(response)
            wait = retry_after_s(response.headers.get("retry-after")) or 1.0
            if status not in (202, 503):
                return f"on-demand split refused by {where}: HTTP {status}{detail}"
            if loop.time() + wait > deadline:
                if status == 202:
                    waited = f"{self.on_demand_wait_s:g} s"
                    return f"on-demand split still running at {where} after {waited}"
                return f"on-demand split: {where} has no capacity now (HTTP 503{detail})"
            log.info("on_demand.wait event_range_id=%s status=%d", r.event_range_id, status)
            await asyncio.sleep(wait)

    async def _lookup(self, ranges: Sequence[EventRange]) -> list[list[Piece] | str]:
        """Per range its pieces in event order, or why there are none. What the edge cannot
        serve (it is down, or does not know the range) is asked of the head."""
        answers: list[list[Piece] | str] = ["not asked"] * len(ranges)
        pending = list(range(len(ranges)))
        for where, base_url, policy in self._sources():
            unserved = []
            for at in range(0, len(pending), MAX_BATCH):
                chunk = pending[at : at + MAX_BATCH]
                batch = [ranges[i] for i in chunk]
                try:
                    results = await self._post(where, base_url, batch, policy)
                except LookupFailed as exc:
                    log.warning("lookup.failed where=%s reason=%s", where, exc.reason)
                    for i in chunk:
                        answers[i] = f"lookup failed: {exc.reason}"
                    unserved += chunk
                    continue
                for i, result in zip(chunk, results, strict=True):
                    answers[i] = _pieces(ranges[i], result)
                    if isinstance(answers[i], str):
                        unserved.append(i)
            pending = unserved
            if not pending:
                break
        return answers

    async def _post(
        self, where: str, base_url: str, batch: Sequence[EventRange], policy: RetryPolicy
    ) -> list[Mapping[str, Any]]:
        url = f"{base_url}/v1/ranges/lookup"
        body = {"eventRanges": [r.to_lookup() for r in batch], **self.place}
        reason, wait = "", None
        for attempt in range(policy.attempts):
            if attempt:
                await asyncio.sleep(policy.delay(attempt, wait))
            try:
                response = await self.http.post(url, json=body, headers=self._auth)
            except httpx.TransportError as exc:
                reason, wait = f"{where} unreachable: {type(exc).__name__}: {exc}", None
                _attempt_failed(where, attempt, policy, reason)
                continue
            status = response.status_code
            if status >= 500 or status in (408, 429):
                reason = f"{where} answered HTTP {status}{await error_detail(response)}"
                wait = retry_after_s(response.headers.get("retry-after"))
                _attempt_failed(where, attempt, policy, reason)
                continue
            if status != 200:
                raise LookupFailed(f"{where} answered HTTP {status}{await error_detail(response)}")
            return _results(where, batch, response)
        raise LookupFailed(f"{reason} ({gave_up(policy)})")


def _growing(items: list[Any], first: int) -> Iterator[list[Any]]:
    """`items` in batches of `first`, then each batch 4 times the one before, at most
    MAX_BATCH."""
    size, at = first, 0
    while at < len(items):
        yield items[at : at + size]
        at += size
        size = min(MAX_BATCH, size * 4)


def _attempt_failed(where: str, attempt: int, policy: RetryPolicy, reason: str) -> None:
    log.warning(
        "lookup.attempt_failed where=%s attempt=%d/%d reason=%s",
        where,
        attempt + 1,
        policy.attempts,
        reason,
    )


def _results(
    where: str, batch: Sequence[EventRange], response: httpx.Response
) -> list[Mapping[str, Any]]:
    """The answer's list, one result per asked range in the same order."""
    try:
        results = response.json()
    except ValueError:
        raise LookupFailed(f"{where} answered something that is not JSON") from None
    if not isinstance(results, list) or len(results) != len(batch):
        raise LookupFailed(f"{where} answered {len(batch)} ranges with something else")
    for r, result in zip(batch, results, strict=True):
        if not isinstance(result, dict) or result.get("eventRangeID") != r.event_range_id:
            raise LookupFailed(f"{where} answered out of order (expected {r.event_range_id})")
    return results


class Refused(str):
    """Why ESS refused a range, with the refusal's `code`."""

    code: str = ""

    def __new__(cls, reason: str, code: str) -> Refused:
        made = super().__new__(cls, reason)
        made.code = code
        return made


class NotPrepared(Refused):
    """Why a range failed, when it failed because no request prepared it."""


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _pieces(r: EventRange, result: Mapping[str, Any]) -> list[Piece] | str:
    if result.get("status") != "ok":
        reason = str(result.get("reason") or f"the lookup answered status {result.get('status')!r}")
        code = result.get("code")
        if code == "not_prepared":
            return NotPrepared(reason, code)
        return Refused(reason, code) if isinstance(code, str) and code else reason
    try:
        pieces = result.get("pieces")
        if not isinstance(pieces, list):
            raise BadAnswer("the answer has no list of pieces")
        return check_cover(r, [Piece.from_answer(p) for p in pieces])
    except BadAnswer as exc:
        return f"bad lookup answer: {exc}"


class SyncPilotClient:
    """PilotClient for code without an event loop (it runs its own; not inside another)."""

    def __init__(self, head_url: str, dest: Path | str, **options: Unpack[PilotOptions]) -> None:
        self._runner = asyncio.Runner()
        self._client = PilotClient(head_url, dest, **options)

    def fetch(self, ranges: Iterable[Mapping[str, Any]]) -> FetchResult:
        return self._runner.run(self._client.fetch(ranges))

    def rewrite(self, ranges: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self.fetch(ranges).payload

    def close(self) -> None:
        try:
            self._runner.run(self._client.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncPilotClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
