"""Write range files: the source's skeleton once per split, then per range its baskets, trees,
key lists and header.

Consumes the source file, the split's plan (which trees are cut, which objects are carried
whole) and, per range, the baskets of every branch of every cut tree. A ``FileTemplate`` is
written once per split: the header's place, the top directory, every subdirectory's record,
every carried object's key copied as stored (histograms, metadata, ProcessIDs: byte for byte,
only the two positions in its key changed), every carried tree with its baskets (its record
patched for its baskets' new positions), and the source's streamer record as stored. A
``RangeFileWriter`` copies that prefix, appends the range's baskets and then, at the end, each
cut tree's record (``TreeTemplate``), each directory's list of keys, the free segments, and
patches the header, the top directory and the subdirectories' records for where those went.
It computes the file's adler32 as it writes (the patched prefix is combined in at the end) and
writes to a temporary name, renamed into place on ``commit``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ess_split.errors import SplitError
from ess_split.format.buffer import RecordError, tstring
from ess_split.format.codecs import Compression, compress, kept_compression
from ess_split.format.directory import (
    BEGIN,
    DIRECTORY_SIZE,
    DirectoryRecord,
    FileHeader,
    free_segments,
    keys_list,
    new_uuid,
    top_directory_payload,
)
from ess_split.format.keys import (
    BIG_FILE,
    BIG_KEY_VERSION,
    SMALL_KEY_VERSION,
    Key,
    datime,
    new_key,
    parse_key,
)
from ess_split.format.record import Edit, Rewrite
from ess_split.rntuple import NTuple
from ess_split.sourcefile import DIRECTORY_CLASSES, Directory, SourceFile
from ess_split.ttree.baskets import Decoded, Piece, decode_keyed
from ess_split.ttree.clusters import Clusters
from ess_split.ttree.model import TreeRecord
from ess_split.ttree.source import Copy
from ess_split.ttree.template import BranchBaskets, TreeTemplate

__all__ = ["CutNTuple", "CutTree", "FileTemplate", "RangeFileWriter", "WrittenFile"]

_BASKET_VERSION = 3
_BASKET_HEADER = struct.Struct(">Hiiiib")
_I32 = struct.Struct(">i")
_ADLER_BASE = 65521
# Bytes after the basket header's fields: TBasket's own header is 19 bytes.
_BASKET_FIELDS = _BASKET_HEADER.size
_PREFIX_LIMIT = BIG_FILE


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    adler32: str


@dataclass
class CutTree:
    """A tree cut into ranges: its source key and record, its directory, its template."""

    key: Key
    record: TreeRecord
    directory: str
    template: TreeTemplate
    #: Each branch's ``fCompress``, for baskets encoded anew in the source's compression.
    settings: list[int] = field(default_factory=list)


@dataclass
class CutNTuple:
    """An RNTuple cut into ranges: its source key, its directory, the RNTuple."""

    key: Key
    directory: str
    ntuple: NTuple


@dataclass
class _DirSlot:
    path: str
    source: Directory
    key: Key | None
    seek_dir: int
    record_at: int
    parent: int | None
    #: The directory's key list in the range file, in the source's order: a carried key, or
    #: the index of a cut tree whose key is written per range, or of a subdirectory.
    entries: list[Key | tuple[str, int]] = field(default_factory=list)


class FileTemplate:
    """The part of every range file of a split that does not depend on the range."""

    def __init__(
        self,
        source: SourceFile,
        cut: Sequence[CutTree],
        carried_objects: Sequence[Key],
        carried_trees: Sequence[tuple[Key, TreeRecord]],
        compression: Compression | None,
        ntuples: Sequence[CutNTuple] = (),
        carried_ntuples: Sequence[tuple[Key, NTuple]] = (),
    ) -> None:
        self.source = source
        self.cut = list(cut)
        self.ntuples = list(ntuples)
        #: The range files' compression when the operator chose one (None: the source's).
        self.explicit = compression
        self.compression = compression or Compression.from_code(source.header.compress)
        self.datime = datime()
        self.basket_keys = [
            [BasketKeys(branch.name, tree.key.name, self.datime) for branch in tree.record.branches]
            for tree in self.cut
        ]
        prefix = bytearray(BEGIN)
        self.name_title = top_directory_payload(source.name, source.title, source.top.record)
        top_key = new_key(
            "TFile",
            source.name,
            source.title,
            objlen=len(self.name_title),
            stored=len(self.name_title),
            seek_key=BEGIN,
            seek_pdir=0,
            when=self.datime,
        )
        self.top_key = top_key
        self.nbytes_name = top_key.keylen + len(self.name_title) - DIRECTORY_SIZE
        prefix += top_key.pack() + self.name_title
        self.dirs: list[_DirSlot] = [
            _DirSlot("", source.top, None, BEGIN, BEGIN + self.nbytes_name, None)
        ]
        index_of = {"": 0}
        for directory in source.top.walk()[1:]:
            assert directory.key is not None
            parent_path = directory.path.rpartition("/")[0]
            parent = index_of[parent_path]
            position = len(prefix)
            source_key = directory.key
            key = new_key(
                source_key.classname,
                source_key.name,
                source_key.title,
                objlen=DIRECTORY_SIZE,
                stored=DIRECTORY_SIZE,
                seek_key=position,
                seek_pdir=self.dirs[parent].seek_dir,
                cycle=source_key.cycle,
                when=source_key.datime,
            )
            # The record is filled in per range file, when its key list has a place.
            prefix += key.pack() + bytes(DIRECTORY_SIZE)
            index_of[directory.path] = len(self.dirs)
            self.dirs.append(
                _DirSlot(directory.path, directory, key, position, position + key.keylen, parent)
            )
        carried = {_ident(key) for key in carried_objects}
        carried_tree_keys = {_ident(key): record for key, record in carried_trees}
        carried_ntuple_keys = {_ident(key): ntuple for key, ntuple in carried_ntuples}
        cut_keys = {_ident(tree.key): i for i, tree in enumerate(self.cut)}
        cut_ntuple_keys = {_ident(n.key): i for i, n in enumerate(self.ntuples)}
        for slot in self.dirs:
            for key in slot.source.keys:
                ident = _ident(key)
                if ident in cut_keys:
                    slot.entries.append(("tree", cut_keys[ident]))
                elif ident in cut_ntuple_keys:
                    slot.entries.append(("ntuple", cut_ntuple_keys[ident]))
                elif key.classname in DIRECTORY_CLASSES:
                    path = slot.source.child_path(key.name)
                    if path in index_of:
                        slot.entries.append(("dir", index_of[path]))
                elif ident in carried_ntuple_keys:
                    anchor = carried_ntuple_keys[ident].cut(
                        0, carried_ntuple_keys[ident].entries, _PrefixSink(prefix, slot.seek_dir)
                    )
                    placed = new_key(
                        key.classname,
                        key.name,
                        key.title,
                        objlen=len(anchor),
                        stored=len(anchor),
                        seek_key=len(prefix),
                        seek_pdir=slot.seek_dir,
                        cycle=key.cycle,
                        when=key.datime,
                    )
                    prefix += placed.pack() + anchor
                    slot.entries.append(placed)
                elif ident in carried:
                    raw = source.raw(key)
                    # The record's own key, not the list's, says where its record starts.
                    on_disk = parse_key(raw)
                    placed = on_disk.placed(len(prefix), slot.seek_dir)
                    prefix += placed.header() + raw[len(on_disk.header()) :]
                    slot.entries.append(placed)
                elif ident in carried_tree_keys:
                    placed = self._carry_tree(prefix, key, carried_tree_keys[ident], slot.seek_dir)
                    slot.entries.append(placed)
        info_at = source.header.seek_info
        self.streamers_key: Key | None = None
        if info_at > 0 and source.header.nbytes_info > 0:
            raw = source.read(info_at, info_at + source.header.nbytes_info)
            info = parse_key(raw)
            placed = info.placed(len(prefix), BEGIN)
            prefix += placed.pack() + raw[info.keylen :]
            self.streamers_key = placed
        if len(prefix) > _PREFIX_LIMIT:
            raise SplitError("what every range file carries whole exceeds 2 GB")
        self.prefix = bytes(prefix)

    def _carry_tree(self, prefix: bytearray, key: Key, tree: TreeRecord, seek_pdir: int) -> Key:
        """Copy a tree whole: its baskets, then its record with their new positions."""
        edits: list[Edit] = []
        for branch in tree.branches:
            seeks = branch.basket_seek.copy()
            if not any(slot.embedded is None for slot in branch.slots):
                continue
            for slot in branch.slots:
                if slot.embedded is not None:
                    continue
                raw = self.source.read(slot.seek, slot.seek + slot.nbytes)
                basket = parse_key(raw)
                placed = basket.placed(len(prefix), seek_pdir)
                if placed.keylen != basket.keylen:
                    raise SplitError("a carried tree's basket would need a 64-bit key")
                prefix += placed.header() + raw[len(basket.header()) :]
                seeks[slot.number] = placed.seek_key
            value = branch.member("fBasketSeek")
            itemsize = (value.end - value.start - 1) // len(seeks)
            edits.append(
                Edit(value.start, value.end, b"\x01" + seeks.astype(f">i{itemsize}").tobytes())
            )

        def keyed(keylen: int) -> tuple[Key, bytes]:
            rewrite = edits or keylen != key.keylen
            data = Rewrite(tree.walk, edits, keylen).data if rewrite else tree.walk.data
            stored = compress(data, self.compression)
            return new_key(
                key.classname,
                key.name,
                key.title,
                objlen=len(data),
                stored=len(stored),
                seek_key=len(prefix),
                seek_pdir=seek_pdir,
                cycle=key.cycle,
                when=key.datime,
            ), stored

        placed_key, stored = keyed(key.placed(len(prefix), seek_pdir).keylen)
        if placed_key.keylen != key.keylen:
            # References in the record count from the key's start: redo them for this key.
            placed_key, stored = keyed(placed_key.keylen)
        prefix += placed_key.pack() + stored
        return placed_key

    def open(self, final: Path) -> RangeFileWriter:
        return RangeFileWriter(self, final)

    def dir_seek(self, path: str) -> int:
        for slot in self.dirs:
            if slot.path == path:
                return slot.seek_dir
        raise KeyError(path)


def _ident(key: Key) -> tuple[int, str, int]:
    return (key.seek_key, key.name, key.cycle)


class _PrefixSink:
    """RNTuple blobs of a carried RNTuple, written into the template's prefix."""

    def __init__(self, prefix: bytearray, directory: int) -> None:
        self._prefix = prefix
        self._directory = directory

    def write_blob(self, data: bytes, objlen: int) -> int:
        key = _blob_key(data, objlen, len(self._prefix), self._directory)
        self._prefix += key.pack() + data
        return key.seek_key + key.keylen


