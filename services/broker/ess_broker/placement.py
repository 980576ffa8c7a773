"""Choosing an edge for a file.

Candidates are the live edges that can hold the file; among them, closeness to the file's
replicas counts first, then a stable spread: rendezvous (highest random weight) hashing
weighted by capacity, so that adding or removing an edge moves only the files it wins or held.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str
    site: str
    region: str
    #: Bytes the edge can still take: free space less what is already promised to it.
    available_bytes: int
    capacity_bytes: int
    queued: int


def _unit_hash(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    # Map to (0, 1): never 0, so that the logarithm below is finite.
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 1)


def rendezvous_score(file_key: str, edge: Candidate) -> float:
    weight = max(edge.capacity_bytes, 1)
    return -weight / math.log(_unit_hash(f"{file_key}|{edge.name}"))


def closeness(edge: Candidate, sites: Sequence[str], regions: Sequence[str]) -> int:
    if edge.site in sites:
        return 2
    if edge.region in regions:
        return 1
    return 0


def choose_edge(
    file_key: str,
    size: int,
    edges: Sequence[Candidate],
    *,
    replica_sites: Sequence[str] = (),
    replica_regions: Sequence[str] = (),
) -> Candidate | None:
    fitting = [e for e in edges if e.available_bytes >= size]
    if not fitting:
        return None
    return max(
        fitting,
        key=lambda e: (
            closeness(e, replica_sites, replica_regions),
            rendezvous_score(file_key, e),
        ),
    )
