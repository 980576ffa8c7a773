"""What the remote-split benchmark measures: the input layouts and the ranges split from them.

Consumes a generated ntuple (``benchmarks.ntuple``) and produces its ``Shape`` (events per
basket, the TTree record that every reader fetches whole), the ranges to split (``cases``:
at a basket start and half a basket later), the least a reader must fetch for a range
(``basket_prefixes``), and the records of the runs: a ``Sample`` per split, a ``Row`` per
range, and a ``Layout`` with the file, its shape, the cost of opening it and its rows.
"""

from __future__ import annotations

import statistics
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.ntuple import TREE, InputFile


@dataclass(frozen=True)
class Case:
    name: str
    first: int
    last: int
    #: An earlier range of the file, split first with the file's identity by the same
    #: process (as an edge's on-demand pool splits them): what it fetched is kept, not
    #: fetched again. None: the first range of the file split by the process.
    earlier: tuple[int, int] | None = None
    #: Where the file is read from: "s3" (a presigned URL) or "root" (the XRootD server).
    via: str = "s3"

    @property
    def events(self) -> int:
        return self.last - self.first + 1

    @property
    def kept(self) -> bool:
        return self.earlier is not None

    @property
    def follows(self) -> bool:
        """Whether the earlier range ends where this one starts."""
        return self.earlier is not None and self.earlier[1] + 1 == self.first


@dataclass(frozen=True)
class Sample:
    seconds: float
    fetched: int
    range_bytes: int


@dataclass(frozen=True)
class Row:
    case: Case
    samples: list[Sample]

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def fetched(self) -> float:
        return statistics.median(s.fetched for s in self.samples)

    @property
    def range_bytes(self) -> int:
        return self.samples[0].range_bytes


@dataclass(frozen=True)
class Shape:
    """What a file's layout costs a remote reader before any basket."""

    basket: int
    baskets: int
    basket_slots: int
    record_bytes: int
    record_compressed: bool
    # The record's size compressed with zlib level 1, as ROOT writes its objects.
    record_zlib_bytes: int


@dataclass(frozen=True)
class Opening:
    """Opening the file and planning the split, measured alone."""

    seconds: float
    fetched: int


@dataclass(frozen=True)
class Layout:
    source: InputFile
    shape: Shape
    opening: Opening
    rows: list[Row]

    def share(self, case: Case) -> float:
        return self.source.size * case.events / self.source.events

    def ratio(self, row: Row) -> float:
        return row.fetched / self.share(row.case)

    def least(self, row: Row) -> float:
        """The least any reader fetches for the range: opening the file (unless kept) and the
        beginnings of its baskets up to its end (``basket_prefixes``)."""
        opening = 0.0 if row.case.kept else float(self.opening.fetched)
        return opening + basket_prefixes(self.source.path, row.case)


def basket_prefixes(source: Path, case: Case) -> float:
    """Compressed bytes from the start of each basket holding the range to the range's end,
    if the compression were uniform within a basket: the least any reader must fetch of the
    baskets. For a range that follows an earlier one, only what lies past the earlier range's
    end (the rest was fetched for it)."""
    import uproot

    held = case.earlier[1] if case.follows and case.earlier is not None else 0
    total = 0.0
    with uproot.open(source) as root_file:
        for branch in root_file[TREE].branches:
            offsets = [int(entry) for entry in branch.entry_offsets]
            for number in range(len(offsets) - 1):
                start, stop = offsets[number], offsets[number + 1]
                if stop < case.first or start >= case.last:
                    continue
                needed = min(stop, case.last) - max(start, held)
                total += branch.basket_compressed_bytes(number) * max(needed, 0) / (stop - start)
    return total


def shape(source: Path) -> Shape:
    import uproot

    with uproot.open(source) as root_file:
        key = root_file.key(TREE)
        branch = root_file[TREE]["event"]
        offsets = [int(entry) for entry in branch.entry_offsets]
        seek, stored, header = int(key.fSeekKey), int(key.fNbytes), int(key.fKeylen)
        compressed = bool(key.is_compressed)
        found = Shape(
            basket=offsets[1] - offsets[0],
            baskets=int(branch.num_baskets),
            basket_slots=int(branch.member("fMaxBaskets")),
            record_bytes=stored,
            record_compressed=compressed,
            record_zlib_bytes=stored,
        )
    if compressed:
        return found
    with source.open("rb") as stream:
        stream.seek(seek + header)
        payload = stream.read(stored - header)
    # One compressed block, with ROOT's 9-byte block header.
    return replace(found, record_zlib_bytes=header + 9 + len(zlib.compress(payload, 1)))


def cases(n_events: int, per_range: int, basket: int, *, xrootd: bool = False) -> list[Case]:
    """The range at the start of the basket holding the file's middle event, and one half a
    basket later: split as the first range of the file; after the file's first range (what
    opening the file read kept); and after the range just before it (the opening and the
    beginnings of its baskets, up to where that range ended, kept)."""
    middle = (n_events // 2) // basket * basket + 1
    # Half a basket on, as far as the file allows.
    shifted = max(per_range + 1, min(middle + basket // 2, n_events - per_range + 1))
    last = shifted + per_range - 1
    from_xrootd = [Case("middle, from XRootD", middle, middle + per_range - 1, via="root")]
    return [
        Case("middle", middle, middle + per_range - 1),
        *(from_xrootd if xrootd else []),
        Case("middle + ½ basket", shifted, last),
        Case("middle + ½ basket, opening kept", shifted, last, earlier=(1, per_range)),
        Case(
            "middle + ½ basket, after the range before it",
            shifted,
            last,
            earlier=(shifted - per_range, shifted - 1),
        ),
    ]
