"""PanDA event ranges in, payload ranges out.

PanDA hands a pilot dicts with `eventRangeID`, `LFN`, `GUID`, `scope`, `startEvent` and
`lastEvent`, the events being 1-based, inclusive positions in the original file. The head (or
an edge) answers with the prepared files ("pieces") that hold them. The payload gets, per
piece, the original dict with `PFN` set to the local file and `startEvent`/`lastEvent`
counted from 1 within that file; `eventRangeID` is never changed. A range that straddles two
prepared files becomes two payload dicts with the same `eventRangeID`, in event order. A
range that cannot be served comes back as the original dict plus `status: failed` and a
`reason`; nothing is dropped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The fields a lookup needs, with PanDA's spelling.
REQUIRED = ("eventRangeID", "LFN", "scope", "startEvent", "lastEvent")
_HEX32 = re.compile(r"[0-9a-f]{1,8}")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*(/[A-Za-z0-9][A-Za-z0-9._+=-]*)*$")


class BadRange(ValueError):
    """A PanDA dict that does not fit the convention (1 <= startEvent <= lastEvent, ...)."""


class BadAnswer(ValueError):
    """An answer of the head or an edge that does not fit its contract."""


def _event_number(d: Mapping[str, Any], name: str) -> int:
    value = d.get(name)
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRange(f"{name} {value!r} is not an integer")
    return value


def _text(d: Mapping[str, Any], name: str) -> str:
    value = d.get(name)
    if not isinstance(value, str) or not value:
        raise BadRange(f"{name} {value!r} is not a non-empty string")
    return value


@dataclass(frozen=True)
class EventRange:
    """One PanDA event range; `original` is the dict as PanDA gave it, every key kept."""

    event_range_id: str
    lfn: str
    scope: str
    guid: str
    start_event: int
    last_event: int
    original: Mapping[str, Any] = field(compare=False, repr=False)

    @classmethod
    def from_panda(cls, d: Mapping[str, Any]) -> EventRange:
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise BadRange(f"missing {', '.join(missing)}")
        start, last = _event_number(d, "startEvent"), _event_number(d, "lastEvent")
        if not 1 <= start <= last:
            raise BadRange(
                f"startEvent {start} and lastEvent {last} must satisfy "
                "1 <= startEvent <= lastEvent (1-based positions in the original file)"
            )
        return cls(
            event_range_id=_text(d, "eventRangeID"),
            lfn=_text(d, "LFN"),
            scope=_text(d, "scope"),
            # Informative only: ESS finds files by scope and LFN.
            guid=guid if isinstance(guid := d.get("GUID"), str) else "",
            start_event=start,
            last_event=last,
            original=d,
        )

    def to_lookup(self) -> dict[str, Any]:
        """The range as the lookup API takes it."""
        return {
            "eventRangeID": self.event_range_id,
            "LFN": self.lfn,
            "GUID": self.guid,
            "scope": self.scope,
            "startEvent": self.start_event,
            "lastEvent": self.last_event,
        }


def normalise_adler32(value: str) -> str:
    """8 lowercase hex digits; catalogues sometimes drop leading zeros or write `0x`."""
    text = value.strip().lower().removeprefix("0x")
    if not _HEX32.fullmatch(text):
        raise BadAnswer(f"adler32 {value!r} is not 1 to 8 hexadecimal digits")
    return text.zfill(8)


def check_key(key: str) -> str:
    """Object keys become paths under the destination: safe relative words only."""
    if len(key) > 1024 or not _KEY.match(key) or any(p in (".", "..") for p in key.split("/")):
        raise BadAnswer(f"object key {key!r} is not a safe relative path")
    return key


@dataclass(frozen=True)
class Piece:
    """One prepared file holding part (or all) of a range, as the lookup answers it.

    `file_first_event`..`file_last_event` are the original file's events the piece's file
    holds; `start_event`..`last_event` the asked ones within it (original numbering).
    """

    key: str
    size: int
    adler32: str
    file_first_event: int
    file_last_event: int
    start_event: int
    last_event: int
    url: str = ""
    expires_in_s: int = 0
    #: The same file from the closest live edge (the head's hint), tried before `url`.
    edge_url: str = ""
    #: When the answer came (time.monotonic()): the signed URL is good for expires_in_s.
    received_at: float = field(default_factory=time.monotonic, compare=False, repr=False)

    @property
    def url_expiring(self) -> bool:
        """Whether the signed URL expires within a tenth of its life (at most a minute)."""
        if not self.url or self.expires_in_s <= 0:
            return False
        margin = min(60.0, self.expires_in_s / 10)
        return time.monotonic() >= self.received_at + self.expires_in_s - margin

    @property
    def local_start_event(self) -> int:
        return self.start_event - self.file_first_event + 1

    @property
    def local_last_event(self) -> int:
        return self.last_event - self.file_first_event + 1

    @classmethod
    def from_answer(cls, d: object) -> Piece:
        if not isinstance(d, Mapping):
            raise BadAnswer(f"a piece that is not an object: {d!r}")
        expires = d.get("expires_in_s") or 0
        if not isinstance(expires, int):
            raise BadAnswer(f"piece with expires_in_s {expires!r}")
        try:
            numbers = {
                k: d[k]
                for k in (
                    "size",
                    "file_first_event",
                    "file_last_event",
                    "start_event",
                    "last_event",
                )
            }
            url, key, adler32 = d["url"], d["key"], d["adler32"]
        except (KeyError, TypeError) as exc:
            raise BadAnswer(f"piece without {exc}") from exc
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers.values()):
            raise BadAnswer(f"piece with non-integer numbers: {numbers}")
        if not all(isinstance(v, str) for v in (url, key, adler32)):
            raise BadAnswer("piece with a non-string url, key or adler32")
        piece = cls(
            key=check_key(key),
            adler32=normalise_adler32(adler32),
            url=url,
            expires_in_s=expires,
            edge_url=edge_url if isinstance(edge_url := d.get("edge_url"), str) else "",
            **numbers,
        )
        # The head also says how to number the events locally; it must agree with ours.
        for ours, name in (
            (piece.local_start_event, "local_start_event"),
            (piece.local_last_event, "local_last_event"),
        ):
            if name in d and d[name] != ours:
                raise BadAnswer(
                    f"piece {key}: {name} {d[name]} but the file numbering gives {ours}"
                )
        return piece


def check_cover(r: EventRange, pieces: Sequence[Piece]) -> list[Piece]:
    """The pieces in event order, if together they hold exactly the range's events."""
    ordered = sorted(pieces, key=lambda p: p.start_event)
    needed = r.start_event
    for p in ordered:
        if not p.file_first_event <= p.start_event <= p.last_event <= p.file_last_event:
            raise BadAnswer(
                f"piece {p.key} claims events {p.start_event}-{p.last_event} outside the "
                f"{p.file_first_event}-{p.file_last_event} its file holds"
            )
        if p.start_event != needed:
            raise BadAnswer(f"the answer does not hold event {needed} (next piece {p.key})")
        needed = p.last_event + 1
    if not ordered or needed != r.last_event + 1:
        raise BadAnswer(
            f"the answer does not hold events {needed}-{r.last_event} of the asked "
            f"{r.start_event}-{r.last_event}"
        )
    return ordered


