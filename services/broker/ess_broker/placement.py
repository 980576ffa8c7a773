"""Choosing an edge for a file.

Candidates are the live edges that can reserve the file's bytes and whose queue of unfinished
work is below the cap; among them, closeness to the file's replicas counts first (same site,
then same region), then a stable spread: rendezvous (highest random weight) hashing weighted by
capacity, so that adding or removing an edge moves only the files it wins or held (about 1/N).
Free space and queue length only admit or exclude an edge, never reorder the spread: a
heartbeat saying the disk is a little fuller must not send a file somewhere else than where
its copy is already cached.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Candidate:
    name: str
    site: str
    region: str
    #: Bytes the edge can still take: what it can free less what is already promised to it.
    available_bytes: int
    capacity_bytes: int
    #: Files given to the edge and not yet finished (or waiting in its queues, if more).
    queued: int


def _unit_hash(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    # Map to (0, 1): never 0, so that the logarithm below is finite.
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 1)


def rendezvous_score(file_key: str, edge: Candidate) -> float:
    """Weighted rendezvous: an edge of twice the capacity wins twice as many keys."""
    weight = max(edge.capacity_bytes, 1)
    return -weight / math.log(_unit_hash(f"{file_key}|{edge.name}"))


def closeness(edge: Candidate, sites: Sequence[str], regions: Sequence[str]) -> int:
    if edge.site in sites:
        return 2
    if edge.region in regions:
        return 1
    return 0


def replica_places(replicas: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The sites and regions of a file's replicas, as recorded (`File.replicas`)."""
    sites, regions = [], []
    for r in replicas:
        if site := r.get("site"):
            sites.append(str(site))
        if region := r.get("region"):
            regions.append(str(region))
    return sites, regions


def choose_edge(
    file_key: str,
    size: int,
    edges: Sequence[Candidate],
    *,
    replica_sites: Sequence[str] = (),
    replica_regions: Sequence[str] = (),
    max_queued: int | None = None,
) -> Candidate | None:
    """The edge for the file, or None when no edge can take it now (it stays pending)."""
    fitting = [
        e
        for e in edges
        if e.available_bytes >= size and (max_queued is None or e.queued < max_queued)
    ]
    if not fitting:
        return None
    return max(
        fitting,
        key=lambda e: (
            closeness(e, replica_sites, replica_regions),
            rendezvous_score(file_key, e),
        ),
    )