def _blob_key(data: bytes, objlen: int, position: int, directory: int) -> Key:
    return new_key(
        "RBlob",
        "",
        "",
        objlen=objlen,
        stored=len(data),
        seek_key=position,
        seek_pdir=directory,
        big=True,
    )


class RangeFileWriter:
    """One range file being written; see the module's docstring."""

    def __init__(self, template: FileTemplate, final: Path) -> None:
        self._template = template
        self._final = final
        self._temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        self._stream = self._temp.open("wb")
        self._stream.write(template.prefix)
        self._end = len(template.prefix)
        self._adler = 1
        self._baskets = [
            [BranchBaskets.empty() for _ in tree.record.branches] for tree in template.cut
        ]
        self._anchors: list[bytes | None] = [None] * len(template.ntuples)
        #: Where each cut tree's directory record is, by tree.
        self._directories = [template.dir_seek(tree.directory) for tree in template.cut]

    def write_blob(self, data: bytes, objlen: int) -> int:
        """Append a key of class RBlob holding ``data``; return where ``data`` starts."""
        key = _blob_key(data, objlen, self._end, BEGIN)
        self._append(key.pack() + data)
        return key.seek_key + key.keylen

    def add_ntuple(self, index: int, first: int, stop: int) -> None:
        """Append the pages and envelopes of entries ``first``..``stop - 1`` of RNTuple
        ``index``; its anchor is written with the directories."""
        self._anchors[index] = self._template.ntuples[index].ntuple.cut(first, stop, self)

    def add(self, tree: int, branch: int, first: int, piece: Piece) -> None:
        """Append one basket of branch ``branch`` of cut tree ``tree``, beginning at source
        entry ``first``."""
        cut = self._template.cut[tree]
        directory = self._directories[tree]
        if piece.copied:
            decoded: Decoded = decode_keyed(piece.data, cut.record.name)
            piece = decoded.cut(0, decoded.entries, cut.record.branches[branch].may_refer)
        compression = self._template.explicit or kept_compression(
            piece.algorithm, cut.settings[branch], self._template.source.header.compress
        )
        keys = self._template.basket_keys[tree][branch]
        data, nbytes, total = keys.record(piece, self._end, directory, compression)
        self._baskets[tree][branch].add(first, self._end, nbytes, piece.entries, total)
        self._append(data)

    def add_copies(self, copies: Sequence[tuple[int, int, Copy]]) -> None:
        """Append source baskets taken over whole, ``(tree, branch, copy)`` each. Baskets that
        lie next to each other in the source are read and written in one go, with each key's
        position patched."""
        local = sorted((c for c in copies if c[2].raw is None), key=lambda c: c[2].slot.seek)
        runs: list[list[tuple[int, int, Copy]]] = []
        for copy in local:
            slot = copy[2].slot
            if runs:
                last = runs[-1][-1][2].slot
                if last.seek + last.nbytes == slot.seek:
                    runs[-1].append(copy)
                    continue
            runs.append([copy])
        runs.extend([copy] for copy in copies if copy[2].raw is not None)
        for run in runs:
            first = run[0][2]
            if first.raw is not None:
                raw = first.raw
            else:
                last = run[-1][2].slot
                raw = self._template.source.read(first.slot.seek, last.seek + last.nbytes)
            self._copy_run(run, raw)

    def _copy_run(self, run: list[tuple[int, int, Copy]], raw: bytes) -> None:
        data = bytearray(raw)
        start = run[0][2].slot.seek
        base = self._end
        done = 0
        directories = self._directories
        baskets = self._baskets
        for tree, branch, copy in run:
            slot = copy.slot
            offset = slot.seek - start
            nbytes, version, objlen, keylen = _KEY_HEAD.unpack_from(data, offset)
            if nbytes != slot.nbytes:
                raise RecordError(f"a basket at {slot.seek} is not the size its branch says")
            if version <= 1000 and base + offset + nbytes > BIG_FILE:
                # A 32-bit key cannot be placed past 2 GB: the basket is encoded anew.
                self._append(bytes(data[done:offset]))
                base = self._end - offset - nbytes
                piece = Piece(
                    bytes(data[offset : offset + nbytes]),
                    None,
                    None,
                    slot.stop - slot.first,
                    0,
                    0,
                    copied=True,
                )
                self.add(tree, branch, slot.first, piece)
                done = offset + nbytes
                base = self._end - done
                continue
            seeks = _SEEKS_BIG if version > 1000 else _SEEKS_SMALL
            seeks.pack_into(data, offset + _SEEKS_AT, base + offset, directories[tree])
            baskets[tree][branch].add(
                slot.first, base + offset, nbytes, slot.stop - slot.first, keylen + objlen
            )
        self._append(bytes(data[done:]))

    def _dir_seek(self, path: str) -> int:
        return self._template.dir_seek(path)

    def _append(self, data: bytes) -> None:
        self._stream.write(data)
        self._adler = zlib.adler32(data, self._adler)
        self._end += len(data)

    def commit(
        self, first: int, entries: Sequence[int], clusters: Sequence[Clusters | None]
    ) -> WrittenFile:
        """Write the cut trees (``entries`` each, ``clusters``), the directories' key lists, the
        free segments and the header; rename into place."""
        try:
            return self._commit(first, entries, clusters)
        except BaseException:
            self.abort()
            raise

    def _commit(
        self, first: int, entries: Sequence[int], clusters: Sequence[Clusters | None]
    ) -> WrittenFile:
        template = self._template
        tree_keys: list[Key] = []
        for index, cut in enumerate(template.cut):
            directory = self._dir_seek(cut.directory)
            keylen = new_key(
                cut.key.classname,
                cut.key.name,
                cut.key.title,
                objlen=0,
                stored=0,
                seek_key=0,
                seek_pdir=0,
                big=True,
            ).keylen
            data = cut.template.record(
                keylen, first, entries[index], self._baskets[index], clusters[index]
            )
            stored = compress(data, template.compression)
            key = new_key(
                cut.key.classname,
                cut.key.name,
                cut.key.title,
                objlen=len(data),
                stored=len(stored),
                seek_key=self._end,
                seek_pdir=directory,
                cycle=cut.key.cycle,
                when=template.datime,
                big=True,
            )
            self._append(key.pack() + stored)
            tree_keys.append(key)
        anchor_keys: list[Key] = []
        for index, cut_ntuple in enumerate(template.ntuples):
            anchor = self._anchors[index]
            if anchor is None:
                raise ValueError(f"RNTuple {cut_ntuple.key.name!r} got no entries")
            source_key = cut_ntuple.key
            key = new_key(
                source_key.classname,
                source_key.name,
                source_key.title,
                objlen=len(anchor),
                stored=len(anchor),
                seek_key=self._end,
                seek_pdir=self._dir_seek(cut_ntuple.directory),
                cycle=source_key.cycle,
                when=template.datime,
            )
            self._append(key.pack() + anchor)
            anchor_keys.append(key)
        prefix = bytearray(template.prefix)
        file_uuid = new_uuid()
        dir_keys: dict[int, Key] = {}
        lists: dict[int, tuple[int, int]] = {}
        for index in range(len(template.dirs) - 1, -1, -1):
            slot = template.dirs[index]
            listed: list[Key] = []
            for entry in slot.entries:
                if isinstance(entry, Key):
                    listed.append(entry)
                elif entry[0] == "tree":
                    listed.append(tree_keys[entry[1]])
                elif entry[0] == "ntuple":
                    listed.append(anchor_keys[entry[1]])
                else:
                    listed.append(dir_keys[entry[1]])
            payload = keys_list(listed)
            name, title, classname = (
                (template.source.name, template.source.title, "TFile")
                if slot.key is None
                else (slot.key.name, slot.key.title, slot.key.classname)
            )
            key = new_key(
                classname,
                name,
                title,
                objlen=len(payload),
                stored=len(payload),
                seek_key=self._end,
                seek_pdir=slot.seek_dir,
                when=template.datime,
            )
            self._append(key.pack() + payload)
            lists[index] = (key.seek_key, key.nbytes)
            if slot.key is not None:
                dir_keys[index] = slot.key
        for index, slot in enumerate(template.dirs):
            seek_keys, nbytes_keys = lists[index]
            source_record = slot.source.record
            record = DirectoryRecord(
                datime_c=template.datime if slot.key is None else source_record.datime_c,
                datime_m=template.datime if slot.key is None else source_record.datime_m,
                nbytes_keys=nbytes_keys,
                nbytes_name=template.nbytes_name if slot.key is None else slot.key.keylen,
                seek_dir=slot.seek_dir,
                seek_parent=0 if slot.parent is None else template.dirs[slot.parent].seek_dir,
                seek_keys=seek_keys,
                uuid=file_uuid if slot.key is None else new_uuid(),
            )
            packed = record.pack()
            prefix[slot.record_at : slot.record_at + len(packed)] = packed
        free = free_segments(self._end)
        free_key = new_key(
            "TFile",
            template.source.name,
            template.source.title,
            objlen=len(free),
            stored=len(free),
            seek_key=self._end,
            seek_pdir=BEGIN,
            when=template.datime,
        )
        seek_free = self._end
        self._append(free_key.pack() + free)
        streamers = template.streamers_key
        header = FileHeader(
            version=template.source.header.version,
            begin=BEGIN,
            end=self._end,
            seek_free=seek_free,
            nbytes_free=free_key.nbytes,
            nfree=1,
            nbytes_name=template.nbytes_name,
            units=4,
            compress=template.compression.code,
            seek_info=0 if streamers is None else streamers.seek_key,
            nbytes_info=0 if streamers is None else streamers.nbytes,
            uuid=file_uuid,
        )
        prefix[:BEGIN] = header.pack()
        self._stream.seek(0)
        self._stream.write(prefix)
        self._stream.close()
        tail = self._end - len(prefix)
        adler = _adler32_combine(zlib.adler32(prefix), self._adler, tail)
        os.replace(self._temp, self._final)
        return WrittenFile(self._final, self._end, f"{adler:08x}")

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()
        self._temp.unlink(missing_ok=True)


