"""Decide how a source TTree is re-created with uproot's TTree writer.

Consumes an uproot TTree opened for reading. Produces a ``TreeLayout``: the branch types to
hand to ``WritableDirectory.mktree`` (in source order, with the same names and dtypes) and the
counter mapping that makes every counted branch share its source counter branch under the
source's name. Raises ``UnsplittableFile`` for the first branch that uproot cannot write back
with the same type, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np
import uproot

# Leaf classes whose values uproot's TTree writer reproduces with the same leaf class. Half
# precision, Double32_t, Long_t and TLeafElement (STL containers, TString, classes) are absent
# because uproot would either refuse them or silently write a different type.
_WRITABLE_LEAVES = frozenset(
    {"TLeafB", "TLeafS", "TLeafI", "TLeafL", "TLeafF", "TLeafD", "TLeafO", "TLeafC"}
)

# uproot always writes the counter of a jagged branch as a signed 32-bit integer.
_COUNTER_DTYPE = np.dtype(np.int32)

_STRING_TYPE = ak.types.ListType(
    ak.types.NumpyType("uint8", parameters={"__array__": "char"}),
    parameters={"__array__": "string"},
)


class SplitError(Exception):
    """A ROOT file that cannot be cut into event-range files."""


class NoEventTree(SplitError):
    """No TTree in the file holds the expected number of events."""


class UnsplittableFile(SplitError):
    """The file holds something uproot cannot write back unchanged.

    ``tree`` is the path of the TTree (or other object) concerned, ``branch`` the offending
    branch (None when the whole object is the problem) and ``typename`` its C++ type.
    """

    def __init__(
        self,
        tree: str,
        branch: str | None,
        typename: str,
        reason: str = "uproot cannot write this type into a TTree",
    ) -> None:
        self.tree = tree
        self.branch = branch
        self.typename = typename
        self.reason = reason
        if branch is None:
            message = f"cannot split: {tree!r} has type {typename!r} ({reason})"
        else:
            message = (
                f"cannot split TTree {tree!r}: branch {branch!r} has type {typename!r} ({reason})"
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a worker process, it crosses back to the parent by pickling.
        return (type(self), (self.tree, self.branch, self.typename, self.reason))


@dataclass(frozen=True)
class TreeLayout:
    path: str
    title: str
    branch_types: dict[str, Any]
    counters: dict[str, str] = field(default_factory=dict)

    def counter_name(self, counted: str) -> str:
        """The counter branch of ``counted``, as mktree's ``counter_name`` callback wants it."""
        return self.counters[counted]


def tree_layout(path: str, tree: Any) -> TreeLayout:
    """Describe ``tree`` (found at ``path`` in its file) for writing, or raise."""
    branch_types: dict[str, Any] = {}
    counters: dict[str, str] = {}
    for branch in tree.branches:
        spec, counter = _branch_spec(path, branch)
        branch_types[str(branch.name)] = spec
        if counter is not None:
            counters[str(branch.name)] = counter
    if not branch_types:
        raise SplitError(f"TTree {path!r} has no branches")
    return TreeLayout(
        path=path, title=str(tree.title), branch_types=branch_types, counters=counters
    )


def _branch_spec(tree_path: str, branch: Any) -> tuple[Any, str | None]:
    name = str(branch.name)
    typename = branch_typename(branch)

    def refuse(reason: str) -> UnsplittableFile:
        return UnsplittableFile(tree_path, name, typename, reason)

    if branch.classname != "TBranch":
        raise refuse(
            f"a {branch.classname} (STL container, string class or object); "
            "uproot writes plain TBranches only"
        )
    if len(branch.branches) != 0:
        raise refuse("a TBranch with sub-branches; uproot writes flat TBranches only")
    leaves = branch.member("fLeaves")
    if len(leaves) != 1:
        raise refuse("leaf-list branch; uproot writes one leaf per branch")
    leaf_class = str(leaves[0].classname)
    if leaf_class not in _WRITABLE_LEAVES:
        raise refuse(f"leaf class {leaf_class} is not one uproot writes")

    interpretation = branch.interpretation
    if isinstance(interpretation, uproot.AsStrings) and leaf_class == "TLeafC":
        return _STRING_TYPE, None
    if isinstance(interpretation, uproot.AsDtype) and branch.count_leaf is None:
        return _dtype_spec(interpretation.to_dtype), None
    if (
        isinstance(interpretation, uproot.AsJagged)
        and isinstance(interpretation.content, uproot.AsDtype)
        and interpretation.header_bytes == 0
    ):
        counter = branch.count_branch
        if counter is None:
            raise refuse("its counter leaf is not a branch of the same TTree")
        _check_counter(tree_path, name, counter)
        content = _dtype_spec(interpretation.content.to_dtype)
        if content.shape != ():
            # uproot 5.7 writes x[n][k] baskets that it then fails to read back.
            raise refuse("variable-length array of fixed-size arrays; uproot mis-writes these")
        primitive = ak.types.numpytype.dtype_to_primitive(content)
        return ak.types.ListType(ak.types.NumpyType(primitive)), str(counter.name)
    raise refuse(f"interpretation {interpretation!r} is not one uproot writes")


def branch_typename(branch: Any) -> str:
    """The C++ type of ``branch`` as uproot names it, or its leaves' titles if it cannot."""
    try:
        return str(branch.typename)
    except Exception:
        # uproot fails to name some leaf-list structs (e.g. of fixed-size arrays); the leaf
        # titles still tell the operator what the branch holds.
        leaves = branch.member("fLeaves")
        return ":".join(str(leaf.member("fTitle")) for leaf in leaves) or str(branch.classname)


def _dtype_spec(dtype: np.dtype[Any]) -> np.dtype[Any]:
    # Reading gives big-endian dtypes; the writer wants the logical type only.
    return dtype.newbyteorder("=")


def _check_counter(tree_path: str, counted: str, counter: Any) -> None:
    interpretation = counter.interpretation
    if (
        counter.classname != "TBranch"
        or not isinstance(interpretation, uproot.AsDtype)
        or interpretation.to_dtype.newbyteorder("=") != _COUNTER_DTYPE
    ):
        raise UnsplittableFile(
            tree_path,
            str(counter.name),
            branch_typename(counter),
            f"counter of {counted!r}; uproot writes counters as plain int32 branches only",
        )
