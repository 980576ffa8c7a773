"""Read the branches of a source event tree basket by basket, and cut ranges out of them.

Consumes an uproot TBranch of an event tree (local or remote file) and, range after range in
increasing order, the entries each range file needs. Produces the range's baskets for
``rangewriter``: a ``CopiedBasket`` for each source basket the range holds whole (when the
range files keep the source's compression), otherwise ``EncodedBasket``s cut out of the
decompressed source baskets, at most ``block`` entries each. One decompressed source basket is
held per branch, so a basket that several ranges share is decompressed once and memory does not
grow with the file. For a remote file, ``prefetch`` fetches what a range needs beforehand, with
concurrent requests, and of a zlib or LZMA basket only its beginning (``basketio``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import uproot

from ess_splitter.basketio import decode, fetch_prefix
from ess_splitter.rangewriter import Basket, CopiedBasket, EncodedBasket
from ess_splitter.treelayout import SplitError

__all__ = ["SourceBranch", "prefetch"]


@dataclass(frozen=True)
class _Piece:
    """Entries start..stop-1 of a branch that go into one basket of a range file."""

    start: int
    stop: int
    #: The source basket copied whole, or None when the entries are encoded anew.
    copied: int | None = None


class SourceBranch:
    """One branch of a source event tree, read basket by basket in entry order.

    Holds one decompressed basket at a time: ranges are written in order, so a basket that
    several ranges share is decompressed once.
    """

    def __init__(self, branch: Any, copy: bool, *, counter: bool) -> None:
        self.branch = branch
        self.name = str(branch.name)
        interpretation = branch.interpretation
        self.variable = not isinstance(interpretation, uproot.AsDtype)
        self.itemsize = 0 if self.variable else int(interpretation.to_dtype.itemsize)
        # Bytes per value of a counted array.
        self._content_itemsize = (
            int(interpretation.content.to_dtype.itemsize)
            if isinstance(interpretation, uproot.AsJagged)
            else 1
        )
        self.starts: list[int] = [int(entry) for entry in branch.entry_offsets]
        # Embedded baskets live inside the TBranch record, with no key of their own to copy.
        n_embedded = len(branch.embedded_baskets) if branch.num_baskets else 0
        self._normal = int(branch.num_baskets) - n_embedded
        self._copy = copy
        self._counter = counter
        self._strings = isinstance(interpretation, uproot.AsStrings)
        # The range file's leaf of a counter or string records the largest value or length.
        self._needs_maximum = counter or self._strings
        #: The branch holding this one's entry counts, for counted arrays.
        self.counter_branch: SourceBranch | None = None
        self._fetched: dict[int, Any] = {}
        # Baskets of which only the first entries were fetched and inflated (remote reads).
        self._partial: dict[int, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64] | None, int]]
        self._partial = {}
        self._basket_number = -1
        self._available = 0
        self._data: npt.NDArray[np.uint8] = np.empty(0, np.uint8)
        self._offsets: npt.NDArray[np.int64] | None = None

    def pieces(self, start: int, stop: int, block: int) -> list[_Piece]:
        """How entries start..stop-1 are cut into baskets: whole source baskets copied, the rest
        encoded in blocks of at most ``block`` entries."""
        starts = self.starts
        found: list[_Piece] = []
        position = start
        while position < stop:
            number = bisect_right(starts, position) - 1
            basket_stop = starts[number + 1]
            if position == starts[number] and basket_stop <= stop and self._copyable(number):
                found.append(_Piece(position, basket_stop, number))
                position = basket_stop
                continue
            end = min(stop, position + block)
            if self._copy:
                # Stop short of the next basket that can be copied whole.
                following = number + 1
                while following < len(starts) - 1 and starts[following] < end:
                    if starts[following + 1] <= stop and self._copyable(following):
                        end = starts[following]
                        break
                    following += 1
            found.append(_Piece(position, end))
            position = end
        return found

    def _copyable(self, number: int) -> bool:
        return (
            self._copy and number < self._normal and self.starts[number + 1] > self.starts[number]
        )

    def baskets(self, start: int, stop: int, block: int) -> Iterator[Basket]:
        for piece in self.pieces(start, stop, block):
            if piece.copied is None:
                yield self._encoded(piece.start, piece.stop)
            else:
                yield self._copied(piece)

    def needs(self, start: int, stop: int, block: int) -> list[tuple[int, int | None]]:
        """The keyed baskets that entries start..stop-1 need and that are not in memory: each
        with how many of its first entries are needed, or None when all of it is."""
        found: dict[int, int | None] = {}
        for piece in self.pieces(start, stop, block):
            if piece.copied is not None:
                found[piece.copied] = None
                continue
            number = bisect_right(self.starts, piece.start) - 1
            while number < self._normal and self.starts[number] < piece.stop:
                basket_start, basket_stop = self.starts[number], self.starts[number + 1]
                entries = min(piece.stop, basket_stop) - basket_start
                partial = None if self._strings or piece.stop >= basket_stop else entries
                found[number] = partial
                number += 1
        if self._basket_number in found and self._available == self._entries(self._basket_number):
            del found[self._basket_number]
        return [(n, entries) for n, entries in found.items() if n not in self._fetched]

    def fetch_start(self, number: int, entries: int, counts: npt.NDArray[np.int32] | None) -> None:
        """Fetch and inflate only what the first ``entries`` entries of basket ``number`` take
        (``counts``: their lengths, for counted arrays); the whole basket if that cannot be."""
        if counts is None:
            offsets = None
            wanted = entries * self.itemsize
        else:
            offsets = np.zeros(entries + 1, np.int64)
            np.cumsum(counts, out=offsets[1:])
            offsets *= self._content_itemsize
            wanted = int(offsets[-1])
        ratio = float(self.branch.member("fZipBytes")) / max(
            float(self.branch.member("fTotBytes")), 1.0
        )
        seek = int(self.branch.member("fBasketSeek")[number])
        stored = int(self.branch.basket_compressed_bytes(number))
        data = fetch_prefix(self.branch.file.source, seek, stored, wanted, ratio)
        if data is None or len(data) < wanted:
            self.fetch(number)
            return
        self._partial[number] = (np.frombuffer(data, np.uint8), offsets, entries)

    def values(self, start: int, stop: int) -> npt.NDArray[np.int32]:
        """Entries start..stop-1 of this branch of 32-bit integers (a counter)."""
        return np.frombuffer(self._encoded(start, stop).data, ">i4").astype(np.int32)

    def forget_partial(self) -> None:
        """Drop baskets of which only a part is in memory, before another range is read."""
        self._partial.clear()
        if self._basket_number >= 0 and self._available < self._entries(self._basket_number):
            self._basket_number = -1

    def _entries(self, number: int) -> int:
        return self.starts[number + 1] - self.starts[number]

    def fetch(self, number: int) -> None:
        """Read basket ``number``'s stored bytes now, to be decompressed when its turn comes."""
        chunk, cursor = self.branch.basket_chunk_cursor(number)
        # A chunk may be filled in the background; waiting here makes errors surface now.
        chunk.wait()
        self._fetched[number] = (chunk, cursor)

    def _chunk_cursor(self, number: int) -> Any:
        found = self._fetched.pop(number, None)
        return found if found is not None else self.branch.basket_chunk_cursor(number)

    def _copied(self, piece: _Piece) -> CopiedBasket:
        assert piece.copied is not None
        chunk, cursor = self._chunk_cursor(piece.copied)
        stop = cursor.index + int(self.branch.basket_compressed_bytes(piece.copied))
        stored = bytes(chunk.get(cursor.index, stop, cursor, {}))
        maximum = 0
        if self._needs_maximum:
            self._fetched[piece.copied] = (chunk, cursor)
            encoded = self._encoded(piece.start, piece.stop)
            maximum = _leaf_maximum(encoded, self._counter)
        return CopiedBasket(stored, piece.stop - piece.start, maximum)

    def _encoded(self, start: int, stop: int) -> EncodedBasket:
        parts: list[bytes] = []
        offsets: list[npt.NDArray[np.int64]] = []
        size = 0
        position = start
        while position < stop:
            number = bisect_right(self.starts, position) - 1
            basket_start = self.starts[number]
            first = position - basket_start
            last = min(stop, self.starts[number + 1]) - basket_start
            self._load(number, last)
            if self._offsets is None:
                begin, end = first * self.itemsize, last * self.itemsize
            else:
                begin, end = int(self._offsets[first]), int(self._offsets[last])
                offsets.append(self._offsets[first:last] - begin + size)
            parts.append(self._data[begin:end].tobytes())
            size += end - begin
            position = basket_start + last
        if not self.variable:
            return EncodedBasket(b"".join(parts), None, stop - start)
        offsets.append(np.array([size], np.int64))
        return EncodedBasket(b"".join(parts), np.concatenate(offsets), stop - start)

    def _load(self, number: int, entries_needed: int) -> None:
        if number == self._basket_number and entries_needed <= self._available:
            return
        partial = self._partial.get(number)
        if partial is not None and entries_needed <= partial[2]:
            self._data, self._offsets, self._available = partial
            self._basket_number = number
            return
        decoded = None
        if number < self._normal:
            chunk, cursor = self._chunk_cursor(number)
            stop = cursor.index + int(self.branch.basket_compressed_bytes(number))
            decoded = decode(memoryview(chunk.get(cursor.index, stop, cursor, {})))
        if decoded is None:
            # Embedded, or compressed by an algorithm only uproot knows.
            basket = self.branch.basket(number)
            decoded = (
                np.asarray(basket.data, np.uint8),
                None if basket.byte_offsets is None else np.asarray(basket.byte_offsets),
            )
        entries = self.starts[number + 1] - self.starts[number]
        data, offsets = decoded
        if self.variable:
            if offsets is None and self._strings:
                # uproot does not parse the entry offsets of a basket whose size happens to
                # equal fNevBufSize bytes per entry; C strings carry their own lengths.
                offsets = _string_offsets(data, entries)
            if offsets is None or len(offsets) != entries + 1:
                raise SplitError(
                    f"branch {self.name!r} basket {number} has no entry offsets; "
                    "its entries cannot be told apart"
                )
            offsets = offsets.astype(np.int64)
        elif len(data) != entries * self.itemsize:
            raise SplitError(
                f"branch {self.name!r} basket {number} holds {len(data)} bytes for {entries} "
                f"entries of {self.itemsize} bytes"
            )
        else:
            offsets = None
        self._basket_number, self._data, self._offsets = number, data, offsets
        self._available = entries


