"""Read a TBasket's stored bytes: inflate them whole, or only as far as its first entries need.

Consumes the bytes of a basket's TKey (header, then ROOT's compressed blocks: a 9-byte header
each, then a zlib, LZMA, LZ4 or ZSTD stream) or, for a remote file, an uproot source with the
key's position. Produces the basket's entry bytes and, for entries of variable size, where each
begins, as uproot's own TBasket reader does; or, with ``fetch_prefix``, only the first bytes of
the content, fetched by estimate and extended until they suffice. zlib and LZMA streams inflate
from their start without the rest, so the first entries of a basket need only the first part
of its stored bytes; LZ4 and ZSTD blocks need all of it.

zlib is inflated with python-isal when it is installed (about 1.6 times the speed of the
standard library's zlib, whose speed is otherwise what reading a file costs), and compressed
by ``rangewriter`` likewise. Returns None where a basket uses what is not handled here (ROOT's
pre-zlib algorithm), and the caller falls back on uproot.
"""

from __future__ import annotations

import importlib
import lzma
import struct
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import cramjam
import numpy as np
import numpy.typing as npt
import xxhash

__all__ = ["decode", "fetch_prefix", "zlib_compressor"]

_KEY_START = struct.Struct(">ihiIh")
_TBASKET = struct.Struct(">Hiiii")
_BLOCK_HEADER = 9
_LZ4_CHECKSUM = 8
# Enough for any basket key (class name "TBasket", branch and tree names, TBasket header).
_KEY_ALLOWANCE = 512
# Bytes fetched beyond the estimate, so that the first request usually suffices.
_MARGIN = 1.15
_SLACK = 2048


def _isal_zlib() -> Any:
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:
        return None


_ISAL = _isal_zlib()
_zlib_decompress: Callable[..., bytes] = zlib.decompress if _ISAL is None else _ISAL.decompress


def zlib_compressor() -> Callable[[bytes], bytes]:
    """The fastest zlib level-1 compression at hand: python-isal, else cramjam (zlib-ng-like,
    about three times the standard library's speed at a few per cent more bytes)."""
    if _ISAL is not None:
        isal: Any = _ISAL
        return lambda data: bytes(isal.compress(data, 1))
    return lambda data: bytes(cramjam.zlib.compress(data, level=1))


class _Inflater(Protocol):
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def decode(
    key: bytes | memoryview,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64] | None] | None:
    """The entry bytes of the basket whose whole TKey is ``key``, and its entry offsets."""
    _nbytes, _version, objlen, _datime, key_length = _KEY_START.unpack_from(key, 0)
    _, _, _, _, last = _TBASKET.unpack_from(key, key_length - _TBASKET.size - 1)
    stored = memoryview(key)[key_length:]
    content: bytes | memoryview
    if len(stored) == objlen:
        content = stored
    else:
        inflated = _inflate(stored, None)
        if inflated is None:
            return None
        content = inflated
    if len(content) != objlen:
        raise ValueError(f"basket inflates to {len(content)} bytes, its key says {objlen}")
    raw = np.frombuffer(content, np.uint8)
    border = last - key_length
    if border == objlen:
        return raw, None
    # Entry offsets follow the entries: a count, then each entry's start from the key's start.
    offsets = raw[border:].view(">i4")[1:].astype(np.int64) - key_length
    offsets[-1] = border
    return raw[:border], offsets


def fetch_prefix(source: Any, seek: int, stored: int, wanted: int, ratio: float) -> bytes | None:
    """The first ``wanted`` bytes of the content of the basket whose key is at ``seek``.

    ``stored`` is the key's whole size (header and compressed bytes), ``ratio`` the expected
    compressed over uncompressed size. Returns fewer bytes only when the basket has fewer, and
    None when the basket's blocks cannot be inflated from a prefix.
    """
    length = min(stored, int(_KEY_ALLOWANCE + wanted * min(ratio, 1.0) * _MARGIN + _SLACK))
    while True:
        chunk = source.chunk(seek, seek + length)
        raw = bytes(chunk.raw_data)
        _nbytes, _version, objlen, _datime, key_length = _KEY_START.unpack_from(raw, 0)
        if stored - key_length == objlen:
            # Stored uncompressed: the prefix is the bytes themselves.
            if length >= min(stored, key_length + wanted):
                return raw[key_length : key_length + wanted]
        else:
            inflated = _inflate(memoryview(raw)[key_length:], wanted)
            if inflated is None:
                return None
            if len(inflated) >= min(wanted, objlen) or length == stored:
                return inflated[:wanted]
        if length == stored:
            raise ValueError(f"basket at {seek} holds fewer bytes than its key says")
        length = min(stored, 2 * length)


def _inflate(payload: memoryview, wanted: int | None) -> bytes | None:
    """ROOT's compressed ``payload`` inflated: all of it, or as much as possible of the first
    ``wanted`` bytes when the payload may end early."""
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
        if wanted is not None:
            inflater: _Inflater
            if algorithm == b"ZL":
                inflater = zlib.decompressobj()
            elif algorithm == b"XZ":
                inflater = lzma.LZMADecompressor()
            else:
                return None
            part = inflater.decompress(bytes(body), wanted - produced)
            if len(body) < compressed:
                # The fetched bytes end inside this block.
                parts.append(part)
                break
        elif algorithm == b"ZL":
            part = _zlib_decompress(body, bufsize=expected)
        elif algorithm == b"XZ":
            part = lzma.decompress(body)
        elif algorithm == b"L4":
            (checksum,) = struct.unpack_from(">Q", body, 0)
            block = body[_LZ4_CHECKSUM:]
            if xxhash.xxh64(block).intdigest() != checksum:
                raise ValueError("LZ4 block of a basket fails its checksum")
            part = bytes(cramjam.lz4.decompress_block(block, output_len=expected))
        elif algorithm == b"ZS":
            part = bytes(cramjam.zstd.decompress(body, output_len=expected))
        else:
            return None
        if wanted is None and len(part) != expected:
            raise ValueError(f"block inflates to {len(part)} bytes, its header says {expected}")
        parts.append(part)
        produced += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)
