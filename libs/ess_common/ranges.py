"""Finding the prepared files that hold a PanDA event range: the rule the head and the edges
share, and the shapes of their answers.

PanDA counts events by their 1-based position in the original file; so do the ranges in the
bookkeeping. Among the prepared copies of a file (several requests may have split it at
different granularities), the one that covers the asked events with the fewest pieces wins, the
newest copy on a tie; a range that straddles two range files is answered with both pieces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ess_common.errors import EssError, NotFound, PermanentError


class RangeFailure(StrEnum):
    """Why a range cannot be served, for a program to act on (the reason is for a person)."""

    #: The file is known but no copy holds the range yet: ask again later.
    NOT_PREPARED = "not_prepared"
    #: No request holds the file.
    UNKNOWN_FILE = "unknown_file"
    #: The range ends beyond the file's last event.
    OUTSIDE_FILE = "outside_file"
    #: The positions break the convention (1 <= startEvent <= lastEvent).
    BAD_RANGE = "bad_range"


class RangeNotPrepared(NotFound):
    def __init__(
        self,
        scope: str,
        lfn: str,
        start: int,
        last: int,
        why: str,
        code: RangeFailure = RangeFailure.NOT_PREPARED,
    ) -> None:
        super().__init__("event range", f"{scope}:{lfn} events {start}-{last}")
        self.args = (f"events {start}-{last} of {scope}:{lfn} {why}",)
        self.code = code


class RangeOutsideFile(PermanentError):
    def __init__(self, reason: str, code: RangeFailure = RangeFailure.OUTSIDE_FILE) -> None:
        super().__init__(reason)
        self.code = code


class Span(Protocol):
    @property
    def first_event(self) -> int: ...

    @property
    def last_event(self) -> int: ...


S = TypeVar("S", bound=Span)


def check_asked(start: int, last: int) -> None:
    if start < 1 or last < start:
        raise RangeOutsideFile(
            f"startEvent {start} and lastEvent {last} must satisfy 1 <= startEvent <= lastEvent "
            "(1-based positions in the original file, PanDA's convention)",
            RangeFailure.BAD_RANGE,
        )


def covering(ranges: Sequence[S], start: int, last: int) -> list[S] | None:
    """The ranges (sorted by first event) if together they hold every event start..last."""
    needed = start
    chosen: list[S] = []
    for r in ranges:
        if r.first_event > needed:
            return None
        if r.last_event >= needed:
            chosen.append(r)
            needed = r.last_event + 1
        if needed > last:
            return chosen
    return None


def best_cover(copies: Iterable[tuple[int, Sequence[S]]], start: int, last: int) -> list[S] | None:
    """Of the copies (file id, its ranges sorted by first event), the fewest pieces that hold
    start..last; the newest copy (highest file id) on a tie."""
    options = [(c, file_id) for file_id, rs in copies if (c := covering(rs, start, last))]
    if not options:
        return None
    return min(options, key=lambda o: (len(o[0]), -o[1]))[0]


def not_prepared(
    scope: str, lfn: str, start: int, last: int, n_events: int | None
) -> RangeNotPrepared | RangeOutsideFile:
    """Why no copy holds the range, given the file's event count (None: nobody asked for it)."""
    if n_events is None:
        return RangeNotPrepared(
            scope,
            lfn,
            start,
            last,
            "are not known: no request holds the file",
            RangeFailure.UNKNOWN_FILE,
        )
    if last > n_events:
        return RangeOutsideFile(
            f"lastEvent {last} is beyond the {n_events} events of {scope}:{lfn}",
            RangeFailure.OUTSIDE_FILE,
        )
    return RangeNotPrepared(scope, lfn, start, last, "are not prepared (yet)")


def not_splittable_on_demand(scope: str, lfn: str, start: int, last: int) -> RangeNotPrepared:
    """Why a range of a file that no request holds cannot be split on demand."""
    return RangeNotPrepared(
        scope,
        lfn,
        start,
        last,
        "cannot be split on demand: no request holds the file, so where to read it is not known",
        RangeFailure.UNKNOWN_FILE,
    )


