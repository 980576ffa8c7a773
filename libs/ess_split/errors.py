"""The errors of a split, from the least to the most specific.

``SplitError`` is anything that stops a file from being cut into range files. ``NoEventTree``:
no container holds the expected number of events. ``UnsplittableFile``: the file is sound, but
holds something ESS does not cut (it may be delivered whole). ``CorruptFile``: the file is not a
sound ROOT file (empty, truncated, not ROOT at all, or inconsistent inside); no attempt at it can
succeed, so callers fail it once, permanently.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CorruptFile", "NoEventTree", "SplitError", "UnsplittableFile"]


class SplitError(Exception):
    """A ROOT file that cannot be cut into event-range files."""


class NoEventTree(SplitError):
    """No TTree or RNTuple in the file holds the expected number of events."""


class CorruptFile(SplitError):
    """The file is not a sound ROOT file; ``how`` says what is wrong with it."""

    def __init__(self, path: str, how: str) -> None:
        self.path = path
        self.how = how
        super().__init__(f"{path}: corrupt ROOT file: {how}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a worker process, it crosses back to the parent by pickling.
        return (type(self), (self.path, self.how))


class UnsplittableFile(SplitError):
    """The file holds something the splitter does not cut.

    ``tree`` is the path of the container (or other object) concerned, ``branch`` the offending
    branch or member (None when the whole object is the problem) and ``typename`` its type.
    """

    def __init__(self, tree: str, branch: str | None, typename: str, reason: str) -> None:
        self.tree = tree
        self.branch = branch
        self.typename = typename
        self.reason = reason
        if branch is None:
            message = f"cannot split: {tree!r} has type {typename!r} ({reason})"
        else:
            message = f"cannot split {tree!r}: {branch!r} has type {typename!r} ({reason})"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.tree, self.branch, self.typename, self.reason))
