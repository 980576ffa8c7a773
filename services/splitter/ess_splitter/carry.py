"""Carry everything but the event trees into every range file, whole.

Consumes an open uproot file, its containers and the paths of its event trees. Produces a
``CarryPlan`` made before any range is written, and a ``Carrier`` that writes the plan into each
range file:

- TTrees with another entry count (metadata, run or luminosity trees) are re-created whole with
  uproot's TTree writer, under the same path and title, with the same branch layout rules as the
  event trees (``treelayout``); their entries are read once per split and held in memory.
- Every other object (histograms, profiles, graphs, TObjString, TParameter, TNamed, fit results,
  user classes) and every directory is copied key by key with uproot's ``copy_from``: the
  compressed bytes and the streamers of its class are taken over unchanged, so the object in a
  range file is byte for byte the one in the source, whatever its class.

Some objects cannot be carried: TTrees of types uproot cannot write, TNtuples, RNTuples, objects
whose class holds a TTree (their baskets live outside the object's key) and keys whose names
uproot cannot address (``:`` or ``;`` in a name). They are not half-carried: each is left out of
every range file and listed in ``CarryPlan.skipped``, which the caller reports. A physicist
opening a range file then finds the events and every carried object exactly as in the source,
and a missing object is missing outright, never truncated or re-typed. Operators who prefer such
files not to be split at all ask for that with the caller's ``uncarried`` policy.

Directory titles are not kept: uproot's writer has no way to set them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ess_splitter.inventory import DIRECTORY_CLASSES, Container
from ess_splitter.treelayout import SplitError, TreeLayout, UnsplittableFile, tree_layout

__all__ = ["Carrier", "CarryPlan", "Skipped", "plan_carry"]

# A class whose streamer refers to one of these holds a TTree, whose baskets are separate
# records at offsets of the source file; a byte copy of the object would point nowhere.
_TREE_PARTS = frozenset({"TTree", "TNtuple", "TNtupleD", "TBranch", "TBasket", "TBranchElement"})


@dataclass(frozen=True)
class Skipped:
    """An object of the source left out of every range file, and why.

    For a TTree, ``branch`` and ``typename`` name the first branch uproot cannot write.
    """

    path: str
    classname: str
    reason: str
    branch: str | None = None
    typename: str | None = None

    def __str__(self) -> str:
        if self.branch is None:
            return f"{self.path} ({self.classname}): {self.reason}"
        return (
            f"{self.path} ({self.classname}): branch {self.branch!r} has type "
            f"{self.typename!r} ({self.reason})"
        )

    def unsplittable(self) -> UnsplittableFile:
        """The same as the error that makes a file unsplittable."""
        return UnsplittableFile(
            self.path, self.branch, self.typename or self.classname, f"not carried: {self.reason}"
        )


@dataclass(frozen=True)
class CarriedTree:
    layout: TreeLayout
    entries: int


@dataclass(frozen=True)
class CarryPlan:
    """What every range file gets besides the event trees."""

    copied: tuple[str, ...] = ()
    trees: tuple[CarriedTree, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def plan_carry(root_file: Any, containers: list[Container], event_paths: set[str]) -> CarryPlan:
    """Decide, for every key of ``root_file`` that is not an event tree, how it is carried."""
    by_path = {c.path: c for c in containers}
    copied: list[str] = []
    trees: list[CarriedTree] = []
    skipped: list[Skipped] = []
    for raw_path, raw_classname in root_file.classnames(recursive=True, cycle=False).items():
        path, classname = str(raw_path), str(raw_classname)
        if path in event_paths:
            continue
        if ":" in path or ";" in path:
            skipped.append(
                Skipped(path, classname, "uproot cannot address a key whose name has ':' or ';'")
            )
        elif path in by_path:
            carried = _carried_tree(by_path[path])
            if isinstance(carried, Skipped):
                skipped.append(carried)
            else:
                trees.append(carried)
        elif classname in DIRECTORY_CLASSES:
            copied.append(path)
        elif _holds_tree(root_file, classname):
            skipped.append(
                Skipped(path, classname, "its class holds a TTree, which uproot cannot copy")
            )
        else:
            copied.append(path)
    return CarryPlan(tuple(copied), tuple(trees), tuple(skipped))


def _carried_tree(container: Container) -> CarriedTree | Skipped:
    problem = container.unsplittable()
    if problem is not None:
        return Skipped(container.path, container.classname, problem.reason)
    try:
        layout = tree_layout(container.path, container.obj)
    except UnsplittableFile as exc:
        return Skipped(container.path, container.classname, exc.reason, exc.branch, exc.typename)
    except SplitError as exc:
        return Skipped(container.path, container.classname, str(exc))
    assert container.entries is not None
    return CarriedTree(layout, container.entries)


def _holds_tree(root_file: Any, classname: str) -> bool:
    try:
        dependencies = root_file.file.streamer_dependencies(classname, version="all")
    except Exception:
        # Without a streamer (built-in classes of files that do not store theirs) there is
        # nothing that could refer to a TTree.
        return False
    return any(str(name) in _TREE_PARTS for name, _ in dependencies)


class Carrier:
    """Writes a ``CarryPlan`` into range files; reads the carried trees' entries once."""

    def __init__(self, root_file: Any, plan: CarryPlan) -> None:
        self._source = root_file
        self._plan = plan
        self._copied = frozenset(plan.copied)
        self._entries: dict[str, dict[str, Any]] = {
            carried.layout.path: root_file[carried.layout.path].arrays(library="ak", how=dict)
            for carried in plan.trees
            if carried.entries > 0
        }

    def write_into(self, out_file: Any) -> None:
        """Add every carried object to ``out_file`` (an uproot WritableDirectory)."""
        if self._copied:
            _copy_keys(out_file, self._source, self._copied)
        for carried in self._plan.trees:
            layout = carried.layout
            tree = out_file.mktree(
                layout.path,
                layout.branch_types,
                title=layout.title,
                counter_name=layout.counter_name,
                # One basket per branch and uproot's one spare slot.
                initial_basket_capacity=2,
            )
            if layout.path in self._entries:
                tree.extend(self._entries[layout.path])


def _copy_keys(out_file: Any, source: Any, names: frozenset[str]) -> None:
    make_directory = out_file.mkdir

    def mkdir(name: str, **options: Any) -> Any:
        # uproot 5.7's copy_from asks for a directory named "" to hold the objects at the top
        # level, and mkdir("") makes one; the top level is the file's own directory.
        if name.strip("/") == "":
            return out_file
        return make_directory(name, **options)

    out_file.mkdir = mkdir
    try:
        out_file.copy_from(source, filter_name=names.__contains__)
    finally:
        del out_file.mkdir
