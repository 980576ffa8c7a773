"""The openings of remote files (header, directory, streamers, TTree records: what a split
reads before any basket), held by the edge for its on-demand slots.

Each slot's process keeps what its own splits fetched (`ess_split.remote`). When a file's
range goes to a slot that has not opened the file (its own slot was busy, or its process was
restarted), the edge hands that slot the opening another slot read, so the source is asked
only for the range's baskets. Bounded: least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict

Runs = list[tuple[int, bytes]]


class Openings:
    """The edge's openings by file identity, and which slot's process holds which."""

    #: Files a slot is taken to hold; a slot's process keeps at most as much.
    per_slot = 4096

    def __init__(self, slots: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.runs: OrderedDict[str, Runs] = OrderedDict()
        self.bytes = 0
        self.held: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(slots)]
        #: Files whose opening is too large to hold: not asked for again.
        self.too_large: OrderedDict[str, None] = OrderedDict()

    def to_hand(self, slot: int, identity: str) -> tuple[Runs | None, bool]:
        """What to give `slot`'s process before it splits the file: the opening, when the
        edge holds it and the slot does not; and whether to ask for the opening back (the edge
        does not hold it yet)."""
        runs = self.runs.get(identity)
        if runs is not None:
            self.runs.move_to_end(identity)
        wanted = runs is None and identity not in self.too_large
        if identity in self.held[slot]:
            return None, wanted
        return runs, wanted

    def split(self, slot: int, identity: str, runs: Runs | None) -> None:
        """`slot`'s process split a range of the file (so it holds the opening), and gave back
        the opening it read (`runs`) when asked."""
        held = self.held[slot]
        held[identity] = None
        held.move_to_end(identity)
        while len(held) > self.per_slot:
            held.popitem(last=False)
        size = sum(len(data) for _, data in runs) if runs else 0
        if runs and size > self.max_bytes // 4:
            self.too_large[identity] = None
            while len(self.too_large) > self.per_slot:
                self.too_large.popitem(last=False)
        if not runs or size > self.max_bytes // 4:
            return
        old = self.runs.pop(identity, None)
        self.bytes -= sum(len(data) for _, data in old) if old else 0
        self.runs[identity] = runs
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self.runs.popitem(last=False)
            self.bytes -= sum(len(data) for _, data in dropped)

    def lost(self, slot: int) -> None:
        """`slot`'s process is gone, and what it kept with it."""
        self.held[slot].clear()
