"""adler32, the checksum of the grid's data management, computed in streaming chunks."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20
_HEX32 = re.compile(r"[0-9a-f]{1,8}")


def adler32_hex(value: int) -> str:
    return f"{value & 0xFFFFFFFF:08x}"


def adler32_of_chunks(chunks: Iterable[bytes]) -> str:
    value = 1
    for chunk in chunks:
        value = zlib.adler32(chunk, value)
    return adler32_hex(value)


def adler32_of_bytes(data: bytes) -> str:
    return adler32_hex(zlib.adler32(data))


def adler32_of_file(path: Path) -> str:
    with path.open("rb") as f:
        return adler32_of_chunks(iter(lambda: f.read(CHUNK), b""))


def normalise_adler32(value: str) -> str:
    """Rucio writes adler32 as 8 hex digits, some catalogues drop leading zeros.

    Raises ValueError for anything but 1 to 8 hex digits (`int(.., 16)` alone would take a
    sign, underscores and more than 32 bits).
    """
    text = value.strip().lower().removeprefix("0x")
    if not _HEX32.fullmatch(text):
        raise ValueError(f"adler32 {value!r} is not 1 to 8 hexadecimal digits")
    return text.zfill(8)
