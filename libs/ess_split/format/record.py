"""Rewrite a walked record with some of its parts replaced, keeping it valid.

Consumes a ``Walk`` of a record and ``Edit``s: spans of the record replaced by other bytes,
longer or shorter. Produces the new record for a key of a given length: the bytes between
edits copied, the edits put in, and every byte count, class reference and object reference
outside the edits recomputed for the new positions (references count from the key's start, so
the new key's length enters them too). ``moved`` tells where a position of the old record is
in the new one. A reference to something inside an edit is an error: what an edit removes must
not be referred to from outside it.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ess_split.format.buffer import BYTECOUNT_MASK, CLASS_MASK, MAP_OFFSET, RecordError
from ess_split.format.walker import Walk

__all__ = ["Edit", "Rewrite"]

_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class Edit:
    """Bytes ``start``..``end`` of the old record, replaced by ``data``."""

    start: int
    end: int
    data: bytes

    @property
    def delta(self) -> int:
        return len(self.data) - (self.end - self.start)


class Rewrite:
    """A record rewritten: ``data`` are its new bytes, for a key of ``keylen`` bytes."""

    def __init__(self, walk: Walk, edits: Sequence[Edit], keylen: int) -> None:
        ordered = sorted(edits, key=lambda edit: edit.start)
        for before, after in itertools.pairwise(ordered):
            if after.start < before.end:
                raise ValueError(f"edits at {before.start} and {after.start} overlap")
        for edit in ordered:
            if edit.start >= edit.end:
                raise ValueError(f"an edit at {edit.start} replaces nothing")
        self._starts = [edit.start for edit in ordered]
        self._ends = [edit.end for edit in ordered]
        shifts = [0]
        for edit in ordered:
            shifts.append(shifts[-1] + edit.delta)
        self._shifts = shifts
        old = walk.data
        pieces: list[bytes] = []
        position = 0
        for edit in ordered:
            pieces.append(old[position : edit.start])
            pieces.append(edit.data)
            position = edit.end
        pieces.append(old[position:])
        data = bytearray(b"".join(pieces))
        for field, end in walk.counts:
            if self._inside(field):
                continue
            new_field = self.moved(field)
            _U32.pack_into(data, new_field, (self.moved(end) - new_field - 4) | BYTECOUNT_MASK)
        for field, target, is_class in walk.refs:
            if self._inside(field):
                continue
            if self._inside(target):
                raise RecordError(
                    f"a reference at {field} points at {target}, which an edit replaces"
                )
            value = self.moved(target) + MAP_OFFSET + keylen
            _U32.pack_into(data, self.moved(field), value | CLASS_MASK if is_class else value)
        self.data = bytes(data)

    def _inside(self, position: int) -> bool:
        index = bisect.bisect_right(self._starts, position) - 1
        return index >= 0 and position < self._ends[index]

    def moved(self, position: int) -> int:
        """Where ``position`` of the old record (not inside an edit) is in the new one."""
        index = bisect.bisect_right(self._ends, position)
        return position + self._shifts[index]
