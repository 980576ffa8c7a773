"""Write one range of an RNTuple: the RNTuple of a range file.

``RangeCut.write`` writes, through a ``BlobSink``: the header as stored (the schema does not
change, so neither does its checksum, which the footer and page list repeat); the pages of
every column holding the range's entries; one page list; a footer with one cluster group; and
it returns the new anchor's record.

The range's clusters are the source's clusters it overlaps, trimmed to it. A cluster the range
holds whole keeps its pages as stored. In a trimmed one, each field's item range gives its
columns' element ranges: a top-level field's items are the entries; a repetitive field's
children have that many items per item; a collection (or string, or streamed object) has an
index column of end offsets counted from the cluster's start, whose values at the range's ends
give its other columns' and its children's ranges; a variant's switch column gives each
alternative's. Pages inside an element range are copied as stored, the others decoded, sliced
by element and encoded again with the column's encoding and compression; index columns (and a
variant's indices) are lowered so the range's first entry starts at 0. A field with several
column representations keeps, per cluster, the one that is active there. A deferred column
(a field added while the RNTuple was written) starts with zeros that no page holds (the
RNTuple's ``leads``, per cluster); in a range file its first element index moves by as many
elements as the range skips.

Pages are written in blobs of at most ``_BLOB_BYTES``; with the pages the source's
``PageStore`` keeps, memory holds a bounded amount whatever the RNTuple's size.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ess_split.format.buffer import RecordError
from ess_split.format.walker import Unsupported
from ess_split.rntuple.binary import Locator, i64, xxh3
from ess_split.rntuple.metadata import (
    ClusterRecord,
    ColumnRange,
    PageRecord,
    footer_envelope,
    page_list_envelope,
)
from ess_split.rntuple.pages import Encoding, deflate
from ess_split.rntuple.reading import PageKey

if TYPE_CHECKING:
    from ess_split.rntuple import BlobSink
    from ess_split.rntuple.ntuple import NTupleFile

__all__ = ["RangeCut", "Span"]

_BLOB_BYTES = 8 << 20
_CHECKSUM = struct.Struct("<Q")


@dataclass(frozen=True)
class Span:
    """Elements ``start``..``stop - 1`` of a column in a cluster (counted from the cluster's
    start), and what its index values are lowered by (per tag for a switch column)."""

    start: int
    stop: int
    base: int | Mapping[int, int] = 0

    @property
    def rebased(self) -> bool:
        if isinstance(self.base, int):
            return self.base != 0
        return any(self.base.values())


@dataclass
class _OutPage:
    """A page of the range file: stored bytes (its checksum appended), and its position once
    its blob is written."""

    elements: int
    checksum: bool
    size: int
    data: bytes
    length: int
    position: int = -1

    def record(self) -> PageRecord:
        assert self.position >= 0
        return PageRecord(self.elements, self.checksum, Locator(self.size, self.position))


@dataclass
class _OutColumn:
    first_element: int | None
    compression: int
    pages: list[_OutPage] = field(default_factory=list)


class RangeCut:
    """One range of an RNTuple being written."""

    def __init__(self, ntuple: NTupleFile, sink: BlobSink) -> None:
        self.ntuple = ntuple
        self.schema = ntuple.schema
        self.sink = sink
        limit = ntuple.anchor.max_key_size
        self.blob_bytes = min(_BLOB_BYTES, limit) if limit > 0 else _BLOB_BYTES
        self._parts: list[_OutPage] = []
        self._blob_size = 0
        self.pages = ntuple.pages

    def write(self, first: int, stop: int) -> bytes:
        ntuple = self.ntuple
        header_at = self.sink.write_blob(ntuple.header_stored, ntuple.anchor.len_header)
        running = [0] * len(self.schema.columns)
        clusters: list[tuple[int, int, list[_OutColumn]]] = []
        for index, cluster in enumerate(ntuple.clusters):
            if cluster.stop <= first or cluster.first_entry >= stop:
                continue
            e0 = max(first, cluster.first_entry) - cluster.first_entry
            e1 = min(stop, cluster.stop) - cluster.first_entry
            columns = self._cluster(index, cluster, e0, e1, running)
            clusters.append((cluster.first_entry + e0 - first, e1 - e0, columns))
        self._flush()
        records = [
            ClusterRecord(
                entry,
                entries,
                [
                    ColumnRange(c.first_element, c.compression, [p.record() for p in c.pages])
                    for c in columns
                ],
            )
            for entry, entries, columns in clusters
        ]
        page_list = None
        length = 0
        if records:
            envelope = page_list_envelope(ntuple.header.checksum, records)
            stored = deflate(envelope, ntuple.metadata_compression)
            page_list = Locator(len(stored), self.sink.write_blob(stored, len(envelope)))
            length = len(envelope)
        footer = footer_envelope(
            ntuple.footer, self._extension(first), stop - first, len(records), length, page_list
        )
        stored = deflate(footer, ntuple.metadata_compression)
        footer_at = self.sink.write_blob(stored, len(footer))
        anchor = ntuple.anchor.placed(
            (header_at, len(ntuple.header_stored)), (footer_at, len(stored), len(footer))
        )
        return anchor.pack()

    def _cluster(
        self, index: int, cluster: ClusterRecord, e0: int, e1: int, running: list[int]
    ) -> list[_OutColumn]:
        """Entries ``e0``..``e1 - 1`` of a cluster: each column it lists, its pages written;
        ``running`` counts each column's elements written before."""
        columns = []
        for column, span in enumerate(self._spans(index, cluster, e0, e1)):
            count = span.stop - span.start
            if column < len(cluster.columns):
                source = cluster.columns[column]
                if source.suppressed:
                    columns.append(_OutColumn(None, 0))
                else:
                    lead = self.ntuple.leads[index][column]
                    zeros = max(0, min(span.stop, lead) - span.start)
                    out = _OutColumn(running[column] + zeros, source.compression)
                    paged = Span(
                        max(span.start, lead) - lead, max(span.stop, lead) - lead, span.base
                    )
                    out.pages = self._cut_column(index, column, source, paged)
                    columns.append(out)
            running[column] += count
        return columns

    def _extension(self, first: int) -> bytes:
        """The schema extension, deferred columns starting where the range makes them."""
        extension = bytearray(self.ntuple.footer.extension_frame)
        for column in self.schema.columns:
            at, per_entry = column.first_element_at, column.per_entry
            if column.deferred and at is not None and per_entry is not None:
                extension[at : at + 8] = i64(max(0, column.first_element - first * per_entry))
        return bytes(extension)

    # -- which elements of each column the range holds ------------------------------------

    def _spans(self, index: int, cluster: ClusterRecord, e0: int, e1: int) -> list[Span]:
        columns = self.schema.columns
        if e0 == 0 and e1 == cluster.entries:
            leads = self.ntuple.leads[index]
            counts = {
                (c.field, c.position): leads[c.id]
                + (cluster.columns[c.id].elements if c.id < len(cluster.columns) else 0)
                for c in columns
                if not self._suppressed(cluster, c.id)
            }
            whole = []
            for column in columns:
                count = counts.get((column.field, column.position))
                if count is None:
                    raise RecordError(f"{self._where}: a field has no active column in a cluster")
                whole.append(Span(0, count))
            return whole
        spans: list[Span | None] = [None] * len(columns)
        for top in self.schema.top:
            self._walk(index, cluster, top, e0, e1, spans)
        done = [span for span in spans if span is not None]
        if len(done) != len(spans):
            raise RecordError(f"{self._where}: a column whose elements no field accounts for")
        return done

    def _walk(
        self,
        index: int,
        cluster: ClusterRecord,
        field_id: int,
        i0: int,
        i1: int,
        spans: list[Span | None],
    ) -> None:
        item = self.schema.fields[field_id]
        i0, i1 = i0 * item.repetitions, i1 * item.repetitions
        active = [c for c in item.columns if not self._suppressed(cluster, c)]
        ranges = [(i0, i1)] * len(item.children)
        if active:
            lead = self.schema.columns[active[0]]
            if lead.codec.kind.index:
                low = self._offset(index, lead.id, i0 - 1) if i0 > 0 else 0
                high = low if i1 == i0 else self._offset(index, lead.id, i1 - 1)
                if high < low:
                    raise RecordError(f"{self._where}: an index column's offsets decrease")
                spans[lead.id] = Span(i0, i1, low)
                for other in active[1:]:
                    spans[other] = Span(low, high)
                ranges = [(low, high)] * len(item.children)
            elif lead.codec.kind.encoding is Encoding.SWITCH:
                bases, ranges = self._alternatives(index, lead.id, i0, i1, len(item.children))
                spans[lead.id] = Span(i0, i1, bases)
                for other in active[1:]:
                    spans[other] = Span(i0, i1)
            else:
                for other in active:
                    spans[other] = Span(i0, i1)
        by_position = {self.schema.columns[c].position: spans[c] for c in active}
        for column in item.columns:
            if column in active:
                continue
            counterpart = by_position.get(self.schema.columns[column].position)
            if counterpart is None:
                raise RecordError(f"{self._where}: field {item.record.name!r} has no active column")
            spans[column] = Span(counterpart.start, counterpart.stop)
        for child, (c0, c1) in zip(item.children, ranges, strict=True):
            self._walk(index, cluster, child, c0, c1, spans)

    @staticmethod
    def _suppressed(cluster: ClusterRecord, column: int) -> bool:
        return column < len(cluster.columns) and cluster.columns[column].suppressed

    def _alternatives(
        self, index: int, column: int, i0: int, i1: int, count: int
    ) -> tuple[dict[int, int], list[tuple[int, int]]]:
        """Per tag, the first item of that alternative in switch elements ``i0``..``i1 - 1``,
        and each alternative's items there (leading zeros are tag 0: no alternative)."""
        codec = self.schema.columns[column].codec
        lead = self.ntuple.leads[index][column]
        i0, i1 = max(i0, lead) - lead, max(i1, lead) - lead
        indices, tags = [], []
        for page, start, stop in self._page_slices(index, column, i0, i1):
            key = (index, column, page)
            found, tagged = codec.switches(self.pages.page(key), self.pages.record(key).elements)
            indices.append(found[start:stop])
            tags.append(tagged[start:stop])
        every = np.concatenate(indices) if indices else np.empty(0, np.int64)
        every_tag = np.concatenate(tags) if tags else np.empty(0, np.int64)
        if len(every_tag) and (every_tag.min() < 0 or every_tag.max() > count):
            raise RecordError(f"{self._where}: a variant's tag names no alternative")
        bases: dict[int, int] = {}
        ranges = []
        for alternative in range(count):
            items = every[every_tag == alternative + 1]
            if not len(items):
                ranges.append((0, 0))
                continue
            low = int(items[0])
            if not np.array_equal(items, np.arange(low, low + len(items))):
                raise RecordError(f"{self._where}: a variant's items are not in order")
            bases[alternative + 1] = low
            ranges.append((low, low + len(items)))
        return bases, ranges

    def _offset(self, index: int, column: int, element: int) -> int:
        """The value of index column ``column`` at ``element`` of cluster ``index`` (0 in its
        leading zeros)."""
        lead = self.ntuple.leads[index][column]
        if element < lead:
            return 0
        element -= lead
        ((page, start, _),) = self._page_slices(index, column, element, element + 1)
        return int(self.pages.offsets((index, column, page))[start])

    def _page_slices(
        self, index: int, column: int, start: int, stop: int
    ) -> list[tuple[int, int, int]]:
        """The pages of a column in a cluster holding elements ``start``..``stop - 1``: for
        each, its number and the part of it (counted from its first element)."""
        columns = self.ntuple.clusters[index].columns
        pages = columns[column].pages if column < len(columns) else []
        found = []
        first = 0
        for number, page in enumerate(pages):
            last = first + page.elements
            if first < stop and last > start and start < stop:
                found.append((number, max(start, first) - first, min(stop, last) - first))
            first = last
        if stop > first or start < 0:
            raise RecordError(
                f"{self._where}: elements {start}..{stop} of a column that has {first} in a cluster"
            )
        return found

    # -- pages ----------------------------------------------------------------------------

    def _cut_column(
        self, index: int, column: int, source: ColumnRange, span: Span
    ) -> list[_OutPage]:
        codec = self.schema.columns[column].codec
        if span.start == 0 and span.stop == source.elements and not span.rebased:
            slices = [(n, 0, page.elements) for n, page in enumerate(source.pages)]
        else:
            slices = self._page_slices(index, column, span.start, span.stop)
        out: list[_OutPage | None] = [None] * len(slices)
        reads = []
        for position, (number, start, stop) in enumerate(slices):
            record = source.pages[number]
            whole = start == 0 and stop == record.elements and not span.rebased
            raw = None if whole else self.pages.kept_page((index, column, number))
            if raw is None:
                reads.append(position)
            else:
                out[position] = self._encoded((index, column, number), raw, start, stop, span)
        records = [source.pages[slices[position][0]] for position in reads]
        for at, stored in self.pages.stored(records):
            position = reads[at]
            number, start, stop = slices[position]
            record = records[at]
            if start == 0 and stop == record.elements and not span.rebased:
                size = codec.size(record.elements)
                out[position] = _OutPage(
                    record.elements, record.checksum, record.locator.size, stored, size
                )
            else:
                raw = self.pages.page((index, column, number), stored)
                out[position] = self._encoded((index, column, number), raw, start, stop, span)
        pages = [page for page in out if page is not None]
        for page in pages:
            self._add(page)
        return pages

    def _encoded(self, key: PageKey, raw: bytes, start: int, stop: int, span: Span) -> _OutPage:
        """Elements ``start``..``stop - 1`` of an inflated page as a page of their own."""
        index, column, _ = key
        record = self.pages.record(key)
        codec = self.schema.columns[column].codec
        offsets = self.pages.offsets(key) if codec.kind.index else None
        cut = codec.cut(raw, record.elements, start, stop, span.base, offsets)
        data = deflate(cut, self.ntuple.clusters[index].columns[column].compression)
        size = len(data)
        if record.checksum:
            data += _CHECKSUM.pack(xxh3(data))
        return _OutPage(stop - start, record.checksum, size, data, len(cut))

    def _add(self, page: _OutPage) -> None:
        if self.ntuple.anchor.max_key_size and len(page.data) > self.ntuple.anchor.max_key_size:
            raise Unsupported(f"{self._where}: a page larger than a key may hold")
        if self._blob_size + len(page.data) > self.blob_bytes:
            self._flush()
        self._parts.append(page)
        self._blob_size += len(page.data)

    def _flush(self) -> None:
        if not self._parts:
            return
        data = b"".join(page.data for page in self._parts)
        objlen = sum(page.length + (8 if page.checksum else 0) for page in self._parts)
        position = self.sink.write_blob(data, objlen)
        for page in self._parts:
            page.position = position
            position += len(page.data)
            page.data = b""
        self._parts = []
        self._blob_size = 0

    @property
    def _where(self) -> str:
        return f"{self.ntuple.source.where}: RNTuple {self.ntuple.name!r}"
