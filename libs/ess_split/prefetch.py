"""Fetch, concurrently, what the next range needs from a remote source file.

Consumes the branch readers of a split (``ttree.source.BranchSource``, per cut tree) and the
range's entries. Fetches, with one request per basket on a thread pool, the baskets the range
holds whole and those it begins inside; of a basket the range ends inside only its beginning,
up to the range's last entry, when that can be known first (``ttree.sizes``): for branches of
fixed-size entries from the basket's header, for counted branches from their counters' values,
which are therefore fetched in a first round. zlib and LZMA inflate from their start without
the rest (``format.codecs.inflate_prefix``); LZ4 and ZSTD baskets are fetched whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from ess_split.format.buffer import RecordError
from ess_split.format.codecs import inflate_prefix
from ess_split.format.keys import parse_key
from ess_split.ttree.baskets import BasketHeader, Decoded, parse_basket_header
from ess_split.ttree.model import BasketSlot
from ess_split.ttree.sizes import Counted
from ess_split.ttree.source import BranchSource

__all__ = ["prefetch"]

# Enough for any basket key (class name "TBasket", branch and tree names, TBasket header).
_KEY_ALLOWANCE = 512
# Bytes fetched beyond the estimate, so that the first request usually suffices.
_MARGIN = 1.15
_SLACK = 2048


def prefetch(
    pool: ThreadPoolExecutor,
    readers: Sequence[Sequence[BranchSource]],
    counted: Sequence[dict[int, Counted]],
    start: int,
    stop: int,
) -> None:
    """Fetch what entries ``start``..``stop - 1`` need; see the module's docstring."""
    first_round: list[Future[None]] = []
    second: list[tuple[BranchSource, BasketSlot, int, Counted, Sequence[BranchSource]]] = []
    for tree_readers, tree_counted in zip(readers, counted, strict=True):
        # A counted branch's prefix needs its counter from the basket's first entry on.
        counter_from: dict[int, int] = {}
        plans = []
        for index, reader in enumerate(tree_readers):
            reader.forget_partial()
            for slot in reader.overlapping(start, stop):
                needed = min(stop, slot.stop) - slot.first
                if reader.held(slot, needed):
                    continue
                whole = reader.copies(slot, start, stop) or slot.stop <= stop
                count = tree_counted.get(index)
                if not whole and count is not None:
                    counter_from[count.counter] = min(
                        counter_from.get(count.counter, start), slot.first
                    )
                plans.append((index, reader, slot, needed, whole, count))
        for counter, begin in counter_from.items():
            reader = tree_readers[counter]
            for slot in reader.overlapping(begin, stop):
                needed = min(stop, slot.stop) - slot.first
                # Baskets from ``start`` on are planned already, as the counter's own.
                if not reader.held(slot, needed) and slot.stop <= start:
                    plans.append((counter, reader, slot, needed, True, None))
        for _, reader, slot, needed, whole, count in plans:
            if whole or (count is None and reader.branch.entry_offset_len != 0):
                first_round.append(pool.submit(_whole, reader, slot))
            elif count is None:
                first_round.append(pool.submit(_fixed_prefix, reader, slot, needed))
            else:
                second.append((reader, slot, needed, count, tree_readers))
    _wait(first_round)
    jobs = []
    for reader, slot, needed, count, tree_readers in second:
        counts = tree_readers[count.counter].values(slot.first, slot.first + needed, count.dtype)
        jobs.append(pool.submit(_counted_prefix, reader, slot, counts, count.size))
    _wait(jobs)


def _wait(futures: list[Future[None]]) -> None:
    for future in futures:
        future.result()


def _whole(reader: BranchSource, slot: BasketSlot) -> None:
    if slot.embedded is None:
        reader.prefetched[slot.number] = reader.read(slot.seek, slot.seek + slot.nbytes)


def _fixed_prefix(reader: BranchSource, slot: BasketSlot, entries: int) -> None:
    def wanted(header: BasketHeader) -> int:
        return entries * header.nev_buf_size

    found = _prefix(reader, slot, wanted, _estimate(reader, entries))
    if found is None:
        _whole(reader, slot)
        return
    data, header, keylen = found
    reader.partial[slot.number] = Decoded(
        entries, keylen, data, None, None, header.nev_buf_size, header.nev_buf_size
    )


def _counted_prefix(
    reader: BranchSource, slot: BasketSlot, counts: npt.NDArray[np.generic], size: int
) -> None:
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts.astype(np.int64), out=offsets[1:])
    offsets *= size
    total = int(offsets[-1])
    found = _prefix(reader, slot, lambda header: total, total)
    if found is None:
        _whole(reader, slot)
        return
    data, header, keylen = found
    reader.partial[slot.number] = Decoded(
        len(counts), keylen, data, offsets, None, 0, header.nev_buf_size
    )


def _estimate(reader: BranchSource, entries: int) -> int:
    node = reader.branch.node
    total = max(float(node.get("fTotBytes")), 1.0)
    return int(entries * total / max(reader.branch.entries, 1))


def _prefix(
    reader: BranchSource,
    slot: BasketSlot,
    wanted: Callable[[BasketHeader], int],
    estimate: int,
) -> tuple[bytes, BasketHeader, int] | None:
    """The first bytes of a basket's content, as many as ``wanted`` says once its header is
    read; None when its compression cannot be inflated from a beginning."""
    node = reader.branch.node
    ratio = float(node.get("fZipBytes")) / max(float(node.get("fTotBytes")), 1.0)
    length = min(slot.nbytes, int(_KEY_ALLOWANCE + estimate * min(ratio, 1.0) * _MARGIN + _SLACK))
    while True:
        raw = reader.read(slot.seek, slot.seek + length)
        try:
            key = parse_key(raw)
            header = parse_basket_header(raw, key)
        except RecordError:
            if length == slot.nbytes:
                raise
            length = min(slot.nbytes, 2 * length)
            continue
        needed = wanted(header)
        if key.stored == key.objlen:
            if length >= min(slot.nbytes, key.keylen + needed):
                return raw[key.keylen : key.keylen + needed], header, key.keylen
        else:
            inflated = inflate_prefix(memoryview(raw)[key.keylen :], key.stored, key.objlen, needed)
            if inflated is None:
                return None
            if len(inflated) >= min(needed, key.objlen) or length == slot.nbytes:
                if len(inflated) < needed:
                    raise RecordError(f"a basket at {slot.seek} holds fewer bytes than needed")
                return inflated[:needed], header, key.keylen
        if length == slot.nbytes:
            raise RecordError(f"a basket at {slot.seek} holds fewer bytes than its key says")
        length = min(slot.nbytes, 2 * length)
