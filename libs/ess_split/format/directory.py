"""A ROOT file's skeleton: its header, its directories, their lists of keys, its free segments.

The header (100 bytes at the start) says where the top directory, the streamers and the free
segments are. The top directory's record sits at ``fBEGIN``: a key of class ``TFile``, the
file's name and title as TStrings, then the directory itself. A subdirectory's record is a key
of class ``TDirectory`` followed by the directory alone. A directory says where its list of
keys is: one record holding the count and every key header of the directory. The free-segments
record lists the gaps a writer may fill; a fresh file has one, from its end onwards.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ess_split.format.buffer import Reader, RecordError, tstring
from ess_split.format.keys import BIG_FILE, Key, listed_length, parse_key

__all__ = [
    "BEGIN",
    "DIRECTORY_SIZE",
    "DirectoryRecord",
    "FileHeader",
    "free_segments",
    "keys_list",
    "new_uuid",
    "parse_keys_list",
    "top_directory_payload",
]

BEGIN = 100
_MAGIC = b"root"
_HEADER_START = struct.Struct(">4sii")
_HEADER_SMALL = struct.Struct(">iiiiiBiii")
_HEADER_BIG = struct.Struct(">qqiiiBiqi")
_DIR_START = struct.Struct(">hIIii")
_UUID_VERSION = 1
_DIRECTORY_VERSION = 5
_FREE_SMALL = struct.Struct(">hii")
_FREE_BIG = struct.Struct(">hqq")
#: Bytes of a small directory record (big ones take the 12 spare bytes of the small layout).
DIRECTORY_SIZE = 60


@dataclass(frozen=True)
class FileHeader:
    """The file header's fields (``version`` without the 1,000,000 of a big file)."""

    version: int
    begin: int
    end: int
    seek_free: int
    nbytes_free: int
    nfree: int
    nbytes_name: int
    units: int
    compress: int
    seek_info: int
    nbytes_info: int
    uuid: bytes

    @classmethod
    def parse(cls, data: bytes) -> FileHeader:
        if len(data) < _HEADER_START.size or data[:4] != _MAGIC:
            raise RecordError("the file does not start with ROOT's magic bytes 'root'")
        _, version, begin = _HEADER_START.unpack_from(data, 0)
        big = version >= 1_000_000
        layout = _HEADER_BIG if big else _HEADER_SMALL
        position = _HEADER_START.size
        if len(data) < position + layout.size + 18:
            raise RecordError("the file header is truncated")
        end, seek_free, nbytes_free, nfree, nbytes_name, units, compress, seek_info, nbytes_info = (
            layout.unpack_from(data, position)
        )
        uuid_bytes = bytes(data[position + layout.size : position + layout.size + 18])
        return cls(
            version % 1_000_000,
            begin,
            end,
            seek_free,
            nbytes_free,
            nfree,
            nbytes_name,
            units,
            compress,
            seek_info,
            nbytes_info,
            uuid_bytes,
        )

    def pack(self) -> bytes:
        big = self.end > BIG_FILE or self.seek_free > BIG_FILE or self.seek_info > BIG_FILE
        layout = _HEADER_BIG if big else _HEADER_SMALL
        version = self.version + (1_000_000 if big else 0)
        header = (
            _HEADER_START.pack(_MAGIC, version, self.begin)
            + layout.pack(
                self.end,
                self.seek_free,
                self.nbytes_free,
                self.nfree,
                self.nbytes_name,
                8 if big else 4,
                self.compress,
                self.seek_info,
                self.nbytes_info,
            )
            + self.uuid
        )
        return header.ljust(BEGIN, b"\x00")


def new_uuid() -> bytes:
    """A TUUID as ROOT stores it: its version, then 16 bytes."""
    return struct.pack(">H", _UUID_VERSION) + uuid.uuid4().bytes


@dataclass(frozen=True)
class DirectoryRecord:
    """A TDirectory's record (what follows its key, and for the top one its name and title)."""

    datime_c: int
    datime_m: int
    nbytes_keys: int
    nbytes_name: int
    seek_dir: int
    seek_parent: int
    seek_keys: int
    uuid: bytes

    @classmethod
    def parse(cls, data: bytes, position: int = 0) -> DirectoryRecord:
        reader = Reader(data, position)
        version, datime_c, datime_m, nbytes_keys, nbytes_name = _DIR_START.unpack_from(
            data, reader.need(_DIR_START.size)
        )
        if version > 1000:
            seek_dir, seek_parent, seek_keys = (reader.i64(), reader.i64(), reader.i64())
        else:
            seek_dir, seek_parent, seek_keys = (reader.i32(), reader.i32(), reader.i32())
        uuid_bytes = reader.bytes(18) if reader.end - reader.pos >= 18 else b"\x00" * 18
        return cls(
            datime_c,
            datime_m,
            nbytes_keys,
            nbytes_name,
            seek_dir,
            seek_parent,
            seek_keys,
            uuid_bytes,
        )

    def pack(self) -> bytes:
        """The record, always ``DIRECTORY_SIZE`` bytes (64-bit seeks when any needs them)."""
        big = max(self.seek_dir, self.seek_parent, self.seek_keys) > BIG_FILE
        start = _DIR_START.pack(
            _DIRECTORY_VERSION + (1000 if big else 0),
            self.datime_c,
            self.datime_m,
            self.nbytes_keys,
            self.nbytes_name,
        )
        seeks = struct.pack(
            ">qqq" if big else ">iii", self.seek_dir, self.seek_parent, self.seek_keys
        )
        return (start + seeks + self.uuid).ljust(DIRECTORY_SIZE, b"\x00")


def top_directory_payload(name: str, title: str, record: DirectoryRecord) -> bytes:
    """What the top directory's key holds: the file's name and title, then its directory."""
    return tstring(name) + tstring(title) + record.pack()


def parse_keys_list(data: bytes) -> list[Key]:
    """The keys a directory's key list (its record, after the list's own key) holds."""
    reader = Reader(data)
    count = reader.i32()
    if count < 0:
        raise RecordError(f"a directory lists {count} keys")
    keys = []
    for _ in range(count):
        key = parse_key(data, reader.pos, listed=True)
        reader.pos += listed_length(data, reader.pos)
        keys.append(key)
    return keys


def keys_list(keys: list[Key]) -> bytes:
    """A directory's key list record: the count, then each key's header."""
    return struct.pack(">i", len(keys)) + b"".join(key.pack() for key in keys)


def free_segments(end: int) -> bytes:
    """The free-segments record of a file that ends at ``end`` and has no gaps."""
    if end > BIG_FILE:
        return _FREE_BIG.pack(1001, end, end + 1_000_000_000)
    return _FREE_SMALL.pack(1, end, 2_000_000_000)
