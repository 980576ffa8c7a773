"""RNTuples cut into ranges, as the range files' writer drives them.

``read_ntuple`` reads an RNTuple's anchor, header and footer from the source file;
``NTuple.cut`` writes the pages holding a range's entries and their envelopes through a
``BlobSink`` and returns the range file's anchor.
"""

from __future__ import annotations

from typing import Protocol

from ess_split.format.keys import Key
from ess_split.rntuple import ntuple
from ess_split.sourcefile import SourceFile

__all__ = ["BlobSink", "NTuple", "read_ntuple"]


class BlobSink(Protocol):
    """Where a range file's RNTuple data goes."""

    def write_blob(self, data: bytes, objlen: int) -> int:
        """Append a key of class ``RBlob`` holding ``data`` (``objlen`` bytes uncompressed);
        return the file position of ``data``'s first byte."""
        ...


class NTuple(Protocol):
    """An RNTuple of the source file."""

    @property
    def entries(self) -> int: ...

    def cut(self, first: int, stop: int, sink: BlobSink) -> bytes:
        """Write entries ``first``..``stop - 1`` through ``sink``; return the anchor's record
        (what follows its key's header)."""
        ...


def read_ntuple(source: SourceFile, key: Key) -> NTuple:
    """The RNTuple whose anchor is ``key``; raises ``Unsupported`` when it cannot be cut and
    ``RecordError`` when its bytes are inconsistent."""
    return ntuple.read_ntuple(source, key)
