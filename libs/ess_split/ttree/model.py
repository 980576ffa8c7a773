"""A TTree record read for cutting: its branches and where their baskets are.

Consumes a TTree (or TNtuple, TNtupleD) record walked by ``format.walker``. Produces a
``TreeRecord``: the tree's entry count and every branch at any depth (sub-branches of split
objects and collections, and the TBranchRef), each a ``BranchRecord`` with the members a range
file changes, its baskets (keyed ones: position, size and first entry; embedded ones: their
walked bytes) and whether its entries may hold references into their basket, which decides
whether entries moved inside a basket need their original positions written beside them.
Raises ``Unsupported`` for what a range file could not reproduce faithfully, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ess_split.format.streamers import ClassInfo, Streamers, _element_may_refer
from ess_split.format.walker import Node, Ref, Unsupported, Value, Walk

__all__ = ["BasketSlot", "BranchRecord", "TreeRecord", "base_version", "read_tree"]

_TREE_CLASSES = ("TTree", "TNtuple", "TNtupleD")
# TBranchElement types whose entries are a count (of a split TClonesArray or collection).
_COUNT_TYPES = (3, 4)


class BasketSlot(NamedTuple):
    """One basket of a source branch: entries ``first``..``stop - 1`` of the tree, stored at
    ``seek`` in ``nbytes`` (key included), or held in the TTree record itself (``embedded``)."""

    number: int
    first: int
    stop: int
    seek: int
    nbytes: int
    embedded: Node | None = None


@dataclass
class BranchRecord:
    """A branch of a source tree, with what a range file rewrites of it."""

    node: Node
    name: str
    classname: str
    entries: int
    write_basket: int
    entry_offset_len: int
    basket_bytes: np.ndarray[Any, Any]
    basket_entry: np.ndarray[Any, Any]
    basket_seek: np.ndarray[Any, Any]
    baskets_list: Node
    may_refer: bool
    slots: list[BasketSlot] = field(default_factory=list)

    def member(self, name: str) -> Value:
        found = self.node.find(name)
        if found is None:
            raise Unsupported(f"branch {self.name!r} ({self.classname}) has no {name}")
        return found


@dataclass
class TreeRecord:
    """A source tree's record, walked, with its branches in the order they are written."""

    node: Node
    walk: Walk
    classname: str
    name: str
    entries: int
    branches: list[BranchRecord]

    def member(self, name: str) -> Value:
        found = self.node.find(name)
        if found is None:
            raise Unsupported(f"{self.classname} {self.name!r} has no {name}")
        return found


def read_tree(walk: Walk, classname: str) -> TreeRecord:
    """Walk the record in ``walk`` as a ``classname`` and find its branches."""
    if classname not in _TREE_CLASSES:
        raise Unsupported(f"a {classname} is not a TTree")
    node = walk.stream(walk.reader(), classname)
    if node.end != len(walk.data):
        raise Unsupported(f"the {classname} record has {len(walk.data) - node.end} bytes after it")
    tree = TreeRecord(node, walk, classname, str(node.get("fName")), int(node.get("fEntries")), [])
    for branch_node in _items(node.get("fBranches")):
        _collect(tree, branch_node, walk.streamers)
    branch_ref = node.find("fBranchRef")
    if branch_ref is not None and isinstance(branch_ref.value, Node):
        _collect(tree, branch_ref.value, walk.streamers)
    return tree


def _items(array: Any) -> list[Node]:
    if not isinstance(array, Node):
        return []
    items = array.members["items"].value
    found = []
    for item in items:
        if isinstance(item, Ref):
            raise Unsupported("a branch listed twice")
        if item is not None:
            found.append(item)
    return found


