"""Read the operator's choice of compression for range files.

Consumes a setting such as ``source``, ``none``, ``zlib:1``, ``lz4:4``, ``zstd:5`` or
``lzma:9`` (what ``EdgeSettings.split_compression`` accepts). Produces the uproot compression
object that ``split_root_file`` takes, or None for "keep the source file's own setting".
"""

from __future__ import annotations

from typing import Any

import uproot

__all__ = ["parse_compression"]

_ALGORITHMS: dict[str, Any] = {
    "zlib": uproot.ZLIB,
    "lzma": uproot.LZMA,
    "lz4": uproot.LZ4,
    "zstd": uproot.ZSTD,
}


def parse_compression(spec: str) -> Any:
    """The uproot compression for ``spec``; None means the source's own; raises ValueError."""
    text = spec.strip().lower()
    if text == "source":
        return None
    if text == "none":
        # Level 0 writes the baskets uncompressed whatever the algorithm.
        return uproot.ZLIB(0)
    algorithm, _, level = text.partition(":")
    if algorithm not in _ALGORITHMS or not level.isdigit() or int(level) < 1:
        raise ValueError(
            f"compression {spec!r} is not 'source', 'none' or <algorithm>:<level> with "
            f"algorithm one of {', '.join(_ALGORITHMS)} and a level from 1"
        )
    try:
        return _ALGORITHMS[algorithm](int(level))
    except ValueError as exc:
        raise ValueError(f"compression {spec!r}: {exc}") from exc
