"""A source ROOT file as the splitter reads it: its header, directories, keys and records.

Consumes a file opened by uproot (``uproot_io``: local or remote; uproot parses its streamer
record); every other byte is read here by position, through uproot's source or, for a local
file, with ``pread``.
Produces the file's ``FileHeader``, its tree of ``Directory``s with their keys, the raw bytes of
any key and the uncompressed record of any key. Inconsistent bytes raise ``RecordError``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ess_split import uproot_io
from ess_split.format.buffer import Reader, RecordError
from ess_split.format.codecs import inflate
from ess_split.format.directory import DirectoryRecord, FileHeader, parse_keys_list
from ess_split.format.keys import Key, parse_key
from ess_split.format.streamers import Streamers

__all__ = ["DIRECTORY_CLASSES", "Directory", "SourceFile"]

DIRECTORY_CLASSES = frozenset({"TDirectory", "TDirectoryFile"})
_HEADER_BYTES = 100
# Enough for the top directory's key, name, title and record in one read.
_TOP_BYTES = 1024


@dataclass
class Directory:
    """A directory of the source: its path ("" at the top), its own key (None at the top),
    its record, its keys in list order, and its subdirectories."""

    path: str
    key: Key | None
    record: DirectoryRecord
    keys: list[Key]
    subdirectories: list[Directory] = field(default_factory=list)

    def walk(self) -> list[Directory]:
        """This directory and every one below it, parents first."""
        found = [self]
        for sub in self.subdirectories:
            found.extend(sub.walk())
        return found

    def child_path(self, name: str) -> str:
        return name if not self.path else f"{self.path}/{name}"


class SourceFile:
    """See the module's docstring. ``where`` names the file in messages."""

    def __init__(self, uproot_directory: Any, where: str, local: Path | None = None) -> None:
        self.uproot = uproot_directory
        self.where = where
        # A local file is read with pread on a descriptor of its own: no thread hand-off per read.
        self._fd = os.open(local, os.O_RDONLY) if local is not None else None
        #: Bytes read with pread (those read through uproot's source, uproot counts).
        self.pread_bytes = 0
        self.header = FileHeader.parse(self.read(0, _HEADER_BYTES))
        if not 0 < self.header.begin < self.header.end:
            raise RecordError(
                f"the header puts the file's start at {self.header.begin} "
                f"and its end at {self.header.end}"
            )
        top_stop = min(self.header.begin + _TOP_BYTES, self.header.end)
        top = self.read(self.header.begin, top_stop)
        key = parse_key(top)
        reader = Reader(top, key.keylen)
        self.name = reader.tstring()
        self.title = reader.tstring()
        if len(top) < reader.pos + 60:
            top = self.read(self.header.begin, self.header.begin + reader.pos + 60)
        self.top_key = key
        record = DirectoryRecord.parse(top, reader.pos)
        self.top = Directory("", None, record, self._keys(record))
        self._subdirectories(self.top, depth=0)
        self._streamers: Streamers | None = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.uproot.close()

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def streamers(self) -> Streamers:
        """The classes the file describes (uproot parses its streamer record)."""
        if self._streamers is None:
            header = self.header
            try:
                self._streamers = Streamers(uproot_io.class_infos(self.uproot))
            except Exception as exc:
                # Anything uproot raises here comes from the record's bytes.
                raise RecordError(
                    f"its streamer record at byte {header.seek_info} does not read ({exc})"
                ) from exc
        return self._streamers

    def read(self, start: int, stop: int) -> bytes:
        """Bytes ``start``..``stop - 1`` of the file."""
        if start < 0 or stop < start:
            raise RecordError(f"bytes {start}..{stop} are not a place in a file")
        if self._fd is not None:
            data = os.pread(self._fd, stop - start, start)
            self.pread_bytes += len(data)
        else:
            data = uproot_io.read(self.uproot, start, stop)
        if len(data) != stop - start:
            raise RecordError(f"{stop - start} bytes wanted at {start}, the file has {len(data)}")
        return data

    def raw(self, key: Key) -> bytes:
        """The whole stored key (header and stored record) of ``key``."""
        return self.read(key.seek_key, key.seek_key + key.nbytes)

    def payload(self, key: Key) -> bytes:
        """The uncompressed record of ``key``."""
        raw = self.raw(key)
        what = f"the {key.classname} {key.name!r} at byte {key.seek_key}"
        try:
            stored = parse_key(raw)
            if stored.nbytes != key.nbytes or stored.objlen != key.objlen:
                raise RecordError("its key does not match its directory's list")
            return inflate(memoryview(raw)[stored.keylen :], stored.objlen)
        except RecordError as exc:
            raise RecordError(f"{what}: {exc}") from exc

    def _keys(self, record: DirectoryRecord) -> list[Key]:
        if record.seek_keys <= 0 or record.nbytes_keys <= 0:
            return []
        raw = self.read(record.seek_keys, record.seek_keys + record.nbytes_keys)
        # A key list is never compressed, and ROOT reads it by the directory's fNbytesKeys,
        # whatever its own key says (some writers got that wrong).
        key = parse_key(raw)
        return parse_keys_list(raw[key.keylen :])

    def _subdirectories(self, directory: Directory, depth: int) -> None:
        if depth > 64:
            raise RecordError("directories nest more than 64 deep")
        for key in directory.keys:
            if key.classname not in DIRECTORY_CLASSES:
                continue
            raw = self.read(key.seek_key, key.seek_key + key.nbytes)
            on_disk = parse_key(raw)
            record = DirectoryRecord.parse(
                inflate(memoryview(raw)[on_disk.keylen : on_disk.nbytes], on_disk.objlen)
            )
            sub = Directory(directory.child_path(key.name), key, record, self._keys(record))
            directory.subdirectories.append(sub)
            self._subdirectories(sub, depth + 1)