def _string_offsets(data: npt.NDArray[np.uint8], entries: int) -> npt.NDArray[np.int64]:
    """Where each of ``entries`` C strings starts: one length byte, or 255 and four bytes."""
    offsets = np.empty(entries + 1, np.int64)
    position = 0
    for entry in range(entries):
        offsets[entry] = position
        length = int(data[position])
        if length == 255:
            length = int.from_bytes(data[position + 1 : position + 5].tobytes(), "big")
            position += 4
        position += 1 + length
    offsets[entries] = position
    if position != len(data):
        raise SplitError(f"C strings of {entries} entries do not fill their basket")
    return offsets


def _leaf_maximum(basket: EncodedBasket, counter: bool) -> int:
    if basket.entries == 0:
        return 0
    if counter:
        return int(np.frombuffer(basket.data, ">i4").max())
    assert basket.offsets is not None
    return int(np.diff(basket.offsets).max())


def prefetch(
    pool: ThreadPoolExecutor,
    branches: dict[str, list[SourceBranch]],
    start: int,
    stop: int,
    block: int,
) -> None:
    """Fetch, concurrently, what entries start..stop-1 need from a remote file.

    Baskets copied whole, and C strings, are fetched whole. Of the others only the beginning up
    to the range's end is fetched: first for fixed-size branches (counters included, from the
    start of the earliest basket a counted branch needs), then, their lengths known from the
    counters, for counted arrays.
    """
    everything = [source for tree in branches.values() for source in tree]
    counted_from: dict[int, int] = {}
    for source in everything:
        source.forget_partial()
        if source.counter_branch is not None:
            first = source.starts[bisect_right(source.starts, start) - 1]
            key = id(source.counter_branch)
            counted_from[key] = min(counted_from.get(key, start), first)
    fixed = [source for source in everything if source.counter_branch is None]
    counted = [source for source in everything if source.counter_branch is not None]
    _run(
        pool,
        [
            (source, number, entries, None)
            for source in fixed
            for number, entries in source.needs(counted_from.get(id(source), start), stop, block)
        ],
    )
    jobs: list[tuple[SourceBranch, int, int | None, npt.NDArray[np.int32] | None]] = []
    for source in counted:
        assert source.counter_branch is not None
        for number, entries in source.needs(start, stop, block):
            counts = None
            if entries is not None:
                basket_start = source.starts[number]
                counts = source.counter_branch.values(basket_start, basket_start + entries)
            jobs.append((source, number, entries, counts))
    _run(pool, jobs)


def _run(
    pool: ThreadPoolExecutor,
    jobs: list[tuple[SourceBranch, int, int | None, npt.NDArray[np.int32] | None]],
) -> None:
    futures = [
        pool.submit(source.fetch, number)
        if entries is None
        else pool.submit(source.fetch_start, number, entries, counts)
        for source, number, entries, counts in jobs
    ]
    for future in futures:
        future.result()
