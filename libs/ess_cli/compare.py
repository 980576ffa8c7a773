"""Checking that range files hold exactly the source's events, branch by branch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import uproot


@dataclass(frozen=True)
class BranchCheck:
    tree: str
    branch: str
    events: int
    equal: bool


def compare_events(
    source: Path, piece: Path, start: int, last: int, local_start: int, local_last: int
) -> list[BranchCheck]:
    """Events start..last of the source (1-based) against local_start..local_last of the
    piece, for every branch of every tree of the piece."""
    checks = []
    with uproot.open(source) as src, uproot.open(piece) as out:
        for name, tree in out.items(filter_classname="TTree", cycle=False):
            original = src[name]
            for branch in tree.keys():  # noqa: SIM118 - uproot trees are not dicts
                want = original[branch].array(entry_start=start - 1, entry_stop=last)
                got = tree[branch].array(entry_start=local_start - 1, entry_stop=local_last)
                equal = bool(ak.array_equal(want, got))
                checks.append(BranchCheck(name, branch, len(got), equal))
    return checks
