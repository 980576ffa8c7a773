"""Find the event trees of a ROOT file before anything is written.

Consumes an open uproot file. Produces the list of event containers (TTrees, TNtuples and
RNTuples with their entry counts) and, from it, the event trees to slice: every container whose
entry count is the file's event count (the count the caller expects, or by default the largest
one), each with the ``TreeLayout`` that re-creates it. Raises ``NoEventTree`` when no container
has that count and ``UnsplittableFile`` when one that has it cannot be re-created unchanged by
uproot's TTree writer (a TNtuple or RNTuple, a branch of a type uproot does not write, or a
container whose entries uproot cannot read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ess_splitter.treelayout import NoEventTree, TreeLayout, UnsplittableFile, tree_layout

__all__ = [
    "DIRECTORY_CLASSES",
    "EVENT_CONTAINER_CLASSES",
    "Container",
    "EventTree",
    "event_trees",
    "list_containers",
]

# TNtuple(D) are TTrees to ROOT, but uproot's writer makes plain TTrees, so re-creating one
# would change its class.
_TREE_CLASSES = frozenset({"TTree", "TNtuple", "TNtupleD"})
_RNTUPLE_CLASSES = frozenset({"ROOT::RNTuple", "ROOT::Experimental::RNTuple"})
EVENT_CONTAINER_CLASSES = _TREE_CLASSES | _RNTUPLE_CLASSES
DIRECTORY_CLASSES = frozenset({"TDirectory", "TDirectoryFile"})


@dataclass(frozen=True)
class Container:
    """A TTree-like object; ``entries`` and ``obj`` are None when uproot cannot read it."""

    path: str
    classname: str
    entries: int | None
    obj: Any

    def unsplittable(self) -> UnsplittableFile | None:
        """Why this container cannot be sliced as a whole, if it cannot."""
        if self.obj is None:
            return UnsplittableFile(
                self.path, None, self.classname, "uproot cannot read this object"
            )
        if self.classname in _RNTUPLE_CLASSES:
            return UnsplittableFile(
                self.path, None, self.classname, "uproot's TTree writer cannot re-create an RNTuple"
            )
        if self.classname != "TTree":
            return UnsplittableFile(
                self.path,
                None,
                self.classname,
                "uproot writes plain TTrees only, so the class would change",
            )
        return None


@dataclass(frozen=True)
class EventTree:
    """A TTree to slice, opened for reading, with the layout that re-creates it."""

    path: str
    tree: Any
    layout: TreeLayout

    @property
    def entries(self) -> int:
        return int(self.tree.num_entries)


def list_containers(root_file: Any) -> list[Container]:
    """Every TTree, TNtuple and RNTuple of ``root_file`` (subdirectories included)."""
    containers = []
    for path, classname in root_file.classnames(recursive=True, cycle=False).items():
        if classname not in EVENT_CONTAINER_CLASSES:
            continue
        try:
            obj = root_file[path]
            # Some ROOT versions store fEntries as a double.
            entries: int | None = int(obj.num_entries)
        except Exception:
            # An object uproot cannot deserialise is still listed: it may be the event tree,
            # and then the file is unsplittable rather than without events.
            obj, entries = None, None
        containers.append(Container(str(path), str(classname), entries, obj))
    return containers


def event_trees(
    file_path: str, containers: list[Container], n_events: int | None
) -> list[EventTree]:
    """The containers holding ``n_events`` entries (default: the most), each checked for writing."""
    if not containers:
        raise NoEventTree(f"{file_path}: no TTree in the file")
    counts = [c.entries for c in containers if c.entries is not None]
    if n_events is None:
        if not counts:
            raise NoEventTree(f"{file_path}: uproot can read none of its TTrees")
        n_events = max(counts)
    matching = [c for c in containers if c.entries == n_events]
    if not matching:
        unreadable = [c for c in containers if c.entries is None]
        if unreadable:
            # It may well hold the events; delivering the file whole is then the honest answer.
            problem = unreadable[0].unsplittable()
            assert problem is not None
            raise problem
        listing = ", ".join(f"{c.path!r} ({c.entries} entries)" for c in containers)
        raise NoEventTree(f"{file_path}: no TTree has {n_events} entries; the TTrees are {listing}")
    found = []
    for container in matching:
        problem = container.unsplittable()
        if problem is not None:
            raise problem
        found.append(
            EventTree(container.path, container.obj, tree_layout(container.path, container.obj))
        )
    return found
