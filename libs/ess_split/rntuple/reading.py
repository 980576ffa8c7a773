"""An RNTuple's pages read from the source file: stored bytes in file order, and inflated pages
and decoded offsets kept for the next ranges.

Ranges are usually cut in order and are often smaller than a page, so consecutive ranges cut
the same pages: those are read and inflated once and kept, least recently used first out,
up to ``CACHE_BYTES``. Stored bytes are read in ranges of nearby pages, at most ``_READ_BYTES``
at a time; a page's checksum, where it has one, is verified on every read.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ess_split.format.buffer import RecordError
from ess_split.rntuple.binary import xxh3
from ess_split.rntuple.metadata import ClusterRecord, PageRecord
from ess_split.rntuple.schema import Schema

__all__ = ["CACHE_BYTES", "PageKey", "PageStore", "stored_size"]

CACHE_BYTES = 64 << 20
_READ_BYTES = 16 << 20
_READ_GAP = 64 << 10
_CHECKSUM = struct.Struct("<Q")

PageKey = tuple[int, int, int]
"""A page: its cluster, its column, its number in that column's pages of the cluster."""


def stored_size(record: PageRecord) -> int:
    """Bytes of a stored page, its checksum included."""
    return record.locator.size + (_CHECKSUM.size if record.checksum else 0)


class PageStore:
    """The pages of one RNTuple; ``read`` gives bytes ``start``..``stop - 1`` of its file."""

    def __init__(
        self,
        read: Callable[[int, int], bytes],
        schema: Schema,
        clusters: list[ClusterRecord],
        where: str,
    ) -> None:
        self._read = read
        self._schema = schema
        self._clusters = clusters
        self._where = where
        self._kept: OrderedDict[tuple[str, PageKey], bytes | npt.NDArray[np.int64]] = OrderedDict()
        self._kept_bytes = 0

    def record(self, key: PageKey) -> PageRecord:
        cluster, column, number = key
        return self._clusters[cluster].columns[column].pages[number]

    def kept_page(self, key: PageKey) -> bytes | None:
        """The inflated page if it is kept, else None."""
        found = self._kept.get(("page", key))
        if found is None:
            return None
        self._kept.move_to_end(("page", key))
        assert isinstance(found, bytes)
        return found

    def page(self, key: PageKey, stored: bytes | None = None) -> bytes:
        """The inflated page (from its ``stored`` bytes when given)."""
        kept = self.kept_page(key)
        if kept is not None:
            return kept
        record = self.record(key)
        if stored is None:
            ((_, stored),) = self.stored([record])
        codec = self._schema.columns[key[1]].codec
        page = codec.inflate(stored[: record.locator.size], record.elements)
        self._keep(("page", key), page, len(page))
        return page

    def offsets(self, key: PageKey) -> npt.NDArray[np.int64]:
        """An index column's page decoded: its end offsets."""
        found = self._kept.get(("offsets", key))
        if found is not None:
            self._kept.move_to_end(("offsets", key))
            assert not isinstance(found, bytes)
            return found
        codec = self._schema.columns[key[1]].codec
        values = codec.offsets(self.page(key), self.record(key).elements)
        self._keep(("offsets", key), values, values.nbytes)
        return values

    def _keep(
        self, key: tuple[str, PageKey], value: bytes | npt.NDArray[np.int64], size: int
    ) -> None:
        self._kept[key] = value
        self._kept_bytes += size
        while self._kept_bytes > CACHE_BYTES and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped) if isinstance(dropped, bytes) else dropped.nbytes

    def stored(self, records: Sequence[PageRecord]) -> Iterator[tuple[int, bytes]]:
        """Each page's stored bytes (its checksum, verified, appended), in file order, read in
        ranges of nearby pages; with each, its place in ``records``."""
        order = sorted(range(len(records)), key=lambda i: records[i].locator.offset)
        group: list[int] = []
        head = end = 0
        for position in order:
            record = records[position]
            offset = record.locator.offset
            if group and (
                offset - end > _READ_GAP or offset + stored_size(record) - head > _READ_BYTES
            ):
                yield from self._group(records, group, head, end)
                group = []
            if not group:
                head = end = offset
            group.append(position)
            end = max(end, offset + stored_size(record))
        if group:
            yield from self._group(records, group, head, end)

    def _group(
        self, records: Sequence[PageRecord], group: list[int], start: int, stop: int
    ) -> Iterator[tuple[int, bytes]]:
        data = self._read(start, stop)
        for position in group:
            record = records[position]
            at = record.locator.offset - start
            stored = data[at : at + stored_size(record)]
            if record.checksum:
                (checksum,) = _CHECKSUM.unpack_from(stored, record.locator.size)
                if xxh3(stored[: record.locator.size]) != checksum:
                    raise RecordError(f"{self._where}: a page fails its checksum")
            yield position, stored
