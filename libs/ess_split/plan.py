"""Decide, before a byte is written, what a split of a file does.

Consumes an open source file and the event count the caller expects (PanDA's or the
catalogue's; by default the largest entry count in the file). Produces a ``SplitPlan``: the
event trees (every TTree, TNtuple, TNtupleD or RNTuple, in any directory, with that many
entries), cut into ranges; the other trees and RNTuples, carried whole with their baskets or
pages; every other object, carried as stored; and what is left out (``Skipped``): objects whose
class holds a TTree (their baskets would be left behind) and trees or RNTuples whose records
use what is not read here. Stale cycles of a
tree (ROOT's autosaves) are left out silently: only a tree's last cycle describes its baskets.
Raises ``NoEventTree`` when no container has the event count and ``UnsplittableFile`` when one
that has it cannot be cut (naming it and why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ess_split import uproot_io
from ess_split.errors import NoEventTree, UnsplittableFile
from ess_split.format.buffer import RecordError
from ess_split.format.keys import Key
from ess_split.format.walker import Unsupported, Walk
from ess_split.rntuple import NTuple, read_ntuple
from ess_split.sourcefile import DIRECTORY_CLASSES, Directory, SourceFile
from ess_split.ttree.model import TreeRecord, read_tree
from ess_split.ttree.template import check_cuttable

__all__ = ["Container", "Skipped", "SplitPlan", "plan_split"]

TREE_CLASSES = frozenset({"TTree", "TNtuple", "TNtupleD"})
RNTUPLE_CLASSES = frozenset({"ROOT::RNTuple", "ROOT::Experimental::RNTuple"})
# A class whose streamer refers to one of these holds a TTree, whose baskets are separate
# records of the source file; a copy of the object alone would point nowhere.
_TREE_PARTS = frozenset({"TTree", "TNtuple", "TNtupleD", "TBranch", "TBasket", "TBranchElement"})


@dataclass(frozen=True)
class Skipped:
    """An object of the source left out of every range file, and why."""

    path: str
    classname: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.classname}): {self.reason}"

    def unsplittable(self) -> UnsplittableFile:
        return UnsplittableFile(self.path, None, self.classname, f"not carried: {self.reason}")


@dataclass
class Container:
    """A TTree or RNTuple of the source: its directory, key, and what of it reads (the tree's
    record, or the RNTuple), or why it does not."""

    directory: str
    key: Key
    record: TreeRecord | None
    problem: str | None
    ntuple: NTuple | None = None

    @property
    def path(self) -> str:
        return self.key.name if not self.directory else f"{self.directory}/{self.key.name}"

    @property
    def entries(self) -> int | None:
        if self.record is not None:
            return self.record.entries
        if self.ntuple is not None:
            return self.ntuple.entries
        return None

    @property
    def readable(self) -> bool:
        return self.record is not None or self.ntuple is not None


@dataclass
class SplitPlan:
    source: SourceFile
    n_events: int
    trees: list[Container]
    carried_trees: list[Container]
    carried_objects: list[Key]
    skipped: list[Skipped] = field(default_factory=list)


def plan_split(
    source: SourceFile,
    n_events: int | None,
    uncarried: Literal["skip", "unsplittable"] = "skip",
) -> SplitPlan:
    """The plan for ``source``; see the module's docstring."""
    containers: list[Container] = []
    objects: list[tuple[Directory, Key]] = []
    skipped: list[Skipped] = []
    for directory in source.top.walk():
        latest: dict[str, int] = {}
        for key in directory.keys:
            if key.classname in TREE_CLASSES | RNTUPLE_CLASSES:
                latest[key.name] = max(latest.get(key.name, key.cycle), key.cycle)
        for key in directory.keys:
            if key.classname in DIRECTORY_CLASSES:
                continue
            if key.classname in TREE_CLASSES:
                if key.cycle == latest[key.name]:
                    containers.append(_container(source, directory.path, key))
            elif key.classname in RNTUPLE_CLASSES:
                if key.cycle == latest[key.name]:
                    containers.append(_ntuple(source, directory.path, key))
            elif _holds_tree(source, key.classname):
                skipped.append(
                    Skipped(
                        directory.child_path(key.name),
                        key.classname,
                        "its class holds a TTree, whose baskets would be left behind",
                    )
                )
            else:
                objects.append((directory, key))
    where = source.where
    if not containers:
        raise NoEventTree(f"{where}: no TTree in the file")
    counts = [c.entries for c in containers if c.entries is not None]
    if n_events is None:
        if not counts:
            problem = containers[0]
            raise UnsplittableFile(
                problem.path, None, problem.key.classname, problem.problem or "unreadable"
            )
        n_events = max(counts)
    trees = [c for c in containers if c.entries == n_events]
    unread = [c for c in containers if not c.readable]
    if not trees:
        if unread:
            # It may well hold the events: delivering the file whole is then the honest answer.
            problem = unread[0]
            raise UnsplittableFile(
                problem.path, None, problem.key.classname, problem.problem or "unreadable"
            )
        listing = ", ".join(f"{c.path!r} ({c.entries} entries)" for c in containers)
        raise NoEventTree(f"{where}: no TTree has {n_events} entries; the TTrees are {listing}")
    for tree in trees:
        if tree.record is None:
            continue
        try:
            check_cuttable(tree.record)
        except Unsupported as exc:
            raise UnsplittableFile(tree.path, None, tree.key.classname, str(exc)) from exc
    carried_trees = []
    for container in containers:
        if container.entries == n_events:
            continue
        if not container.readable:
            skipped.append(
                Skipped(container.path, container.key.classname, container.problem or "unreadable")
            )
        else:
            carried_trees.append(container)
    if skipped and uncarried == "unsplittable":
        raise skipped[0].unsplittable()
    return SplitPlan(source, n_events, trees, carried_trees, [key for _, key in objects], skipped)


def _container(source: SourceFile, directory: str, key: Key) -> Container:
    try:
        payload = source.payload(key)
        walk = Walk(payload, key.keylen, source.streamers)
        return Container(directory, key, read_tree(walk, key.classname), None)
    except Unsupported as exc:
        return Container(directory, key, None, str(exc))
    except RecordError:
        raise


def _ntuple(source: SourceFile, directory: str, key: Key) -> Container:
    try:
        return Container(directory, key, None, None, read_ntuple(source, key))
    except Unsupported as exc:
        return Container(directory, key, None, str(exc))


def _holds_tree(source: SourceFile, classname: str) -> bool:
    try:
        dependencies = uproot_io.streamer_dependencies(source.uproot, classname)
    except Exception:
        # Without a streamer (classes of files that do not store theirs) nothing could refer
        # to a TTree.
        return False
    return any(name in _TREE_PARTS for name in dependencies)
