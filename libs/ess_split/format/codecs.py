"""ROOT's compression: blocks of at most 16 MiB, each with a 9-byte header, then a zlib, LZMA,
LZ4 or ZSTD stream.

A header is two letters for the algorithm (``ZL``, ``XZ``, ``L4``, ``ZS``; ``CS`` for ROOT's
pre-zlib algorithm), a method byte, and the compressed and uncompressed sizes of the block in
three little-endian bytes each. LZ4 blocks start with the xxhash64 of the compressed bytes. A
record whose stored size equals its uncompressed size is stored as it is: ROOT compresses a
record whole or not at all.

Consumes stored bytes or bytes to store, and a ``Compression`` (an algorithm and a level, as
ROOT's ``fCompress`` code ``100 * algorithm + level`` says). Produces the inflated or compressed
bytes; ``inflate_prefix`` inflates only the first bytes of a zlib or LZMA record, which is all
that a range ending early in a basket needs. zlib level 1 goes through python-isal when it is
installed (about 1.6 times the speed of the standard library, the same format), both ways.
"""

from __future__ import annotations

import importlib
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cramjam
import xxhash

from ess_split.format.buffer import RecordError

__all__ = [
    "ALGORITHMS",
    "Compression",
    "UnsupportedCompression",
    "algorithm_of",
    "compress",
    "inflate",
    "inflate_prefix",
    "kept_compression",
    "parse_compression",
]

ALGORITHMS = {"zlib": 1, "lzma": 2, "lz4": 4, "zstd": 5}
_NAMES = {code: name for name, code in ALGORITHMS.items()}
_MAX_BLOCK = 0xFFFFFF
_BLOCK_HEADER = 9
_LZ4_CHECKSUM = 8
_HEADERS = {"zlib": b"ZL\x08", "lzma": b"XZ\x00", "lz4": b"L4\x01", "zstd": b"ZS\x01"}
_CHECKSUM = struct.Struct(">Q")


def _isal_zlib() -> Any:
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:
        return None


_ISAL = _isal_zlib()
_zlib_decompress: Callable[..., bytes] = zlib.decompress if _ISAL is None else _ISAL.decompress
#: What inflating damaged bytes raises.
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, lzma.LZMAError, ValueError) + (
    () if _ISAL is None else (_ISAL.error,)
)


@dataclass(frozen=True)
class Compression:
    """An algorithm (``zlib``, ``lzma``, ``lz4``, ``zstd``) and a level; level 0 stores."""

    algorithm: str
    level: int

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown compression algorithm {self.algorithm!r}")
        top = {"zlib": 9, "lzma": 9, "lz4": 12, "zstd": 22}[self.algorithm]
        if not 0 <= self.level <= top:
            raise ValueError(f"{self.algorithm} levels go from 0 to {top}, not {self.level}")

    @property
    def code(self) -> int:
        """ROOT's ``fCompress`` for this setting."""
        return 100 * ALGORITHMS[self.algorithm] + self.level

    @classmethod
    def from_code(cls, code: int) -> Compression:
        """The setting a file's or branch's ``fCompress`` means.

        Algorithm 0 is ROOT's global default and 3 its pre-6 zlib: both read back as zlib.
        """
        algorithm, level = divmod(int(code), 100)
        if code < 0 or (level > 9 and algorithm != ALGORITHMS["zstd"]):
            raise ValueError(f"fCompress {code} is not a compression setting")
        return cls(_NAMES.get(algorithm, "zlib"), level)

    def __str__(self) -> str:
        return "none" if self.level == 0 else f"{self.algorithm}:{self.level}"


NONE = Compression("zlib", 0)


#: ROOT's default level for each algorithm (its kDefault* settings).
DEFAULT_LEVELS = {"zlib": 1, "lzma": 7, "lz4": 4, "zstd": 5}
_BY_HEADER = {b"ZL": "zlib", b"XZ": "lzma", b"L4": "lz4", b"ZS": "zstd", b"CS": "zlib"}


def algorithm_of(stored: bytes | memoryview) -> str | None:
    """The algorithm of stored (compressed) bytes, by their first block's header."""
    return _BY_HEADER.get(bytes(stored[:2]))


def kept_compression(algorithm: str | None, *settings: int) -> Compression | None:
    """The compression to store anew what was stored with ``algorithm`` (None: stored as it
    is) under the given ``fCompress`` settings (the branch's, then the file's): the first
    setting of that algorithm with a level, else the algorithm at ROOT's default level. Bytes
    stored as they are get the first setting with a level, as ROOT would have tried."""
    parsed = []
    for code in settings:
        try:
            parsed.append(Compression.from_code(code))
        except ValueError:
            continue
    if algorithm is None:
        return next((c for c in parsed if c.level > 0), None)
    for compression in parsed:
        if compression.algorithm == algorithm and compression.level > 0:
            return compression
    return Compression(algorithm, DEFAULT_LEVELS[algorithm])


def parse_compression(spec: str) -> Compression | None:
    """The setting ``spec`` names: ``source`` (None: the source's own), ``none``, or
    ``<algorithm>:<level>``; raises ValueError."""
    text = spec.strip().lower()
    if text == "source":
        return None
    if text == "none":
        return NONE
    algorithm, _, level = text.partition(":")
    if algorithm not in ALGORITHMS or not level.isdigit() or int(level) < 1:
        raise ValueError(
            f"compression {spec!r} is not 'source', 'none' or <algorithm>:<level> with "
            f"algorithm one of {', '.join(ALGORITHMS)} and a level from 1"
        )
    try:
        return Compression(algorithm, int(level))
    except ValueError as exc:
        raise ValueError(f"compression {spec!r}: {exc}") from exc


