"""The ROOT::RNTuple anchor: the record of an RNTuple's key, pointing at its header and footer.

Written by its class's own streamer: a byte count and the class version (2 from ROOT 6.34),
then big-endian fields (the format version as four u16: epoch, major, minor, patch; the header's
and the footer's position, stored size and length as u64; the largest key a blob may take), and
after them the XXH3-64 of those fields, also big-endian. Epoch 0 is RNTuple's pre-release
(``ROOT::Experimental::RNTuple``, ROOT before 6.34), which is not read here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from ess_split.format.buffer import BYTECOUNT_MASK, RecordError
from ess_split.format.walker import Unsupported
from ess_split.rntuple.binary import xxh3

__all__ = ["Anchor"]

_HEAD = struct.Struct(">IH")
_FIELDS = struct.Struct(">HHHHQQQQQQQ")
_CHECKSUM = struct.Struct(">Q")


@dataclass(frozen=True)
class Anchor:
    class_version: int
    version: tuple[int, int, int, int]
    seek_header: int
    nbytes_header: int
    len_header: int
    seek_footer: int
    nbytes_footer: int
    len_footer: int
    max_key_size: int

    @classmethod
    def parse(cls, record: bytes) -> Anchor:
        """The anchor whose record (what follows its key) is ``record``."""
        if len(record) < _HEAD.size:
            raise RecordError(f"an RNTuple anchor of {len(record)} bytes")
        count, class_version = _HEAD.unpack_from(record, 0)
        if not count & BYTECOUNT_MASK:
            raise RecordError("an RNTuple anchor without its byte count")
        size = (count & ~BYTECOUNT_MASK) - 2
        if size != _FIELDS.size:
            raise Unsupported(
                f"an RNTuple anchor of class version {class_version} with {size} bytes of "
                f"fields ({_FIELDS.size} are read here)"
            )
        end = _HEAD.size + size
        if len(record) < end + _CHECKSUM.size:
            raise RecordError("an RNTuple anchor ends before its checksum")
        (checksum,) = _CHECKSUM.unpack_from(record, end)
        if xxh3(record[_HEAD.size : end]) != checksum:
            raise RecordError("the RNTuple anchor fails its checksum")
        epoch, major, minor, patch, *numbers = _FIELDS.unpack_from(record, _HEAD.size)
        if epoch != 1:
            raise Unsupported(f"RNTuple format epoch {epoch} (only epoch 1, ROOT 6.34 on, is cut)")
        return cls(class_version, (epoch, major, minor, patch), *numbers)

    def placed(self, header: tuple[int, int], footer: tuple[int, int, int]) -> Anchor:
        """This anchor pointing at a header at ``header`` (position, stored size) and a footer
        at ``footer`` (position, stored size, length)."""
        return replace(
            self,
            seek_header=header[0],
            nbytes_header=header[1],
            seek_footer=footer[0],
            nbytes_footer=footer[1],
            len_footer=footer[2],
        )

    def pack(self) -> bytes:
        """The anchor's record, its checksum included."""
        fields = _FIELDS.pack(
            *self.version,
            self.seek_header,
            self.nbytes_header,
            self.len_header,
            self.seek_footer,
            self.nbytes_footer,
            self.len_footer,
            self.max_key_size,
        )
        head = _HEAD.pack(BYTECOUNT_MASK | (2 + len(fields)), self.class_version)
        return head + fields + _CHECKSUM.pack(xxh3(fields))
