"""Where a tree's clusters begin, and the same for the entries a range file keeps.

A TTree records its clusters (the entries it flushed together) as ``fAutoFlush`` entries each
from its start, or as ranges: each range ``i`` ends at entry ``fClusterRangeEnd[i]`` and holds
clusters of ``fClusterSize[i]`` entries, ``fAutoFlush`` applying after the last range. A
``fAutoFlush`` of 0 or less without ranges means the sizes were never fixed (ROOT estimates them
from the tree's byte counts). A range file's tree gets the source's clusters that fall within
its entries, counted from its first entry, as explicit ranges.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Clusters", "cluster_starts", "range_clusters"]


@dataclass(frozen=True)
class Clusters:
    """``ends`` and ``sizes`` of the cluster ranges (``fClusterRangeEnd``, ``fClusterSize``)."""

    ends: tuple[int, ...]
    sizes: tuple[int, ...]


def cluster_starts(
    entries: int, auto_flush: int, ends: Sequence[int], sizes: Sequence[int]
) -> list[int] | None:
    """The first entry of every cluster of a tree, or None when its sizes are not fixed."""
    if not ends and auto_flush <= 0:
        return None
    starts: list[int] = []
    start = 0
    for end, size in zip(ends, sizes, strict=True):
        if size <= 0:
            return None
        while start <= end and start < entries:
            starts.append(start)
            start += size
        start = end + 1
    if start < entries:
        if auto_flush <= 0:
            return None
        while start < entries:
            starts.append(start)
            start += auto_flush
    return starts


def range_clusters(starts: Sequence[int] | None, first: int, stop: int) -> Clusters | None:
    """The clusters of entries ``first``..``stop - 1``, counted from ``first``: runs of
    clusters of one size, each run a range. None when the source's sizes were not fixed."""
    if starts is None:
        return None
    inside = [0] + [s - first for s in starts if first < s < stop] + [stop - first]
    ends: list[int] = []
    sizes: list[int] = []
    last = len(inside) - 2
    for index, (begin, end) in enumerate(itertools.pairwise(inside)):
        size = end - begin
        # A run of equal clusters is one range; so is a run whose last cluster the range's
        # end cuts short (ROOT cuts a range's last cluster at the range's end).
        if sizes and (sizes[-1] == size or (index == last and size < sizes[-1])):
            ends[-1] = end - 1
        else:
            ends.append(end - 1)
            sizes.append(size)
    return Clusters(tuple(ends), tuple(sizes))