class Answer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Piece(Answer):
    """One prepared file holding part (or all) of an asked event range.

    Event numbers are 1-based positions in the original file, as PanDA counts them;
    `local_*` are the same events counted from 1 within this piece's file.
    """

    url: str = Field(description="where to download the file: a short-lived signed URL")
    key: str
    size: int
    adler32: str
    file_first_event: int = Field(description="first event the piece's file holds")
    file_last_event: int = Field(description="last event the piece's file holds")
    start_event: int = Field(description="first asked event in this piece")
    last_event: int = Field(description="last asked event in this piece")
    local_start_event: int = Field(description="start_event counted within the piece's file")
    local_last_event: int = Field(description="last_event counted within the piece's file")
    expires_in_s: int
    edge_url: str | None = Field(
        default=None,
        description="the same file from the closest live edge, when the pilot said where it "
        "runs; `url` stays the fallback",
    )


def make_piece(
    *,
    first_event: int,
    last_event: int,
    key: str,
    size: int,
    adler32: str,
    start: int,
    last: int,
    url: str,
    expires_in_s: int,
    edge_url: str | None = None,
) -> Piece:
    lo, hi = max(start, first_event), min(last, last_event)
    return Piece(
        url=url,
        key=key,
        size=size,
        adler32=adler32,
        file_first_event=first_event,
        file_last_event=last_event,
        start_event=lo,
        last_event=hi,
        local_start_event=lo - first_event + 1,
        local_last_event=hi - first_event + 1,
        expires_in_s=expires_in_s,
        edge_url=edge_url,
    )


class LookupAnswer(Answer):
    scope: str
    lfn: str
    start_event: int
    last_event: int
    pieces: list[Piece]


class PandaEventRange(BaseModel):
    """An event range exactly as PanDA hands it to a pilot."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    event_range_id: str = Field(alias="eventRangeID")
    lfn: str = Field(alias="LFN")
    guid: str = Field(default="", alias="GUID")
    scope: str
    start_event: int = Field(alias="startEvent")
    last_event: int = Field(alias="lastEvent")


class BatchLookup(BaseModel):
    # A Sequence, so that a service may narrow the ranges' model (the head bounds positions).
    event_ranges: Sequence[PandaEventRange] = Field(alias="eventRanges", max_length=10_000)


class RangeResult(BaseModel):
    event_range_id: str = Field(serialization_alias="eventRangeID")
    status: str = Field(description="`ok`, or `failed` with a reason")
    reason: str | None = None
    code: RangeFailure | None = Field(
        default=None,
        description="why a `failed` range cannot be served, for a program to act on; null "
        "when it is `ok` or failed for another reason (a server ESS needs is unavailable)",
    )
    pieces: list[Piece] = []


def range_result(event_range_id: str, found: LookupAnswer | EssError) -> RangeResult:
    if isinstance(found, EssError):
        code = found.code if isinstance(found, RangeNotPrepared | RangeOutsideFile) else None
        return RangeResult(
            event_range_id=event_range_id, status="failed", reason=str(found), code=code
        )
    return RangeResult(event_range_id=event_range_id, status="ok", pieces=found.pieces)


# --- what an edge fetches from the head to answer lookups itself ------------------------------


class RangeEntry(Answer):
    """One range file of a prepared copy."""

    first_event: int
    last_event: int
    key: str
    size: int
    adler32: str


class PreparedCopy(Answer):
    """One split of the file (one request's file), its ranges sorted by first event; a range
    split on demand is a copy of its own, with no request and `file_id` its range id negated."""

    file_id: int
    request_id: str | None
    events_per_range: int
    ranges: list[RangeEntry]


class FileRanges(Answer):
    """Everything the head knows of a file's prepared copies: `GET /v1/files/{scope}/{lfn}/ranges`.

    `n_events` is None when no request holds the file.
    """

    scope: str
    lfn: str
    n_events: int | None
    copies: list[PreparedCopy]

    def lookup(self, start: int, last: int) -> list[RangeEntry]:
        """The pieces holding start..last, or the error saying why there are none."""
        check_asked(start, last)
        found = best_cover(((c.file_id, c.ranges) for c in self.copies), start, last)
        if found is None:
            raise not_prepared(self.scope, self.lfn, start, last, self.n_events)
        return found
