"""An RNTuple's envelopes: the header and footer read, page lists read and written, and the
footer of a range written.

The header holds the schema (fields, columns, alias columns, extra type information); it is
carried into range files as stored, so only what a cut needs is read from it. The footer holds
the schema's extension (kept as stored), the cluster groups (each with its page list envelope)
and, from format 1.0.1.0 on, the linked attribute sets. A page list holds, per cluster, its
entries and, per column, its pages (element count, checksum flag, locator), its first element
and its compression, or a mark that the column is suppressed in that cluster.

What these records hold beyond what is read here (a later format's additions) makes a cut
refuse (``Unsupported``) rather than write what it does not understand; inconsistent bytes raise
``RecordError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ess_split.format.buffer import RecordError
from ess_split.format.walker import Unsupported
from ess_split.rntuple.binary import (
    ENVELOPE_FOOTER,
    ENVELOPE_HEADER,
    ENVELOPE_PAGE_LIST,
    Cursor,
    Locator,
    envelope,
    i32,
    i64,
    list_frame,
    open_envelope,
    record_frame,
    u32,
    u64,
)

__all__ = [
    "ClusterGroup",
    "ClusterRecord",
    "ColumnRange",
    "ColumnRecord",
    "FieldRecord",
    "Footer",
    "Header",
    "PageRecord",
    "SchemaPart",
    "footer_envelope",
    "page_list_envelope",
    "parse_footer",
    "parse_header",
    "parse_page_list",
]

FIELD_REPETITIVE = 0x01
FIELD_PROJECTED = 0x02
FIELD_CHECKSUM = 0x04
COLUMN_DEFERRED = 0x01
COLUMN_RANGE = 0x02
_SHARDED = 0x01
_SUPPRESSED = -(2**63)
_FLAGS_MORE = 1 << 63


@dataclass(frozen=True)
class FieldRecord:
    """A field: ``parent`` is the parent's on-disk id (its own for a top-level field)."""

    parent: int
    role: int
    flags: int
    name: str
    type_name: str
    repetitions: int


@dataclass(frozen=True)
class ColumnRecord:
    """A physical column; ``first_element_at`` is where its first element index is written in
    the footer's schema extension frame (for a deferred column there)."""

    type_code: int
    bits: int
    field: int
    flags: int
    representation: int
    first_element: int
    first_element_at: int | None = None


@dataclass(frozen=True)
class SchemaPart:
    """Fields and physical columns of the header, or of the footer's schema extension."""

    fields: list[FieldRecord]
    columns: list[ColumnRecord]


@dataclass(frozen=True)
class Header:
    name: str
    feature_flags: list[int]
    schema: SchemaPart
    checksum: int


@dataclass(frozen=True)
class ClusterGroup:
    min_entry: int
    entry_span: int
    clusters: int
    page_list_length: int
    page_list: Locator


@dataclass(frozen=True)
class Footer:
    feature_flags: list[int]
    header_checksum: int
    #: The schema extension record frame, as stored.
    extension_frame: bytes
    extension: SchemaPart
    groups: list[ClusterGroup]
    #: Linked attribute sets listed (None: the footer predates them).
    attribute_sets: int | None


@dataclass(frozen=True)
class PageRecord:
    elements: int
    checksum: bool
    locator: Locator


@dataclass(frozen=True)
class ColumnRange:
    """A column's pages in one cluster; ``first_element`` is None when it is suppressed."""

    first_element: int | None
    compression: int
    pages: list[PageRecord]

    @property
    def suppressed(self) -> bool:
        return self.first_element is None

    @property
    def elements(self) -> int:
        return sum(page.elements for page in self.pages)


@dataclass(frozen=True)
class ClusterRecord:
    first_entry: int
    entries: int
    columns: list[ColumnRange]

    @property
    def stop(self) -> int:
        return self.first_entry + self.entries


def _feature_flags(cursor: Cursor) -> list[int]:
    flags = []
    while True:
        value = cursor.u64()
        flags.append(value & ~_FLAGS_MORE)
        if not value & _FLAGS_MORE:
            return flags


def _field(record: Cursor) -> FieldRecord:
    record.u32()  # field version
    record.u32()  # type version
    parent = record.u32()
    role = record.u16()
    flags = record.u16()
    name = record.string()
    type_name = record.string()
    record.string()  # type alias
    record.string()  # description
    repetitions = record.u64() if flags & FIELD_REPETITIVE else 0
    return FieldRecord(parent, role, flags, name, type_name, repetitions)


def _column(record: Cursor, base: int | None) -> ColumnRecord:
    type_code = record.u16()
    bits = record.u16()
    field = record.u32()
    flags = record.u16()
    representation = record.u16()
    first, at = 0, None
    if flags & COLUMN_DEFERRED:
        at = None if base is None else record.pos - base
        first = record.i64()
    return ColumnRecord(type_code, bits, field, flags, representation, first, at)


def _schema(cursor: Cursor, base: int | None = None) -> SchemaPart:
    """A schema description; ``base`` is where the frame holding it starts (the footer's
    extension), for ``ColumnRecord.first_element_at``."""
    fields_frame, n_fields = cursor.list()
    fields = [_field(fields_frame.record()) for _ in range(n_fields)]
    columns_frame, n_columns = cursor.list()
    columns = [_column(columns_frame.record(), base) for _ in range(n_columns)]
    cursor.list()  # alias columns: no pages of their own
    cursor.list()  # extra type information
    return SchemaPart(fields, columns)


