"""An RNTuple of a source file, read to be cut into ranges.

``read_ntuple`` reads the anchor, the header, the footer and every page list (checksums
verified) and checks that the clusters follow one another. ``NTupleFile`` holds them, with the
schema, the leading zeros of deferred columns in each cluster (``leads``) and the store of its
pages; ``NTupleFile.cut`` writes a range (``cutter``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ess_split.format.buffer import RecordError
from ess_split.format.codecs import inflate
from ess_split.format.keys import Key
from ess_split.format.walker import Unsupported
from ess_split.rntuple.anchor import Anchor
from ess_split.rntuple.cutter import RangeCut
from ess_split.rntuple.metadata import (
    ClusterRecord,
    Footer,
    Header,
    parse_footer,
    parse_header,
    parse_page_list,
)
from ess_split.rntuple.reading import PageStore, stored_size
from ess_split.rntuple.schema import Schema
from ess_split.sourcefile import SourceFile

if TYPE_CHECKING:
    from ess_split.rntuple import BlobSink

__all__ = ["NTupleFile", "read_ntuple"]

ANCHOR_CLASS = "ROOT::RNTuple"
_ALGORITHMS = {b"ZL": 1, b"XZ": 2, b"L4": 4, b"ZS": 5}


class NTupleFile:
    """An RNTuple of a source file; see the module's docstring."""

    def __init__(
        self,
        source: SourceFile,
        name: str,
        anchor: Anchor,
        header_stored: bytes,
        header: Header,
        footer: Footer,
        clusters: list[ClusterRecord],
        metadata_compression: int,
    ) -> None:
        self.source = source
        self.name = name
        self.anchor = anchor
        self.header_stored = header_stored
        self.header = header
        self.footer = footer
        self.schema = Schema(header.schema, footer.extension)
        self.clusters = clusters
        self.metadata_compression = metadata_compression
        self.pages = PageStore(source.read, self.schema, clusters, f"{source.where}: {name!r}")
        self.leads = [self._leads(cluster) for cluster in clusters]

    def _leads(self, cluster: ClusterRecord) -> list[int]:
        """Per column, the zeros that start it in ``cluster`` (elements of a deferred column
        that no page holds); a column the cluster does not list (its field was added later)
        is zeros throughout, or empty inside a collection."""
        columns = self.schema.columns
        listed = len(cluster.columns)
        if not self.schema.header_columns <= listed <= len(columns):
            raise RecordError(
                f"RNTuple {self.name!r}: a cluster lists {listed} of its {len(columns)} columns"
            )
        leads = []
        for column in columns:
            per_entry = column.per_entry
            if column.id >= listed:
                if per_entry is not None and not column.deferred:
                    raise RecordError(f"RNTuple {self.name!r}: a cluster lacks a column")
                leads.append(0 if per_entry is None else cluster.entries * per_entry)
                continue
            first = cluster.columns[column.id].first_element
            if first is None or not column.deferred:
                leads.append(0)
                continue
            assert per_entry is not None
            lead = first - cluster.first_entry * per_entry
            if not 0 <= lead <= cluster.entries * per_entry:
                raise RecordError(
                    f"RNTuple {self.name!r}: a deferred column starts at element {first} in a "
                    f"cluster of entries {cluster.first_entry}..{cluster.stop}"
                )
            leads.append(lead)
        return leads

    @property
    def entries(self) -> int:
        return self.clusters[-1].stop if self.clusters else 0

    def cut(self, first: int, stop: int, sink: BlobSink) -> bytes:
        """Write entries ``first``..``stop - 1`` through ``sink``; return the anchor's record."""
        if not 0 <= first <= stop <= self.entries:
            raise ValueError(f"entries {first}..{stop} of an RNTuple of {self.entries}")
        return RangeCut(self, sink).write(first, stop)


def read_ntuple(source: SourceFile, key: Key) -> NTupleFile:
    """The RNTuple whose anchor is ``key``; see the module's docstring."""
    name = key.name
    if key.classname != ANCHOR_CLASS:
        raise Unsupported(f"{key.classname}, RNTuple's pre-release format (ROOT before 6.34)")
    anchor = Anchor.parse(source.payload(key))

    def envelope(position: int, size: int, length: int, what: str) -> tuple[bytes, bytes]:
        if anchor.max_key_size and size > anchor.max_key_size:
            raise Unsupported(f"RNTuple {name!r}: its {what} is stored in several keys")
        stored = source.read(position, position + size)
        return stored, inflate(stored, length)

    header_stored, header_data = envelope(
        anchor.seek_header, anchor.nbytes_header, anchor.len_header, "header"
    )
    header = parse_header(header_data)
    footer_stored, footer_data = envelope(
        anchor.seek_footer, anchor.nbytes_footer, anchor.len_footer, "footer"
    )
    footer = parse_footer(footer_data)
    if any(header.feature_flags) or any(footer.feature_flags):
        raise Unsupported(f"RNTuple {name!r} uses format features (flags) not read here")
    if footer.header_checksum != header.checksum:
        raise RecordError(f"RNTuple {name!r}: its footer belongs to another header")
    if footer.attribute_sets:
        raise Unsupported(f"RNTuple {name!r} links attribute sets")
    clusters: list[ClusterRecord] = []
    for group in footer.groups:
        locator = group.page_list
        _, data = envelope(locator.offset, locator.size, group.page_list_length, "page list")
        checksum, found = parse_page_list(data)
        if checksum != header.checksum:
            raise RecordError(f"RNTuple {name!r}: a page list belongs to another header")
        if len(found) != group.clusters:
            raise RecordError(
                f"RNTuple {name!r}: a cluster group of {group.clusters} clusters lists {len(found)}"
            )
        clusters.extend(found)
    clusters.sort(key=lambda cluster: cluster.first_entry)
    entry = 0
    for cluster in clusters:
        if cluster.first_entry != entry:
            raise RecordError(
                f"RNTuple {name!r}: a cluster starts at entry "
                f"{cluster.first_entry}, the one before ends at {entry}"
            )
        entry = cluster.stop
        for column in cluster.columns:
            for page in column.pages:
                if anchor.max_key_size and stored_size(page) > anchor.max_key_size:
                    raise Unsupported(f"RNTuple {name!r}: a page is stored in several keys")
    compression = _metadata_compression(footer_stored, anchor.len_footer, clusters)
    return NTupleFile(source, name, anchor, header_stored, header, footer, clusters, compression)


def _metadata_compression(stored: bytes, length: int, clusters: list[ClusterRecord]) -> int:
    """The compression settings of the source's footer: none when stored as is, else its
    algorithm at the level of the pages' settings (level 1 if those use another)."""
    if len(stored) == length:
        return 0
    algorithm = _ALGORITHMS.get(stored[:2])
    if algorithm is None:
        return 0
    for cluster in clusters:
        for column in cluster.columns:
            if not column.suppressed and column.compression // 100 == algorithm:
                return column.compression
    return 100 * algorithm + 1
