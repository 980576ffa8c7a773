"""How long a branch's entries are, where that is known without reading their offsets.

A remote split fetches of a basket that a range ends inside only its beginning, up to the
range's last entry; it must then know where that entry ends before inflating the basket's end,
where the offsets are. Two kinds of branches tell it: those whose entries all have one size
(no offsets: ``fEntryOffsetLen`` 0; the size is in each basket's header), and those whose
entries are arrays counted by another branch: a leaf-list branch whose leaf has a counter leaf
(``x[n]``), or a member of a split collection (``hits.x``) counted by the collection's branch.
Any other branch is fetched whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ess_split.format.streamers import BASIC_SIZES
from ess_split.format.walker import Node, Ref
from ess_split.ttree.model import TreeRecord

__all__ = ["Counted", "counted_branches"]

_LEAF_TYPES: dict[str, np.dtype[Any]] = {
    "TLeafB": np.dtype(">i1"),
    "TLeafS": np.dtype(">i2"),
    "TLeafI": np.dtype(">i4"),
    "TLeafL": np.dtype(">i8"),
    "TLeafG": np.dtype(">i8"),
    "TLeafF": np.dtype(">f4"),
    "TLeafD": np.dtype(">f8"),
    "TLeafO": np.dtype(">i1"),
}
#: TBranchElement types of a member of a split TClonesArray or collection.
_COLLECTION_MEMBERS = (31, 41)


@dataclass(frozen=True)
class Counted:
    """Branch ``counter``'s entries (of ``dtype``) count this branch's elements of ``size``."""

    counter: int
    dtype: np.dtype[Any]
    size: int


def counted_branches(tree: TreeRecord) -> dict[int, Counted]:
    """The tree's counted branches (by index in ``tree.branches``)."""
    leaf_owner: dict[int, tuple[int, Node]] = {}
    for index, branch in enumerate(tree.branches):
        for leaf in _leaves(branch.node):
            if leaf.tagged_at is not None:
                leaf_owner[leaf.tagged_at] = (index, leaf)
    node_index = {id(branch.node): index for index, branch in enumerate(tree.branches)}
    found: dict[int, Counted] = {}
    for index, branch in enumerate(tree.branches):
        node = branch.node
        if node.classname == "TBranch":
            leaves = _leaves(node)
            if len(leaves) != 1:
                continue
            leaf = leaves[0]
            count = leaf.find("fLeafCount")
            dtype = _LEAF_TYPES.get(leaf.classname)
            if count is None or not isinstance(count.value, Ref) or dtype is None:
                continue
            owner = leaf_owner.get(count.value.target)
            if owner is None:
                continue
            counter_dtype = _LEAF_TYPES.get(owner[1].classname)
            if counter_dtype is None or counter_dtype.kind not in "iu":
                continue
            length = max(int(leaf.get("fLen")), 1)
            found[index] = Counted(
                owner[0], _signed(owner[1], counter_dtype), dtype.itemsize * length
            )
        elif node.classname == "TBranchElement":
            if int(node.get("fType")) not in _COLLECTION_MEMBERS:
                continue
            size = BASIC_SIZES.get(int(node.get("fStreamerType")))
            count = node.find("fBranchCount")
            if size is None or count is None or not isinstance(count.value, Node | Ref):
                continue
            counter_node = count.value
            if isinstance(counter_node, Ref):
                counter = next(
                    (
                        i
                        for i, b in enumerate(tree.branches)
                        if b.node.tagged_at == counter_node.target
                    ),
                    None,
                )
            else:
                counter = node_index.get(id(counter_node))
            if counter is None:
                continue
            found[index] = Counted(counter, np.dtype(">i4"), size)
    return found


def _leaves(node: Node) -> list[Node]:
    array = node.get("fLeaves")
    if not isinstance(array, Node):
        return []
    return [item for item in array.members["items"].value if isinstance(item, Node)]


def _signed(leaf: Node, dtype: np.dtype[Any]) -> np.dtype[Any]:
    unsigned = leaf.find("fIsUnsigned")
    if unsigned is not None and unsigned.value:
        return np.dtype(f">u{dtype.itemsize}")
    return dtype
