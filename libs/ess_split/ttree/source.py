"""Read a source branch's baskets in entry order and cut ranges' baskets from them.

Consumes a ``BranchRecord`` and a way to read the source file's bytes. Produces, for entries
``start``..``stop - 1`` of the tree (ranges asked for in increasing order), the ``Piece``s of the
range file's baskets: a source basket that the range holds whole is taken over as stored (when
the range files keep the source's compression), others are inflated once and cut. One inflated
basket is held per branch, so a basket that several ranges share is inflated once and memory
does not grow with the file. ``prefetched`` baskets (bytes read ahead by a remote split) are used
instead of reading again.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ess_split.format.buffer import RecordError
from ess_split.ttree.baskets import Decoded, Piece, decode_embedded, decode_keyed
from ess_split.ttree.model import BasketSlot, BranchRecord

__all__ = ["BranchSource"]


class Copy(NamedTuple):
    """A source basket taken over whole: its slot, and its bytes when they were read ahead."""

    slot: BasketSlot
    raw: bytes | None


class BranchSource:
    """One branch of a source tree, read basket by basket; see the module's docstring."""

    def __init__(
        self,
        branch: BranchRecord,
        read: Callable[[int, int], bytes],
        *,
        copy: bool,
        where: str,
    ) -> None:
        self.branch = branch
        self.read = read
        self._copy = copy
        self._where = where
        self._firsts = [slot.first for slot in branch.slots]
        self._number = -1
        self._decoded: Decoded | None = None
        #: Stored bytes of baskets read ahead (by slot number).
        self.prefetched: dict[int, bytes] = {}
        #: The first entries of baskets read and inflated ahead (by slot number).
        self.partial: dict[int, Decoded] = {}

    def overlapping(self, start: int, stop: int) -> list[BasketSlot]:
        """The baskets holding any of entries ``start``..``stop - 1``."""
        slots = self.branch.slots
        index = max(bisect.bisect_right(self._firsts, start) - 1, 0)
        found = []
        while index < len(slots) and slots[index].first < stop:
            if slots[index].stop > start and slots[index].stop > slots[index].first:
                found.append(slots[index])
            index += 1
        return found

    def copies(self, slot: BasketSlot, start: int, stop: int) -> bool:
        """Whether ``slot`` is taken over whole for entries ``start``..``stop - 1``."""
        return self._copy and slot.embedded is None and start <= slot.first and slot.stop <= stop

    def take(self, start: int, stop: int) -> tuple[list[Copy], list[tuple[int, Piece]]]:
        """What entries ``start``..``stop - 1`` of this branch become: the source baskets taken
        over whole (with their bytes when read ahead), and the pieces cut out of the others,
        each with the source entry it begins at."""
        copies: list[Copy] = []
        cut: list[tuple[int, Piece]] = []
        for slot in self.overlapping(start, stop):
            if self.copies(slot, start, stop):
                copies.append(Copy(slot, self.prefetched.pop(slot.number, None)))
                continue
            low, high = max(start, slot.first), min(stop, slot.stop)
            decoded = self._decode(slot, high - slot.first)
            piece = decoded.cut(low - slot.first, high - slot.first, self.branch.may_refer)
            cut.append((low, piece))
        return copies, cut

    def values(self, start: int, stop: int, dtype: Any) -> npt.NDArray[Any]:
        """Entries ``start``..``stop - 1`` of this branch of fixed-size numbers (a counter)."""
        parts = []
        for slot in self.overlapping(start, stop):
            low, high = max(start, slot.first), min(stop, slot.stop)
            piece = self._decode(slot, high - slot.first).cut(
                low - slot.first, high - slot.first, False
            )
            parts.append(np.frombuffer(piece.data, dtype))
        return np.concatenate(parts) if parts else np.empty(0, dtype)

    def held(self, slot: BasketSlot, needed: int) -> bool:
        """Whether the first ``needed`` entries of ``slot`` are at hand without reading."""
        if slot.number in self.prefetched or slot.embedded is not None:
            return True
        if slot.number == self._number and self._decoded is not None:
            return self._decoded.entries >= needed
        partial = self.partial.get(slot.number)
        return partial is not None and partial.entries >= needed

    def forget_partial(self) -> None:
        """Drop baskets of which only a part is in memory, before another range is read."""
        self.partial.clear()
        if self._decoded is not None and self._number >= 0:
            slot = self.branch.slots[self._number]
            if self._decoded.entries < slot.stop - slot.first:
                self._number, self._decoded = -1, None

    def _raw(self, slot: BasketSlot) -> bytes:
        held = self.prefetched.pop(slot.number, None)
        if held is not None:
            return held
        return self.read(slot.seek, slot.seek + slot.nbytes)

    def _decode(self, slot: BasketSlot, needed: int) -> Decoded:
        decoded = self._decoded
        if slot.number == self._number and decoded is not None and decoded.entries >= needed:
            return decoded
        partial = self.partial.get(slot.number)
        if partial is not None and partial.entries >= needed:
            return partial
        where = f"{self._where}: branch {self.branch.name!r} basket {slot.number}"
        if slot.embedded is not None:
            decoded = decode_embedded(slot.embedded, where)
        else:
            decoded = decode_keyed(self._raw(slot), where)
        # Slots are numbered by their place in the branch's list of baskets.
        assert self.branch.slots[slot.number] is slot
        if decoded.entries != slot.stop - slot.first:
            raise RecordError(
                f"{where} holds {decoded.entries} entries, its branch says {slot.stop - slot.first}"
            )
        self._number, self._decoded = slot.number, decoded
        return decoded
