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

import functools
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


_MASK64 = (1 << 64) - 1


def _key_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=4096)
def _edge_hash(name: str) -> int:
    return _key_hash(name)


def _pair_unit(file_hash: int, edge_hash: int) -> float:
    """The pair's number in (0, 1): splitmix64's finalizer over the two hashes' xor, a
    bijection that spreads every input bit over the output. One hash per file and one per
    edge, where a hash per pair cost most of an assignment round's CPU."""
    x = file_hash ^ edge_hash
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    # Never 0, so that the logarithm below is finite.
    return (x + 1) / (2**64 + 1)


def _score(file_hash: int, edge: Candidate) -> float:
    return -max(edge.capacity_bytes, 1) / math.log(_pair_unit(file_hash, _edge_hash(edge.name)))


def rendezvous_score(file_key: str, edge: Candidate) -> float:
    """Weighted rendezvous: an edge of twice the capacity wins twice as many keys."""
    return _score(_key_hash(file_key), edge)


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


class Round:
    """The edges of one assignment round, chosen for file after file: a file given to an edge
    takes its bytes and a place in its queue, as the next file's choice sees them. The edges'
    hashes and weights are worked out once per round, not once per file."""

    def __init__(self, edges: Sequence[Candidate], max_queued: int | None = None) -> None:
        self.edges = list(edges)
        self.max_queued = max_queued
        self._hashes = [_edge_hash(e.name) for e in self.edges]
        self._weights = [float(max(e.capacity_bytes, 1)) for e in self.edges]
        self._available = [e.available_bytes for e in self.edges]
        self._queued = [e.queued for e in self.edges]

    def pick(
        self,
        file_key: str,
        size: int,
        *,
        replica_sites: Sequence[str] = (),
        replica_regions: Sequence[str] = (),
    ) -> int | None:
        """The index of the edge for the file, or None when no edge can take it now."""
        file_hash, limit = _key_hash(file_key), self.max_queued
        near = bool(replica_sites or replica_regions)
        best, best_tier, best_score = -1, -1, 0.0
        for j, edge_hash in enumerate(self._hashes):
            if self._available[j] < size or (limit is not None and self._queued[j] >= limit):
                continue
            tier = closeness(self.edges[j], replica_sites, replica_regions) if near else 0
            if tier < best_tier:
                continue
            score = -self._weights[j] / math.log(_pair_unit(file_hash, edge_hash))
            if tier > best_tier or score > best_score:
                best, best_tier, best_score = j, tier, score
        return None if best < 0 else best

    def take(
        self,
        file_key: str,
        size: int,
        *,
        replica_sites: Sequence[str] = (),
        replica_regions: Sequence[str] = (),
    ) -> Candidate | None:
        """The edge for the file, which now holds it (its room and queue counted); None when
        no edge can take it now (it stays pending)."""
        j = self.pick(file_key, size, replica_sites=replica_sites, replica_regions=replica_regions)
        if j is None:
            return None
        self._available[j] -= size
        self._queued[j] += 1
        return self.edges[j]


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
    j = Round(edges, max_queued).pick(
        file_key, size, replica_sites=replica_sites, replica_regions=replica_regions
    )
    return None if j is None else edges[j]
