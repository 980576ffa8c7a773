"""The one module that knows uproot: how the engine opens files and reads them through it.

Written for uproot 5.7 (checked on import: another minor version fails here, loudly, rather than
somewhere in a split). The engine opens a source file with uproot (local files, fsspec for
HTTP(S) and XRootD), reads its bytes by position through uproot's source, takes uproot's parse
of the file's streamer record (as ``ClassInfo``s) and, for remote splits, uses a source of its
own (``KeptSource``, a subclass of uproot's fsspec source) that answers from what earlier splits
of the same file fetched. Nothing else in the engine imports uproot.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uproot

from ess_split.format.streamers import ClassInfo, Element

__all__ = [
    "KEPT",
    "KeptSource",
    "check_version",
    "class_infos",
    "fsspec_handler",
    "local_handler",
    "num_requested_bytes",
    "open_file",
    "read",
    "set_identity",
    "streamer_dependencies",
]

#: The uproot release this module was written for (major, minor).
WRITTEN_FOR = (5, 7)


def check_version(version: str = uproot.__version__) -> None:
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    if major_minor != WRITTEN_FOR:
        raise ImportError(
            f"ess_split.uproot_io was written for uproot {WRITTEN_FOR[0]}.{WRITTEN_FOR[1]}, "
            f"found {version}: check its sources and streamer interfaces, then update it"
        )


check_version()


def open_file(path_or_url: str | Path, **options: Any) -> Any:
    """The file opened by uproot (its root ``ReadOnlyDirectory``), reading no array. Bytes that
    do not read as ROOT writes them raise ValueError, as uproot's other checks do."""
    try:
        return uproot.open(path_or_url, array_cache=None, **options)
    except uproot.deserialization.DeserializationError as exc:
        text = str(exc).strip().splitlines()
        raise ValueError(f"its records do not read ({text[0] if text else 'uproot'})") from exc


def read(directory: Any, start: int, stop: int) -> bytes:
    """Bytes ``start``..``stop - 1`` of an open file, through its uproot source."""
    return bytes(directory.file.source.chunk(start, stop).raw_data)


def set_identity(directory: Any, identity: str) -> None:
    """Tell an open file's ``KeptSource`` whose content it reads."""
    directory.file.source.identity = identity


def class_infos(directory: Any) -> dict[str, dict[int, ClassInfo]]:
    """The classes the file's streamer record describes, by name and version."""
    found: dict[str, dict[int, ClassInfo]] = {}
    for name, versions in directory.file.streamers.items():
        for version, raw in versions.items():
            found.setdefault(str(name), {})[int(version)] = ClassInfo(
                str(name),
                int(version),
                int(raw.member("fCheckSum")),
                tuple(_element(element) for element in raw.elements),
            )
    return found


def streamer_dependencies(directory: Any, classname: str) -> list[str]:
    """The classes ``classname``'s streamer records refer to, as uproot follows them."""
    found = directory.file.streamer_dependencies(classname, version="all")
    return [str(name) for name, _ in found]


def _element(raw: Any) -> Element:
    def member(name: str) -> Any:
        try:
            return raw.member(name)
        except Exception:
            return None

    kind = type(raw).__name__
    return Element(
        name=str(member("fName")),
        type=int(member("fType")),
        typename=str(member("fTypeName") or ""),
        array_length=int(member("fArrayLength") or 0),
        title=str(member("fTitle") or ""),
        count_name=None if member("fCountName") is None else str(member("fCountName")),
        base_version=int(member("fBaseVersion")) if kind == "Model_TStreamerBase" else None,
        stl_type=None if member("fSTLtype") is None else int(member("fSTLtype")),
        ctype=None if member("fCtype") is None else int(member("fCtype")),
    )


def local_handler() -> Any:
    """One file handle read at each basket's position: neither an open per read (uproot's
    default for local paths) nor a memory map, whose pages would count as the process's."""
    return uproot.source.file.MultithreadedFileSource


def fsspec_handler(keep: bool) -> Any:
    return KeptSource if keep else uproot.source.fsspec.FSSpecSource


def num_requested_bytes(uproot_directory: Any) -> int:
    """Bytes the file's source was asked for so far."""
    return int(uproot_directory.file.source.num_requested_bytes)


class Kept:
    """What splits of remote files fetched (the opening: header, directories, streamers,
    records; then basket beginnings), kept in this process by the file's identity as byte runs
    from the positions asked for. A later range of the same file fetches only what no earlier
    one did. Bounded: least recently used first out."""

    max_bytes = 256 * 1024 * 1024
    #: Files whose opening runs are remembered (``openings``).
    max_openings = 4096

    def __init__(self) -> None:
        self.runs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.bytes = 0
        #: Where the runs of each file's opening start, in the order they were read.
        self.openings: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.local = threading.local()
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def opening(self, identity: str | None) -> Iterator[list[int]]:
        """The file opened in this thread within the block is ``identity``'s (uproot opens it
        before its source can be told); yields the starts of the runs read meanwhile."""
        starts: list[int] = []
        self.local.identity = identity
        self.local.starts = starts
        try:
            yield starts
        finally:
            self.local.identity = None
            self.local.starts = None

    def opened(self) -> str | None:
        return getattr(self.local, "identity", None)

    def read_at(self, start: int) -> None:
        starts = getattr(self.local, "starts", None)
        if starts is not None:
            starts.append(start)

    def opened_with(self, identity: str, starts: list[int]) -> None:
        with self.lock:
            self.openings[identity] = tuple(dict.fromkeys(starts))
            self.openings.move_to_end(identity)
            while len(self.openings) > self.max_openings:
                self.openings.popitem(last=False)

    def opening_runs(self, identity: str) -> list[tuple[int, bytes]] | None:
        with self.lock:
            starts = self.openings.get(identity)
            if starts is None:
                return None
            runs = [(start, self.runs.get((identity, start))) for start in starts]
        if any(data is None for _, data in runs):
            return None
        return [(start, data) for start, data in runs if data is not None]

    def get(self, identity: str, start: int) -> bytes | None:
        with self.lock:
            data = self.runs.get((identity, start))
            if data is not None:
                self.runs.move_to_end((identity, start))
            return data

    def put(self, identity: str, start: int, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:
            return
        with self.lock:
            old = self.runs.pop((identity, start), None)
            self.bytes -= len(old) if old is not None else 0
            self.runs[(identity, start)] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, dropped = self.runs.popitem(last=False)
                self.bytes -= len(dropped)

    def clear(self) -> None:
        with self.lock:
            self.runs.clear()
            self.openings.clear()
            self.bytes = 0


KEPT = Kept()


class KeptSource(uproot.source.fsspec.FSSpecSource):  # type: ignore[misc]
    """uproot's fsspec source, answering from ``KEPT`` what was fetched of the same file
    before and fetching only the rest. Its ``identity`` is set once the file is open; while
    it opens, the opening thread's."""

    identity: str | None = None

    def chunk(self, start: int, stop: int) -> Any:
        identity = self.identity or KEPT.opened()
        if identity is None:
            return super().chunk(start, stop)
        KEPT.read_at(start)
        held = KEPT.get(identity, start) or b""
        if len(held) >= stop - start:
            data = held[: stop - start]
        else:
            rest = super().chunk(start + len(held), stop)
            data = held + bytes(rest.raw_data)
            KEPT.put(identity, start, data)
        return uproot.source.chunk.Chunk(
            self, start, stop, uproot.source.futures.TrivialFuture(data)
        )