@dataclass(frozen=True)
class ServedPiece:
    """A piece on local disk, verified."""

    piece: Piece
    path: Path
    reused: bool = False

    def payload(self, original: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **original,
            "PFN": str(self.path),
            "startEvent": self.piece.local_start_event,
            "lastEvent": self.piece.local_last_event,
        }


@dataclass(frozen=True)
class RangeOutcome:
    """What became of one input range: served by pieces, or failed with a reason."""

    original: Mapping[str, Any]
    pieces: tuple[ServedPiece, ...] = ()
    reason: str | None = None
    #: Why ESS refused the range, for a program: `bad_range`, `outside_file`, `unknown_file`
    #: or `not_prepared` (as the lookup answers them); None when it failed otherwise (a
    #: download, a checksum, the head unreachable).
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def event_range_id(self) -> object:
        return self.original.get("eventRangeID")

    def payload(self) -> list[dict[str, Any]]:
        """One dict per piece in event order, or the failed range."""
        if self.reason is not None:
            return [failed(self.original, self.reason)]
        return [p.payload(self.original) for p in self.pieces]


def failed(original: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {**original, "status": "failed", "reason": reason}


def payload_ranges(outcomes: Sequence[RangeOutcome]) -> list[dict[str, Any]]:
    """The list the payload gets: input order, a straddling range as several dicts."""
    return [d for o in outcomes for d in o.payload()]
