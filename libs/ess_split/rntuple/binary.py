"""The RNTuple format's building blocks: little-endian numbers, strings, frames, locators and
envelopes.

Unlike the rest of a ROOT file, RNTuple metadata is little-endian. A string is a u32 length and
its bytes. A record frame starts with its size (a positive i64, the size included), a list frame
with minus its size and a u32 item count; a reader continues at a frame's end whatever it read
inside, so frames may grow in later format versions. A locator is a byte range of the file:
a positive i32 size and a u64 offset, or (a negative i32 head) a "large" locator with a u64 size
and a u64 offset. An envelope is a u64 holding its type (low 16 bits) and its length (the upper
48 bits, the checksum included), a payload, and the XXH3-64 of everything before the checksum.

Consumes and produces bytes; inconsistent bytes raise ``RecordError``, locators that are not
file positions ``Unsupported``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from ess_split.format.buffer import RecordError
from ess_split.format.walker import Unsupported

__all__ = [
    "ENVELOPE_FOOTER",
    "ENVELOPE_HEADER",
    "ENVELOPE_PAGE_LIST",
    "Cursor",
    "Locator",
    "envelope",
    "i32",
    "i64",
    "list_frame",
    "open_envelope",
    "record_frame",
    "u16",
    "u32",
    "u64",
    "xxh3",
]

ENVELOPE_HEADER = 0x01
ENVELOPE_FOOTER = 0x02
ENVELOPE_PAGE_LIST = 0x03

_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_INT32_MAX = 2**31 - 1
_LARGE_LOCATOR = 0x01
_LARGE_LOCATOR_SIZE = 4 + 16


def xxh3(data: bytes | memoryview) -> int:
    return int(xxhash.xxh3_64_intdigest(data))


def u16(value: int) -> bytes:
    return _U16.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def i32(value: int) -> bytes:
    return _I32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def i64(value: int) -> bytes:
    return _I64.pack(value)


class Cursor:
    """A position in ``data`` that reads forward, never past ``end``."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def left(self) -> int:
        return self.end - self.pos

    def _take(self, size: int) -> int:
        position = self.pos
        if size < 0 or position + size > self.end:
            raise RecordError(
                f"{size} bytes wanted at {position} of RNTuple metadata, {self.end - position} left"
            )
        self.pos = position + size
        return position

    def raw(self, size: int) -> bytes:
        position = self._take(size)
        return self.data[position : position + size]

    def u16(self) -> int:
        return int(_U16.unpack_from(self.data, self._take(2))[0])

    def i32(self) -> int:
        return int(_I32.unpack_from(self.data, self._take(4))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.data, self._take(4))[0])

    def i64(self) -> int:
        return int(_I64.unpack_from(self.data, self._take(8))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self.data, self._take(8))[0])

    def string(self) -> str:
        return self.raw(self.u32()).decode("utf-8", "surrogateescape")

    def record(self) -> Cursor:
        """The record frame starting here, as a cursor over its payload; this cursor moves past
        it."""
        start = self.pos
        size = self.i64()
        if size < 0:
            raise RecordError(f"a list frame at {start} where a record frame belongs")
        return self._frame(start, size)

    def list(self) -> tuple[Cursor, int]:
        """The list frame starting here (a cursor over its items, and how many); this cursor
        moves past it."""
        start = self.pos
        size = self.i64()
        if size >= 0:
            raise RecordError(f"a record frame at {start} where a list frame belongs")
        count = self.u32()
        return self._frame(start, -size), count

    def _frame(self, start: int, size: int) -> Cursor:
        end = start + size
        if end < self.pos or end > self.end:
            raise RecordError(f"a frame at {start} of {size} bytes overruns its container")
        inner = Cursor(self.data, self.pos, end)
        self.pos = end
        return inner

    def locator(self) -> Locator:
        head = self.i32()
        if head >= 0:
            return Locator(head, self.u64())
        head = -head
        kind = head >> 24
        size = (head & 0xFFFF) - 4
        if kind != _LARGE_LOCATOR:
            raise Unsupported(f"an RNTuple locator of type {kind}, which is not a file position")
        payload = Cursor(self.data, self._take(size), self.pos)
        return Locator(payload.u64(), payload.u64())


@dataclass(frozen=True)
class Locator:
    """``size`` bytes at ``offset`` of the file."""

    size: int
    offset: int

    def pack(self) -> bytes:
        if self.size <= _INT32_MAX:
            return i32(self.size) + u64(self.offset)
        head = -(_LARGE_LOCATOR_SIZE | _LARGE_LOCATOR << 24)
        return i32(head) + u64(self.size) + u64(self.offset)


def record_frame(payload: bytes) -> bytes:
    return i64(8 + len(payload)) + payload


def list_frame(items: list[bytes]) -> bytes:
    payload = b"".join(items)
    return i64(-(12 + len(payload))) + u32(len(items)) + payload


def envelope(kind: int, payload: bytes) -> bytes:
    """An envelope of type ``kind`` around ``payload``, its checksum appended."""
    length = 8 + len(payload) + 8
    body = u64(kind | length << 16) + payload
    return body + u64(xxh3(body))


def open_envelope(data: bytes, kind: int, name: str) -> tuple[Cursor, int]:
    """A cursor over the payload of the envelope ``data`` (uncompressed), and its checksum;
    raises ``RecordError`` when it is not an envelope of type ``kind`` or fails its checksum."""
    if len(data) < 16:
        raise RecordError(f"the RNTuple {name} is {len(data)} bytes, too short for an envelope")
    (head,) = _U64.unpack_from(data, 0)
    if head & 0xFFFF != kind:
        raise RecordError(f"the RNTuple {name} is an envelope of type {head & 0xFFFF}, not {kind}")
    length = head >> 16
    if not 16 <= length <= len(data):
        raise RecordError(f"the RNTuple {name} says it is {length} bytes, it has {len(data)}")
    (checksum,) = _U64.unpack_from(data, length - 8)
    if xxh3(memoryview(data)[: length - 8]) != checksum:
        raise RecordError(f"the RNTuple {name} fails its checksum")
    return Cursor(data, 8, length - 8), checksum
