"""A range file's TTree record: the source's, with only what describes entries and baskets
changed.

Consumes a source ``TreeRecord`` and the most baskets any branch gets in one range file of the
split (``capacity``). Produces, per range, the record of the range file's tree: every byte of the
source's record (names, titles, classes, split levels, leaves and their counters, aliases, user
info, the streamers' own versions) but the entry and byte counts of the tree and of each branch,
the basket arrays (``capacity`` long, at least 10, as ROOT writes them), the clusters, and the
baskets embedded in the record, which are dropped (a range file keeps every basket in a key of
its own). The record's layout depends only on the capacity, the number of cluster ranges and
the key's length, so it is built once per such shape and then patched with each range's numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ess_split.format.record import Edit, Rewrite
from ess_split.format.walker import Node, Unsupported
from ess_split.ttree.clusters import Clusters
from ess_split.ttree.model import TreeRecord, base_version

__all__ = ["BranchBaskets", "TreeTemplate", "check_cuttable"]

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_EMPTY_LIST_TAIL = struct.Struct(">ii")
_FIRST_BRANCH_VERSION = 10
#: ROOT never writes basket arrays shorter than this (TBranch::Streamer).
_MIN_BASKETS = 10


@dataclass
class BranchBaskets:
    """The baskets one branch got in a range file, in any order: each with its first entry
    (counted in the source), its position and size, its entries, and its key and uncompressed
    record's bytes (fTotBytes' terms)."""

    firsts: list[int]
    seeks: list[int]
    nbytes: list[int]
    entries: list[int]
    totals: list[int]

    @classmethod
    def empty(cls) -> BranchBaskets:
        return cls([], [], [], [], [])

    def add(self, first: int, seek: int, nbytes: int, entries: int, total: int) -> None:
        self.firsts.append(first)
        self.seeks.append(seek)
        self.nbytes.append(nbytes)
        self.entries.append(entries)
        self.totals.append(total)

    def ordered(self) -> tuple[np.ndarray[Any, Any], ...]:
        """Seeks, sizes and entries of the baskets in entry order."""
        order = np.argsort(np.asarray(self.firsts, np.int64), kind="stable")
        return (
            np.asarray(self.seeks, np.int64)[order],
            np.asarray(self.nbytes, np.int64)[order],
            np.asarray(self.entries, np.int64)[order],
        )


@dataclass(frozen=True)
class _Shape:
    keylen: int
    clusters: int | None


class _Layout:
    """One shape's record with placeholders, and where each range's numbers go in it."""

    def __init__(self, data: bytes, positions: dict[str, int], branches: list[dict[str, int]]):
        self.data = data
        self.positions = positions
        self.branches = branches


class TreeTemplate:
    """Range files' records of one source tree; see the module's docstring."""

    def __init__(self, tree: TreeRecord, capacity: int) -> None:
        self.tree = tree
        self.capacity = max(capacity + 1, _MIN_BASKETS)
        self._layouts: dict[_Shape, _Layout] = {}
        check_cuttable(tree)
        index = tree.node.find("fTreeIndex")
        self._index = index.value if index is not None and isinstance(index.value, Node) else None

    def record(
        self,
        keylen: int,
        first: int,
        entries: int,
        baskets: Sequence[BranchBaskets],
        clusters: Clusters | None,
    ) -> bytes:
        """The record for entries ``first``..``first + entries - 1`` of the source, whose
        branches (in the tree's order) got ``baskets``, under a key of ``keylen`` bytes."""
        shape = _Shape(keylen, None if clusters is None else len(clusters.ends))
        if self._index is not None:
            # The index's size is the range's: a layout of its own.
            layout = self._layout(
                shape, [_index_edit(self.tree.walk.data, self._index, first, entries)]
            )
        elif shape in self._layouts:
            layout = self._layouts[shape]
        else:
            layout = self._layouts[shape] = self._layout(shape)
        data = bytearray(layout.data)
        total = zipped = 0
        for branch, slots, got in zip(self.tree.branches, layout.branches, baskets, strict=True):
            count = len(got.seeks)
            if count + 1 > self.capacity:
                raise ValueError(f"{count} baskets for a record with room for {self.capacity - 1}")
            branch_entries = entry_number = sum(got.entries)
            if not branch.slots:
                # A branch that writes no baskets of its own (the parent of a split object)
                # still counts the entries filled: those of the range.
                branch_entries = _within(branch.entries, first, entries)
                entry_number = _within(int(branch.node.get("fEntryNumber")), first, entries)
            branch_total, branch_zipped = sum(got.totals), sum(got.nbytes)
            total += branch_total
            zipped += branch_zipped
            _I32.pack_into(data, slots["fWriteBasket"], count)
            _I64.pack_into(data, slots["fEntryNumber"], entry_number)
            _I64.pack_into(data, slots["fEntries"], branch_entries)
            _I64.pack_into(data, slots["fTotBytes"], branch_total)
            _I64.pack_into(data, slots["fZipBytes"], branch_zipped)
            if count:
                seeks, nbytes, counts = got.ordered()
                starts = np.zeros(count + 1, np.int64)
                np.cumsum(counts, out=starts[1:])
                bytes_at, entry_at, seek_at = (
                    slots["fBasketBytes"],
                    slots["fBasketEntry"],
                    slots["fBasketSeek"],
                )
                data[bytes_at : bytes_at + 4 * count] = nbytes.astype(">i4").tobytes()
                data[entry_at : entry_at + 8 * (count + 1)] = starts.astype(">i8").tobytes()
                data[seek_at : seek_at + 8 * count] = seeks.astype(">i8").tobytes()
        positions = layout.positions
        for name, value in (
            ("fEntries", entries),
            ("fTotBytes", total),
            ("fZipBytes", zipped),
            ("fSavedBytes", zipped),
            ("fFlushedBytes", zipped),
        ):
            if name in positions:
                _I64.pack_into(data, positions[name], value)
        if clusters is not None:
            for index, (end, size) in enumerate(zip(clusters.ends, clusters.sizes, strict=True)):
                _I64.pack_into(data, positions["fClusterRangeEnd"] + 8 * index, end)
                _I64.pack_into(data, positions["fClusterSize"] + 8 * index, size)
        return bytes(data)

    def _layout(self, shape: _Shape, extra: Sequence[Edit] = ()) -> _Layout:
        tree = self.tree
        edits: list[Edit] = list(extra)
        for branch in tree.branches:
            for name, itemsize in (("fBasketBytes", 4), ("fBasketEntry", 8), ("fBasketSeek", 8)):
                value = branch.member(name)
                edits.append(
                    Edit(value.start, value.end, b"\x01" + bytes(itemsize * self.capacity))
                )
            max_baskets = branch.member("fMaxBaskets")
            edits.append(Edit(max_baskets.start, max_baskets.end, _I32.pack(self.capacity)))
            first_entry = branch.node.find("fFirstEntry")
            if first_entry is not None:
                edits.append(Edit(first_entry.start, first_entry.end, _I64.pack(0)))
            baskets_list = branch.baskets_list
            if baskets_list.members["items"].value:
                edits.append(_emptied(tree.walk.data, baskets_list))
        if shape.clusters is not None:
            count = tree.member("fNClusterRange")
            edits.append(Edit(count.start, count.end, _I32.pack(shape.clusters)))
            for name in ("fClusterRangeEnd", "fClusterSize"):
                array = tree.member(name)
                edits.append(Edit(array.start, array.end, b"\x01" + bytes(8 * shape.clusters)))
        rewrite = Rewrite(tree.walk, edits, shape.keylen)
        positions = {
            name: rewrite.moved(found.start)
            for name in ("fEntries", "fTotBytes", "fZipBytes", "fSavedBytes", "fFlushedBytes")
            if (found := tree.node.find(name)) is not None
        }
        if shape.clusters is not None:
            for name in ("fClusterRangeEnd", "fClusterSize"):
                positions[name] = rewrite.moved(tree.member(name).start) + 1
        branches: list[dict[str, int]] = []
        for branch in tree.branches:
            slots = {
                name: rewrite.moved(branch.member(name).start)
                for name in ("fWriteBasket", "fEntryNumber", "fEntries", "fTotBytes", "fZipBytes")
            }
            for name in ("fBasketBytes", "fBasketEntry", "fBasketSeek"):
                slots[name] = rewrite.moved(branch.member(name).start) + 1
            branches.append(slots)
        return _Layout(rewrite.data, positions, branches)


def _within(count: int, first: int, entries: int) -> int:
    """Of the source's first ``count`` entries, how many fall in the range."""
    return max(0, min(count, first + entries) - first)


def check_cuttable(tree: TreeRecord) -> None:
    """Raise ``Unsupported`` if a range file could not reproduce ``tree`` faithfully.

    A TTreeIndex is rebuilt for each range (its entries within the range, renumbered); friend
    trees and the old index arrays are refused."""
    for branch in tree.branches:
        version = base_version(branch.node, "TBranch")
        if version < _FIRST_BRANCH_VERSION:
            # Before ROOT 5.20 a branch's basket arrays were written by hand-made code.
            raise Unsupported(
                f"branch {branch.name!r} is a TBranch of version {version} (ROOT before 5.20)"
            )
    friends = tree.node.find("fFriends")
    if friends is not None and friends.value is not None:
        raise Unsupported("it has friend trees, whose entries would not line up with a range's")
    index = tree.node.find("fTreeIndex")
    if (
        index is not None
        and index.value is not None
        and (not isinstance(index.value, Node) or index.value.classname != "TTreeIndex")
    ):
        raise Unsupported("it has an index of a kind that is not rebuilt for a range")
    for array in ("fIndexValues", "fIndex"):
        value = tree.node.find(array)
        if value is not None and len(value.value.members["fArray"].value):
            raise Unsupported(f"it has an index ({array})")


def _index_edit(data: bytes, index: Node, first: int, entries: int) -> Edit:
    """The source's TTreeIndex with only the entries of the range, renumbered from 0: still in
    order of its values, as the source's were."""
    members = index.members
    numbers = members["fIndex"].value
    keep = (numbers >= first) & (numbers < first + entries)
    base = index.bases[0]
    body = bytearray(_I32.pack(0))
    body += data[index.start + 4 : index.start + 6]
    body += data[base.start : base.end]
    body += data[members["fMajorName"].start : members["fMinorName"].end]
    body += _I64.pack(int(keep.sum()))
    for name in ("fIndexValues", "fIndexValuesMinor", "fIndex"):
        if name in members:
            values = members[name].value[keep]
            if name == "fIndex":
                values = values - first
            body += values.astype(">i8").tobytes()
    _I32.pack_into(body, 0, (len(body) - 4) | 0x40000000)
    return Edit(index.start, index.end, bytes(body))


def _emptied(data: bytes, objarray: Node) -> Edit:
    """An edit that leaves ``objarray`` (a TObjArray) with no items, all else as it was."""
    items = objarray.members["items"]
    lower = objarray.members["fLowerBound"].value
    head = data[objarray.start : items.start - _EMPTY_LIST_TAIL.size]
    body = bytearray(head + _EMPTY_LIST_TAIL.pack(0, lower))
    _I32.pack_into(body, 0, (len(body) - 4) | 0x40000000)
    return Edit(objarray.start, objarray.end, bytes(body))
