"""RNTuple pages: the elements of one column, decoded and cut by element, and encoded again the
way they were stored.

Elements are little-endian. The split encodings store all first bytes of a page's elements,
then all second bytes, and so on; index columns (a collection's end offsets, counted from the
start of the cluster) split-stored are delta encoded first (the first element as is, then each
one's difference to the one before), signed integers zigzag encoded (which a cut, working on
whole elements, keeps as it is). Bits (booleans, truncated and quantized reals) are packed, the
first element in the lowest bits. A switch element (a variant's) is a u64 index into the active
alternative's items, counted from the start of the cluster, and a u32 tag naming it.

Consumes a page's stored bytes (compressed with ROOT's blocks unless their size is the page's
own) and produces the stored bytes of a slice of its elements, with index values rebased.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ess_split.format.buffer import RecordError
from ess_split.format.codecs import Compression, compress, inflate
from ess_split.format.walker import Unsupported

__all__ = ["ColumnType", "Encoding", "PageCodec", "column_type", "deflate"]

Offsets = npt.NDArray[np.int64]


class Encoding(enum.Enum):
    PLAIN = "plain"
    SPLIT = "split"
    DELTA_SPLIT = "delta+split"
    ZIGZAG_SPLIT = "zigzag+split"
    PACKED = "bit-packed"
    SWITCH = "switch"


@dataclass(frozen=True)
class ColumnType:
    name: str
    encoding: Encoding
    #: Bits per element; None where the column record says (truncated and quantized reals).
    bits: int | None
    index: bool = False


_P, _S, _D, _Z = Encoding.PLAIN, Encoding.SPLIT, Encoding.DELTA_SPLIT, Encoding.ZIGZAG_SPLIT
_TYPES = {
    0x00: ColumnType("Bit", Encoding.PACKED, 1),
    0x01: ColumnType("Byte", _P, 8),
    0x02: ColumnType("Char", _P, 8),
    0x03: ColumnType("Int8", _P, 8),
    0x04: ColumnType("UInt8", _P, 8),
    0x05: ColumnType("Int16", _P, 16),
    0x06: ColumnType("UInt16", _P, 16),
    0x07: ColumnType("Int32", _P, 32),
    0x08: ColumnType("UInt32", _P, 32),
    0x09: ColumnType("Int64", _P, 64),
    0x0A: ColumnType("UInt64", _P, 64),
    0x0B: ColumnType("Real16", _P, 16),
    0x0C: ColumnType("Real32", _P, 32),
    0x0D: ColumnType("Real64", _P, 64),
    0x0E: ColumnType("Index32", _P, 32, index=True),
    0x0F: ColumnType("Index64", _P, 64, index=True),
    0x10: ColumnType("Switch", Encoding.SWITCH, 96),
    0x11: ColumnType("SplitInt16", _Z, 16),
    0x12: ColumnType("SplitUInt16", _S, 16),
    0x13: ColumnType("SplitInt32", _Z, 32),
    0x14: ColumnType("SplitUInt32", _S, 32),
    0x15: ColumnType("SplitInt64", _Z, 64),
    0x16: ColumnType("SplitUInt64", _S, 64),
    0x17: ColumnType("SplitReal16", _S, 16),
    0x18: ColumnType("SplitReal32", _S, 32),
    0x19: ColumnType("SplitReal64", _S, 64),
    0x1A: ColumnType("SplitIndex32", _D, 32, index=True),
    0x1B: ColumnType("SplitIndex64", _D, 64, index=True),
    0x1C: ColumnType("Real32Trunc", Encoding.PACKED, None),
    0x1D: ColumnType("Real32Quant", Encoding.PACKED, None),
}
_SPLIT = frozenset({_S, _D, _Z})
_SWITCH_INDEX = 8


def column_type(code: int, bits: int) -> ColumnType:
    """The column type ``code`` with ``bits`` bits on storage; ``Unsupported`` when unknown."""
    known = _TYPES.get(code)
    if known is None:
        raise Unsupported(f"an RNTuple column of type {code:#x}, which this version does not read")
    expected = known.bits
    if (expected is None and not 1 <= bits <= 32) or (expected is not None and bits != expected):
        raise RecordError(f"an RNTuple column of type {known.name} with {bits} bits")
    return known


class PageCodec:
    """Pages of one column: its type and bits per element."""

    def __init__(self, kind: ColumnType, bits: int) -> None:
        self.kind = kind
        self.bits = bits
        self.width = bits // 8

    def size(self, elements: int) -> int:
        """Bytes of a page of ``elements`` elements, uncompressed."""
        return (elements * self.bits + 7) // 8

    def inflate(self, stored: bytes, elements: int) -> bytes:
        return inflate(stored, self.size(elements))

    def offsets(self, page: bytes, elements: int) -> Offsets:
        """An index page's values (end offsets counted from the start of the cluster)."""
        values = self._rows(page, elements).copy().view(f"<u{self.width}")
        result = values.reshape(elements).astype(np.int64)
        if self.kind.encoding is Encoding.DELTA_SPLIT:
            result = np.cumsum(result)
        return result

    def switches(self, page: bytes, elements: int) -> tuple[Offsets, Offsets]:
        """A switch page's indices (counted from the start of the cluster) and tags."""
        rows = self._rows(page, elements)
        index = rows[:, :_SWITCH_INDEX].copy().view("<u8").reshape(elements).astype(np.int64)
        tags = rows[:, _SWITCH_INDEX:].copy().view("<u4").reshape(elements).astype(np.int64)
        return index, tags

    def cut(
        self,
        page: bytes,
        elements: int,
        start: int,
        stop: int,
        base: int | Mapping[int, int],
        offsets: Offsets | None = None,
    ) -> bytes:
        """Elements ``start``..``stop - 1`` of the page (uncompressed) as a page of their own;
        index values (``offsets``, when already decoded) lowered by ``base`` (for a switch
        column, per tag)."""
        kind = self.kind
        if kind.encoding is Encoding.PACKED:
            bits = np.unpackbits(np.frombuffer(page, np.uint8), bitorder="little")
            kept = bits[start * self.bits : stop * self.bits]
            return bytes(np.packbits(kept, bitorder="little").tobytes())
        if kind.index:
            assert isinstance(base, int)
            if offsets is None:
                offsets = self.offsets(page, elements)
            values = offsets[start:stop] - base
            if len(values) and values.min() < 0:
                raise RecordError("an RNTuple index column's offsets decrease")
            if kind.encoding is Encoding.DELTA_SPLIT and len(values):
                values[1:] = np.diff(values)
            rows = values.astype(f"<u{self.width}").view(np.uint8).reshape(-1, self.width)
            return self._stored(rows)
        if kind.encoding is Encoding.SWITCH:
            assert not isinstance(base, int)
            index, tags = self.switches(page, elements)
            index, tags = index[start:stop], tags[start:stop]
            lowered = index - np.array([base.get(int(tag), 0) for tag in tags], np.int64)
            rows = np.empty((stop - start, 12), np.uint8)
            rows[:, :_SWITCH_INDEX] = lowered.astype("<u8").view(np.uint8).reshape(-1, 8)
            rows[:, _SWITCH_INDEX:] = tags.astype("<u4").view(np.uint8).reshape(-1, 4)
            return self._stored(rows)
        return self._stored(self._rows(page, elements)[start:stop])

    def _rows(self, page: bytes, elements: int) -> npt.NDArray[np.uint8]:
        """The page's elements, one row of bytes each."""
        if len(page) != elements * self.width:
            raise RecordError(
                f"a page of {elements} {self.kind.name} elements has {len(page)} bytes"
            )
        data = np.frombuffer(page, np.uint8)
        if self.kind.encoding in _SPLIT:
            return data.reshape(self.width, elements).T
        return data.reshape(elements, self.width)

    def _stored(self, rows: npt.NDArray[np.uint8]) -> bytes:
        if self.kind.encoding in _SPLIT:
            return bytes(np.ascontiguousarray(rows.T).tobytes())
        return bytes(np.ascontiguousarray(rows).tobytes())


def deflate(page: bytes, settings: int) -> bytes:
    """``page`` stored with ROOT's compression ``settings`` (as is when that does not shrink
    it)."""
    if settings == 0:
        return page
    try:
        compression = Compression.from_code(settings)
    except ValueError as exc:
        raise RecordError(f"RNTuple compression settings {settings}: {exc}") from exc
    return compress(page, compression)
