"""Read ROOT's serialised data (TBufferFile's format) from bytes.

Numbers are big-endian. A ``TString`` is one length byte (255 then four bytes for longer
strings) and its characters. An object written with a byte count starts with four bytes
``count | BYTECOUNT_MASK`` (the bytes that follow it) and a two-byte version. Pointers to
objects are tagged (see ``walker``): ``NULL_TAG``, ``NEW_CLASS_TAG`` followed by a class name,
``CLASS_MASK | offset`` for a class seen before, or the offset of an object seen before, where
offsets are positions in the buffer (the key's header included) plus ``MAP_OFFSET``.
"""

from __future__ import annotations

import struct

__all__ = [
    "BYTECOUNT_MASK",
    "CLASS_MASK",
    "IS_REFERENCED",
    "MAP_OFFSET",
    "MEMBERWISE",
    "NEW_CLASS_TAG",
    "NULL_TAG",
    "Reader",
    "RecordError",
    "tstring",
]

BYTECOUNT_MASK = 0x40000000
BYTECOUNT_VMASK = 0x4000
CLASS_MASK = 0x80000000
NEW_CLASS_TAG = 0xFFFFFFFF
NULL_TAG = 0
MAP_OFFSET = 2
MEMBERWISE = 1 << 14
#: TObject::fBits: the object is referenced by a TRef, and a process id follows its bits.
IS_REFERENCED = 1 << 4

_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


class RecordError(ValueError):
    """Serialised data that does not read as ROOT wrote it (truncated or inconsistent)."""


class Reader:
    """A position in a byte string, reading ROOT's big-endian serialisation forwards."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def need(self, size: int) -> int:
        """The current position, after checking that ``size`` more bytes are there."""
        position = self.pos
        if size < 0 or position + size > self.end:
            raise RecordError(f"{size} bytes wanted at {position}, only {self.end - position} left")
        self.pos = position + size
        return position

    def skip(self, size: int) -> None:
        self.need(size)

    def bytes(self, size: int) -> bytes:
        position = self.need(size)
        return self.data[position : position + size]

    def u8(self) -> int:
        return int(_U8.unpack_from(self.data, self.need(1))[0])

    def i16(self) -> int:
        return int(_I16.unpack_from(self.data, self.need(2))[0])

    def u16(self) -> int:
        return int(_U16.unpack_from(self.data, self.need(2))[0])

    def i32(self) -> int:
        return int(_I32.unpack_from(self.data, self.need(4))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.data, self.need(4))[0])

    def i64(self) -> int:
        return int(_I64.unpack_from(self.data, self.need(8))[0])

    def f32(self) -> float:
        return float(_F32.unpack_from(self.data, self.need(4))[0])

    def f64(self) -> float:
        return float(_F64.unpack_from(self.data, self.need(8))[0])

    def peek_u32(self) -> int:
        if self.pos + 4 > self.end:
            raise RecordError(f"4 bytes wanted at {self.pos}, only {self.end - self.pos} left")
        return int(_U32.unpack_from(self.data, self.pos)[0])

    def tstring(self) -> str:
        length = self.u8()
        if length == 255:
            length = self.u32()
        return self.bytes(length).decode("utf-8", "surrogateescape")

    def cstring(self) -> str:
        """A NUL-terminated string (class names after a new-class tag)."""
        stop = self.data.find(b"\x00", self.pos, self.end)
        if stop < 0:
            raise RecordError(f"unterminated class name at {self.pos}")
        text = self.data[self.pos : stop].decode("utf-8", "surrogateescape")
        self.pos = stop + 1
        return text

    def bytecount(self) -> int | None:
        """The end of the object whose byte count starts here, or None if it has none."""
        count = self.peek_u32()
        if not count & BYTECOUNT_MASK or count == NEW_CLASS_TAG:
            return None
        self.pos += 4
        end = self.pos + (count & ~BYTECOUNT_MASK)
        if end > self.end:
            raise RecordError(
                f"an object at {self.pos - 4} claims to end at {end}, past {self.end}"
            )
        return end


def tstring(text: str | bytes) -> bytes:
    """``text`` serialised as a TString."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    if len(raw) < 255:
        return bytes((len(raw),)) + raw
    return b"\xff" + _U32.pack(len(raw)) + raw