def parse_header(data: bytes) -> Header:
    """The header envelope ``data`` (uncompressed)."""
    cursor, checksum = open_envelope(data, ENVELOPE_HEADER, "header")
    flags = _feature_flags(cursor)
    name = cursor.string()
    cursor.string()  # description
    cursor.string()  # writer
    return Header(name, flags, _schema(cursor), checksum)


def parse_footer(data: bytes) -> Footer:
    """The footer envelope ``data`` (uncompressed)."""
    cursor, _ = open_envelope(data, ENVELOPE_FOOTER, "footer")
    flags = _feature_flags(cursor)
    header_checksum = cursor.u64()
    start = cursor.pos
    extension_cursor = cursor.record()
    extension_frame = data[start : cursor.pos]
    extension = _schema(extension_cursor, start) if extension_cursor.left else SchemaPart([], [])
    groups_frame, n_groups = cursor.list()
    groups = []
    for _ in range(n_groups):
        record = groups_frame.record()
        min_entry, span, clusters = record.u64(), record.u64(), record.u32()
        length = record.u64()
        groups.append(ClusterGroup(min_entry, span, clusters, length, record.locator()))
        _known(record, "a cluster group")
    attribute_sets = None
    if cursor.left:
        _, attribute_sets = cursor.list()
    _known(cursor, "the footer")
    return Footer(flags, header_checksum, extension_frame, extension, groups, attribute_sets)


def _known(cursor: Cursor, what: str) -> None:
    if cursor.left:
        raise Unsupported(
            f"{what} of the RNTuple holds {cursor.left} bytes that this version does not read"
        )


def parse_page_list(data: bytes) -> tuple[int, list[ClusterRecord]]:
    """The header checksum and the clusters of the page list envelope ``data``."""
    cursor, _ = open_envelope(data, ENVELOPE_PAGE_LIST, "page list")
    header_checksum = cursor.u64()
    summaries_frame, n_summaries = cursor.list()
    summaries = []
    for _ in range(n_summaries):
        record = summaries_frame.record()
        first, packed = record.u64(), record.u64()
        if packed >> 56 & _SHARDED:
            raise Unsupported("a sharded RNTuple cluster")
        summaries.append((first, packed & ((1 << 56) - 1)))
        _known(record, "a cluster summary")
    clusters_frame, n_clusters = cursor.list()
    if n_clusters != n_summaries:
        raise RecordError(f"a page list has {n_summaries} cluster summaries, {n_clusters} clusters")
    clusters = []
    for first, entries in summaries:
        columns_frame, n_columns = clusters_frame.list()
        columns = [_column_range(columns_frame) for _ in range(n_columns)]
        clusters.append(ClusterRecord(first, entries, columns))
    _known(cursor, "a page list")
    return header_checksum, clusters


def _column_range(columns_frame: Cursor) -> ColumnRange:
    pages_frame, n_pages = columns_frame.list()
    pages = []
    for _ in range(n_pages):
        elements = pages_frame.i32()
        pages.append(PageRecord(abs(elements), elements < 0, pages_frame.locator()))
    first = pages_frame.i64()
    if first < 0:
        if pages:
            raise RecordError("a suppressed RNTuple column has pages")
        _known(pages_frame, "a column's page list")
        return ColumnRange(None, 0, [])
    compression = pages_frame.u32()
    _known(pages_frame, "a column's page list")
    return ColumnRange(first, compression, pages)


def page_list_envelope(header_checksum: int, clusters: list[ClusterRecord]) -> bytes:
    summaries = [record_frame(u64(c.first_entry) + u64(c.entries)) for c in clusters]
    locations = []
    for cluster in clusters:
        columns = []
        for column in cluster.columns:
            if column.first_element is None:
                columns.append(_inner_list(0, i64(_SUPPRESSED)))
                continue
            parts = [
                i32(-p.elements if p.checksum else p.elements) + p.locator.pack()
                for p in column.pages
            ]
            tail = i64(column.first_element) + u32(column.compression)
            columns.append(_inner_list(len(parts), b"".join(parts) + tail))
        locations.append(list_frame(columns))
    payload = u64(header_checksum) + list_frame(summaries) + list_frame(locations)
    return envelope(ENVELOPE_PAGE_LIST, payload)


def _inner_list(count: int, payload: bytes) -> bytes:
    """A list frame of ``count`` pages whose size includes what follows the pages."""
    return i64(-(12 + len(payload))) + u32(count) + payload


def footer_envelope(
    source: Footer,
    extension_frame: bytes,
    entries: int,
    clusters: int,
    page_list_length: int,
    page_list: Locator | None,
) -> bytes:
    """The footer of a range of ``entries`` entries in ``clusters`` clusters: a schema
    extension, one cluster group (none without clusters) and the source's (empty) list of
    linked attribute sets, if it has one."""
    groups = []
    if page_list is not None:
        groups.append(
            record_frame(
                u64(0) + u64(entries) + u32(clusters) + u64(page_list_length) + page_list.pack()
            )
        )
    payload = u64(0) + u64(source.header_checksum) + extension_frame + list_frame(groups)
    if source.attribute_sets is not None:
        payload += list_frame([])
    return envelope(ENVELOPE_FOOTER, payload)