def _compressor(compression: Compression) -> Callable[[bytes], bytes]:
    algorithm, level = compression.algorithm, compression.level
    if algorithm == "zlib":
        if level == 1 and _ISAL is not None:
            isal: Any = _ISAL
            return lambda data: bytes(isal.compress(data, 1))
        return lambda data: zlib.compress(data, level)
    if algorithm == "lzma":

        def xz(data: bytes) -> bytes:
            # The preset's dictionary (up to 64 MiB), allocated per call, costs more than
            # compressing a basket; one no larger than the data compresses alike.
            dictionary = max(4096, min(len(data), 1 << 26))
            filters = [{"id": lzma.FILTER_LZMA2, "preset": level, "dict_size": dictionary}]
            return lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters)

        return xz
    if algorithm == "lz4":

        def lz4(data: bytes) -> bytes:
            block = bytes(cramjam.lz4.compress_block(data, compression=level, store_size=False))
            return _CHECKSUM.pack(xxhash.xxh64(block).intdigest()) + block

        return lz4
    return lambda data: bytes(cramjam.zstd.compress(data, level=level))


def compress(data: bytes, compression: Compression | None) -> bytes:
    """``data`` as ROOT stores it with ``compression``: compressed blocks, or ``data`` itself
    when that is not smaller (or the level is 0)."""
    if compression is None or compression.level == 0 or not data:
        return data
    squeeze = _compressor(compression)
    header = _HEADERS[compression.algorithm]
    parts: list[bytes] = []
    total = 0
    for start in range(0, len(data), _MAX_BLOCK):
        block = data[start : start + _MAX_BLOCK]
        stored = squeeze(block)
        if len(stored) >= len(block) or len(stored) > _MAX_BLOCK:
            return data
        parts.append(header + len(stored).to_bytes(3, "little") + len(block).to_bytes(3, "little"))
        parts.append(stored)
        total += _BLOCK_HEADER + len(stored)
        if total >= len(data):
            return data
    return b"".join(parts)


class UnsupportedCompression(RecordError):
    """Sound bytes compressed by an algorithm that is not read here."""


class _Inflater(Protocol):
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def inflate(stored: bytes | memoryview, size: int) -> bytes:
    """The ``size`` bytes that ``stored`` holds (stored as is when it is that size already)."""
    if len(stored) == size:
        return bytes(stored)
    inflated = bytes(_inflate(memoryview(stored), None))
    if len(inflated) != size:
        raise RecordError(f"a record inflates to {len(inflated)} bytes, its key says {size}")
    return inflated


def inflate_prefix(
    stored: bytes | memoryview, stored_size: int, size: int, wanted: int
) -> bytes | None:
    """As many as possible of the first ``wanted`` bytes of a record of ``size`` bytes stored in
    ``stored_size`` bytes, from ``stored``, which may be only the beginning of those; None when
    the record's blocks cannot be inflated from a beginning (LZ4, ZSTD)."""
    view = memoryview(stored)
    if stored_size == size:
        return bytes(view[:wanted])
    inflated: bytes | None = _inflate(view, wanted, partial=True)
    return inflated


def _inflate(payload: memoryview, wanted: int | None, *, partial: bool = False) -> Any:
    parts: list[bytes] = []
    produced = 0
    position = 0
    while position + _BLOCK_HEADER <= len(payload) and (wanted is None or produced < wanted):
        header = bytes(payload[position : position + _BLOCK_HEADER])
        algorithm = header[:2]
        compressed = int.from_bytes(header[3:6], "little")
        expected = int.from_bytes(header[6:9], "little")
        body = payload[position + _BLOCK_HEADER : position + _BLOCK_HEADER + compressed]
        position += _BLOCK_HEADER + compressed
        if len(body) < compressed and not partial:
            raise RecordError("a compressed block ends before its header says")
        try:
            if partial and wanted is not None:
                inflater: _Inflater
                if algorithm == b"ZL":
                    inflater = zlib.decompressobj()
                elif algorithm == b"XZ":
                    inflater = lzma.LZMADecompressor()
                else:
                    return None
                part = inflater.decompress(bytes(body), wanted - produced)
                parts.append(part)
                produced += len(part)
                if len(body) < compressed:
                    break
                continue
            part = _inflate_block(algorithm, body, expected)
        except UnsupportedCompression:
            raise
        except _INFLATE_ERRORS as exc:
            raise RecordError(
                f"a {algorithm.decode('latin-1')} block does not inflate: {exc}"
            ) from exc
        if len(part) != expected:
            raise RecordError(f"a block inflates to {len(part)} bytes, its header says {expected}")
        parts.append(part)
        produced += len(part)
    if wanted is None and position != len(payload):
        raise RecordError("compressed blocks do not fill their record")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _inflate_block(algorithm: bytes, body: memoryview, expected: int) -> bytes:
    if algorithm == b"ZL":
        return bytes(_zlib_decompress(body, bufsize=expected))
    if algorithm == b"XZ":
        return lzma.decompress(body)
    if algorithm == b"L4":
        (checksum,) = _CHECKSUM.unpack_from(body, 0)
        block = body[_LZ4_CHECKSUM:]
        if xxhash.xxh64(block).intdigest() != checksum:
            raise ValueError("an LZ4 block fails its checksum")
        return bytes(cramjam.lz4.decompress_block(block, output_len=expected))
    if algorithm == b"ZS":
        return bytes(cramjam.zstd.decompress(body, output_len=expected))
    if algorithm == b"CS":
        raise UnsupportedCompression("ROOT's pre-2000 compression (CS), which nothing reads now")
    raise ValueError(f"unknown compression {algorithm!r}")