#: A key's fNbytes, fVersion, fObjlen, (fDatime skipped) and fKeylen.
_KEY_HEAD = struct.Struct(">ihi4xh")
_SEEKS_AT = 18
_SEEKS_BIG = struct.Struct(">qq")
_SEEKS_SMALL = struct.Struct(">ii")


class BasketKeys:
    """The keys of one branch's new baskets, whose strings are the same for every basket of the
    branch: 64-bit TKeys (as ROOT 6 writes baskets' keys, wherever they are), or 32-bit ones
    where the piece's source basket had one and the file is still small, so that its entries
    keep the positions they were written at."""

    _START = struct.Struct(">ihiIhhqq")
    _START_SMALL = struct.Struct(">ihiIhhii")

    def __init__(self, branch: str, tree: str, datime: int) -> None:
        self.strings = tstring("TBasket") + tstring(branch) + tstring(tree)
        self.keylen = self._START.size + len(self.strings) + _BASKET_FIELDS
        self.small_keylen = self._START_SMALL.size + len(self.strings) + _BASKET_FIELDS
        self.datime = datime

    def record(
        self, piece: Piece, position: int, directory: int, compression: Compression | None
    ) -> tuple[bytes, int, int]:
        """A basket key holding ``piece``'s entries: ``(bytes, nbytes, keylen + objlen)``."""
        small = (
            piece.keylen == self.small_keylen
            and position + 2 * (len(piece.data) + 16 * piece.entries) + 4096 < BIG_FILE
        )
        keylen = self.small_keylen if small else self.keylen
        n = piece.entries
        if piece.offsets is None:
            payload = piece.data
            nev_buf_size = piece.entry_size
        else:
            offsets = np.empty(n + 2, ">i4")
            offsets[0] = n + 1
            offsets[1 : n + 1] = piece.offsets[:n] + keylen
            offsets[n + 1] = 0
            parts = [piece.data, offsets.tobytes()]
            if piece.originals is not None and not np.array_equal(
                piece.originals, piece.offsets[:n] + keylen
            ):
                # The entries moved: where each was written at first, for ROOT to resolve the
                # references inside it (TBasket's fDisplacement).
                displacement = np.empty(n + 2, ">i4")
                displacement[0] = n + 1
                displacement[1 : n + 1] = piece.originals
                displacement[n + 1] = 0
                parts.append(displacement.tobytes())
            payload = b"".join(parts)
            nev_buf_size = max(piece.nev_buf_size, n + 1)
            if nev_buf_size * n == len(piece.data):
                # uproot takes a basket whose bytes are fNevBufSize per entry for one without
                # entry offsets.
                nev_buf_size += 1
        stored = compress(payload, compression)
        objlen = len(payload)
        nbytes = keylen + len(stored)
        start = self._START_SMALL if small else self._START
        version = SMALL_KEY_VERSION if small else BIG_KEY_VERSION
        header = start.pack(nbytes, version, objlen, self.datime, keylen, 0, position, directory)
        fields = _BASKET_HEADER.pack(
            _BASKET_VERSION, keylen + objlen, nev_buf_size, n, keylen + len(piece.data), 0
        )
        return b"".join((header, self.strings, fields, stored)), nbytes, keylen + objlen


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """adler32 of two concatenated byte strings from theirs (zlib's adler32_combine)."""
    remainder = second_length % _ADLER_BASE
    sum1 = first & 0xFFFF
    sum2 = (remainder * sum1) % _ADLER_BASE
    sum1 += (second & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + _ADLER_BASE - remainder
    sum1 %= _ADLER_BASE
    sum2 %= _ADLER_BASE
    return sum1 | (sum2 << 16)