def _collect(tree: TreeRecord, node: Node, streamers: Streamers) -> None:
    if not node.is_a("TBranch"):
        raise Unsupported(f"a {node.classname} among the branches")
    name = str(node.get("fName"))
    file_name = node.find("fFileName")
    if file_name is not None and file_name.value:
        raise Unsupported(f"branch {name!r} keeps its baskets in another file ({file_name.value})")
    max_baskets = int(node.get("fMaxBaskets"))
    write_basket = int(node.get("fWriteBasket"))
    arrays = [node.get(member) for member in ("fBasketBytes", "fBasketEntry", "fBasketSeek")]
    arrays = [np.zeros(max_baskets, np.int64) if a is None else np.asarray(a) for a in arrays]
    if write_basket >= max_baskets or any(len(a) != max_baskets for a in arrays):
        raise Unsupported(f"branch {name!r} has inconsistent basket arrays")
    branch = BranchRecord(
        node=node,
        name=name,
        classname=node.classname,
        entries=int(node.get("fEntries")),
        write_basket=write_basket,
        entry_offset_len=int(node.get("fEntryOffsetLen")),
        basket_bytes=arrays[0].astype(np.int64),
        basket_entry=arrays[1].astype(np.int64),
        basket_seek=arrays[2].astype(np.int64),
        baskets_list=node.get("fBaskets"),
        may_refer=_may_refer(node, streamers),
    )
    branch.slots = _slots(branch)
    tree.branches.append(branch)
    for child in _items(node.get("fBranches")):
        _collect(tree, child, streamers)


def base_version(node: Node, classname: str) -> int:
    """The version of ``node``'s ``classname`` part (itself or a base), -1 if it has none."""
    if node.classname == classname:
        return node.version
    for base in node.bases:
        if base.is_a(classname):
            return base_version(base, classname)
    return -1


def _slots(branch: BranchRecord) -> list[BasketSlot]:
    embedded = {}
    for index, item in enumerate(branch.baskets_list.members["items"].value):
        if isinstance(item, Node):
            embedded[index] = item
        elif isinstance(item, Ref):
            raise Unsupported(f"branch {branch.name!r} lists a basket twice")
    slots = []
    # Python ints: indexing numpy arrays one number at a time is slow for thousands of baskets.
    entry = branch.basket_entry.tolist()
    seeks = branch.basket_seek.tolist()
    sizes = branch.basket_bytes.tolist()
    for number in range(branch.write_basket):
        first = entry[number]
        stop = entry[number + 1] if number + 1 <= branch.write_basket else branch.entries
        if number in embedded:
            slots.append(BasketSlot(number, first, stop, 0, 0, embedded.pop(number)))
        elif seeks[number] <= 0 or sizes[number] <= 0:
            raise Unsupported(f"branch {branch.name!r} basket {number} has no position")
        else:
            slots.append(BasketSlot(number, first, stop, seeks[number], sizes[number]))
    last = embedded.pop(branch.write_basket, None)
    if last is not None:
        slots.append(
            BasketSlot(branch.write_basket, entry[branch.write_basket], branch.entries, 0, 0, last)
        )
    if embedded:
        raise Unsupported(f"branch {branch.name!r} holds baskets past its last one")
    covered = 0
    for slot in slots:
        if slot.first != covered or slot.stop < slot.first:
            raise Unsupported(
                f"branch {branch.name!r} basket {slot.number} holds entries {slot.first}.."
                f"{slot.stop - 1}, after entry {covered - 1}"
            )
        covered = slot.stop
    if slots and covered != branch.entries:
        raise Unsupported(
            f"branch {branch.name!r} baskets hold {covered} of {branch.entries} entries"
        )
    return slots


def _may_refer(node: Node, streamers: Streamers) -> bool:
    """Whether this branch's entries may hold references into their basket's buffer."""
    if node.classname == "TBranch":
        return False
    if node.classname != "TBranchElement":
        return True
    branch_type = int(node.get("fType"))
    if branch_type in _COUNT_TYPES:
        return False
    class_name = str(node.get("fClassName"))
    element_id = int(node.get("fID"))
    if element_id == -1:
        return streamers.may_refer(class_name)
    if element_id < 0:
        return True
    info = _class_info(
        streamers, class_name, int(node.get("fClassVersion")), int(node.get("fCheckSum"))
    )
    if info is None or element_id >= len(info.elements):
        return True
    return _element_may_refer(streamers, info.elements[element_id], frozenset())


def _class_info(streamers: Streamers, name: str, version: int, checksum: int) -> ClassInfo | None:
    found = (
        streamers.get(name, version)
        or streamers.by_checksum(name, checksum)
        or streamers.only(name)
    )
    normal = name.replace("> >", ">>")
    if found is None and normal != name:
        # A branch names a template class with ROOT's older spelling, its streamer the newer.
        return _class_info(streamers, normal, version, checksum)
    return found
