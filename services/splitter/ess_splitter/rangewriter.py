"""Write range files from a template that uproot's writer makes once per split.

Consumes the event trees' layouts, the ``Carrier`` and the range files' compression, then, per
range file, the baskets of every branch of every event tree in entry order. uproot writes the
template once: a complete ROOT file with the carried objects and every event tree without
entries (streamers, directories, TTree, TBranch and TLeaf records). A range file is the
template's bytes with the range's baskets appended after them and the numbers that depend on
those baskets patched in: entries, basket sizes, entry boundaries and positions, byte totals,
the counter and string leaves' maxima, the file's end and its UUID. The patches go where
uproot's writer itself patches them when a tree is extended, so a range file reads back like
one uproot wrote with ``mktree`` and ``extend``; what it saves is uproot's rebuilding and
rewriting of all that metadata for every file and every basket.

Produces, per range file, its path, size and adler32 (computed on the bytes as they are
written, not by reading the file again). Baskets are either ``EncodedBasket`` (serialised
entries, compressed here) or ``CopiedBasket`` (a source basket's stored, compressed bytes,
taken over unchanged with only its position rewritten).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import itertools
import math
import os
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import uproot

from ess_splitter.basketio import zlib_compressor
from ess_splitter.carry import Carrier
from ess_splitter.treelayout import SplitError, TreeLayout

__all__ = ["CopiedBasket", "EncodedBasket", "RangeFileWriter", "RangeTemplate"]

_KEY_BIG = struct.Struct(">ihiIhhqq")
_KEY_SMALL = struct.Struct(">ihiIhhii")
_TBASKET = struct.Struct(">Hiiii")
_COUNT = struct.Struct(">I")
_INT32 = struct.Struct(">i")
# ROOT's file header while the file is below 2 GiB: magic, fVersion, fBEGIN, fEND, fSeekFree,
# fNbytesFree, nfree, fNbytesName, fUnits, fCompress, fSeekInfo, fNbytesInfo, fUUID.
_HEADER_SMALL = struct.Struct(">4siiiiiiiBiiiH16s")
_FREE_SMALL = struct.Struct(">HII")
_TTREE = struct.Struct(">qqqqqdiiiiIqqqqqq")
_TBRANCH1 = struct.Struct(">iiiiq")
_TBRANCH2 = struct.Struct(">iIiqqqq")
_TLEAF = struct.Struct(">iii??")
# The TObjArray of baskets that uproot writes (empty) between a leaf and the basket arrays.
_EMPTY_BASKETS = 25
# Between TBranch's first and second group of members uproot writes fIOFeatures (11 bytes).
_IO_FEATURES = 11
_FEND_AT = 12
_FREE_AT = 16
_NBYTES_INFO_AT = 41
_KEY_SEEK_AT = 18
# Small-format header and keys address 32-bit positions; a range file never gets near that.
_MAX_SMALL = 2**31 - 1
_ADLER_BASE = 65521
_SPEEDBUMP = 1


@dataclass(frozen=True)
class EncodedBasket:
    """Entries of one branch in ROOT's serialised form, to be compressed into one basket.

    ``offsets`` (entries + 1 values, the first 0, the last ``len(data)``) says where each entry
    starts in ``data`` for branches of variable-size entries; None for fixed-size ones.
    """

    data: bytes
    offsets: npt.NDArray[np.int64] | None
    entries: int


@dataclass(frozen=True)
class CopiedBasket:
    """A source basket's whole TKey (header and stored bytes), copied without decompressing."""

    key: bytes
    entries: int
    #: The largest value (counters) or string length among its entries, for the leaf.
    leaf_maximum: int = 0


Basket = EncodedBasket | CopiedBasket


@dataclass
class _BranchSlots:
    """Where one branch's per-file numbers live in the template, and how its baskets look."""

    name: str
    kind: str  # "fixed", "jagged" or "string"
    itemsize: int
    counter: bool
    tbranch_at: int
    arrays_at: int
    leaf_at: int | None
    leaf_struct: struct.Struct | None
    key_strings: bytes
    key_length: int
    basket_size: int
    entry_offset_len: int
    offset: int
    split_level: int
    first_entry: int


@dataclass
class _TreeSlots:
    path: str
    ttree_at: int
    metadata: dict[str, Any]
    directory_at: int
    branches: dict[str, _BranchSlots] = field(default_factory=dict)


class _CapturedBytes(io.BytesIO):
    """A sink for uproot's writer that keeps what was written when the writer closes it."""

    captured = b""

    def close(self) -> None:
        if not self.closed:
            self.captured = self.getvalue()
        super().close()


class _FastZlib(uproot.ZLIB):  # type: ignore[misc]
    """zlib level 1 by the fastest library at hand (see ``basketio.zlib_compressor``): the same
    format, read by any zlib."""

    def __init__(self) -> None:
        super().__init__(1)
        self._compress = zlib_compressor()

    def compress(self, data: bytes) -> bytes:
        return self._compress(data)


def _basket_compression(compression: Any) -> Any:
    if compression is None or compression.level == 0:
        return None
    if isinstance(compression, uproot.ZLIB) and compression.level == 1:
        return _FastZlib()
    return compression


class RangeTemplate:
    """The bytes every range file of a split starts with, and where its numbers go.

    ``basket_capacity`` is the most baskets any branch gets in one range file; the TTree
    records have room for exactly that many (plus the spare slot ROOT's layout needs).
    """

    def __init__(
        self,
        layouts: Sequence[TreeLayout],
        carrier: Carrier,
        compression: Any,
        basket_capacity: int,
    ) -> None:
        self._compression = _basket_compression(compression)
        # Every basket key of a split's range files carries the date the split began.
        self._datime = int(uproot._util.datetime_to_code(dt.datetime.now()))
        sink = _CapturedBytes()
        cascades: list[tuple[str, Any]] = []
        with uproot.recreate(sink, compression=compression) as out_file:
            # Carried objects first: they re-create the source's directories, those of the
            # event trees included.
            carrier.write_into(out_file)
            for layout in layouts:
                tree = out_file.mktree(
                    layout.path,
                    layout.branch_types,
                    title=layout.title,
                    counter_name=layout.counter_name,
                    initial_basket_capacity=basket_capacity + 1,
                )
                cascades.append((layout.path, tree._cascading))
            file_uuid = bytes(out_file.file.uuid.bytes)
        tree_ends = [
            int(c._key.seek_location) + int(c._key.num_bytes) + int(c._key.compressed_bytes)
            for _, c in cascades
        ]
        # The streamers are written once per split: compressing them costs nothing per file,
        # so they are compressed even when the baskets are not.
        streamer_compression = self._compression or uproot.ZLIB(1)
        self.prefix = _compress_streamers(
            sink.captured, streamer_compression, max(tree_ends, default=0)
        )
        self._capacity = basket_capacity + 1
        self._uuid_at = _occurrences(self.prefix, file_uuid)
        self._free_at = self._check_header()
        self.trees = {path: self._tree_slots(path, cascade) for path, cascade in cascades}

    def open(self, final: Path) -> RangeFileWriter:
        return RangeFileWriter(self, final)

    def _check_header(self) -> int:
        """Where the last free segment's record is; raise if the file is not as patched."""
        fields = _HEADER_SMALL.unpack_from(self.prefix, 0)
        magic, version, end, seek_free, nbytes_free = fields[0], fields[1], *fields[3:6]
        free_at = int(seek_free + nbytes_free - _FREE_SMALL.size)
        free_version, free_first, _ = _FREE_SMALL.unpack_from(self.prefix, free_at)
        if (
            magic != b"root"
            or version >= 1_000_000
            or end != len(self.prefix)
            or free_version != 1
            or free_first != end
        ):
            raise RuntimeError("uproot's file layout is not the one RangeTemplate patches")
        return free_at

    def _tree_slots(self, path: str, cascade: Any) -> _TreeSlots:
        key = cascade._key
        base = int(key.seek_location) + int(key.num_bytes)
        metadata = dict(cascade._metadata)
        slots = _TreeSlots(
            path=path,
            ttree_at=base + int(cascade._metadata_start),
            metadata=metadata,
            directory_at=int(cascade._directory.key.location),
        )
        title = uproot.serialization.string(str(cascade._name))
        class_name = uproot.serialization.string("TBasket")
        expected = [(slots.ttree_at, _ttree_record(metadata, 0, 0, 0))]
        for datum in cascade._branch_data:
            if datum["kind"] == "record":
                continue
            name = str(datum["fName"])
            dtype = np.dtype(datum["dtype"])
            if dtype == np.dtype(">U0"):
                kind, itemsize = "string", 1
            elif datum["counter"] is not None:
                kind, itemsize = "jagged", dtype.itemsize
            else:
                kind, itemsize = "fixed", dtype.itemsize * math.prod(datum["shape"])
            counter = datum["kind"] == "counter"
            arrays_at = base + int(datum["basket_metadata_start"]) + 1
            leaf_at: int | None = None
            leaf_struct: struct.Struct | None = None
            if counter:
                leaf_struct = datum["tleaf_special_struct"]
                assert leaf_struct is not None
                leaf_at = arrays_at - 1 - _EMPTY_BASKETS - leaf_struct.size
            elif kind == "string":
                leaf_struct = _TLEAF
                # Generic TLeaf members, then fLeafCount (4) and fMinimum/fMaximum (8).
                leaf_at = arrays_at - 1 - _EMPTY_BASKETS - 8 - 4 - _TLEAF.size
            key_strings = class_name + uproot.serialization.string(name) + title
            branch = _BranchSlots(
                name=name,
                kind=kind,
                itemsize=itemsize,
                counter=counter,
                tbranch_at=base + int(datum["metadata_start"]),
                arrays_at=arrays_at,
                leaf_at=leaf_at,
                leaf_struct=leaf_struct,
                key_strings=key_strings,
                key_length=_KEY_BIG.size + len(key_strings) + _TBASKET.size + 1,
                basket_size=int(datum["fBasketSize"]),
                entry_offset_len=int(datum["fEntryOffsetLen"]),
                offset=int(datum["fOffset"]),
                split_level=int(datum["fSplitLevel"]),
                first_entry=int(datum["fFirstEntry"]),
            )
            slots.branches[name] = branch
            expected.append(
                (
                    branch.tbranch_at,
                    _TBRANCH1.pack(0, branch.basket_size, branch.entry_offset_len, 0, 0),
                )
            )
            if leaf_at is not None and leaf_struct is not None:
                empty_leaf = leaf_struct.pack(0, 0) if counter else _string_leaf(1)
                expected.append((leaf_at, empty_leaf))
        for position, record in expected:
            if self.prefix[position : position + len(record)] != record:
                raise RuntimeError(f"uproot's TTree record of {path!r} is not laid out as expected")
        return slots


def _compress_streamers(prefix: bytes, compression: Any, fixed_end: int) -> bytes:
    """``prefix`` with its streamer record compressed, as ROOT writes it.

    uproot writes the streamers uncompressed (about 20 kB for a TTree's classes) so that it
    can add to them in place; a template is never added to. The free-segments record after
    them moves up. Any other layout than streamers, then free segments, at the end of the file,
    after everything at a position below ``fixed_end``, is left as it is.
    """
    fields = _HEADER_SMALL.unpack_from(prefix, 0)
    end, seek_free, nbytes_free, n_free = fields[3], fields[4], fields[5], fields[6]
    seek_info, nbytes_info = fields[10], fields[11]
    if (
        seek_info < fixed_end
        or seek_info + nbytes_info != seek_free
        or seek_free + nbytes_free != end
        or end != len(prefix)
    ):
        return prefix
    key = _KEY_SMALL.unpack_from(prefix, seek_info)
    nbytes, version, objlen, datime, key_length, cycle, seek_key, seek_pdir = key
    if version > 1000 or nbytes != nbytes_info or nbytes - key_length != objlen:
        return prefix
    payload = prefix[seek_info + key_length : seek_info + nbytes]
    stored = bytes(uproot.compression.compress(payload, compression))
    if len(stored) >= len(payload):
        return prefix
    streamers = (
        _KEY_SMALL.pack(
            key_length + len(stored),
            version,
            objlen,
            datime,
            key_length,
            cycle,
            seek_key,
            seek_pdir,
        )
        + prefix[seek_info + _KEY_SMALL.size : seek_info + key_length]
        + stored
    )
    new_free = seek_info + len(streamers)
    new_end = new_free + nbytes_free
    free = bytearray(prefix[seek_free:end])
    free_key = _KEY_SMALL.unpack_from(free, 0)
    segments = [
        _FREE_SMALL.unpack_from(free, free_key[4] + index * _FREE_SMALL.size)
        for index in range(n_free)
    ]
    if (
        free_key[1] > 1000
        or len(free) != free_key[4] + n_free * _FREE_SMALL.size
        or any(version != 1 or last >= seek_info for version, _, last in segments[:-1])
        or segments[-1][:2] != (1, end)
    ):
        return prefix
    # The free-segments key's own position, and its last segment: from the end onwards.
    _INT32.pack_into(free, _KEY_SEEK_AT, new_free)
    _FREE_SMALL.pack_into(free, len(free) - _FREE_SMALL.size, 1, new_end, segments[-1][2])
    header = bytearray(prefix[: _HEADER_SMALL.size])
    _INT32.pack_into(header, _FEND_AT, new_end)
    _INT32.pack_into(header, _FREE_AT, new_free)
    _INT32.pack_into(header, _NBYTES_INFO_AT, len(streamers))
    return bytes(header) + prefix[len(header) : seek_info] + streamers + bytes(free)


def _string_leaf(longest: int) -> bytes:
    # fLen is the longest string in bytes (with its length byte), fLenType 0 as uproot writes.
    return _TLEAF.pack(longest, 0, 0, False, False)


def _ttree_record(metadata: dict[str, Any], entries: int, tot: int, zipped: int) -> bytes:
    return _TTREE.pack(
        entries,
        tot,
        zipped,
        metadata["fSavedBytes"],
        metadata["fFlushedBytes"],
        metadata["fWeight"],
        metadata["fTimerInterval"],
        metadata["fScanField"],
        metadata["fUpdate"],
        metadata["fDefaultEntryOffsetLen"],
        metadata["fNClusterRange"],
        metadata["fMaxEntries"],
        metadata["fMaxEntryLoop"],
        metadata["fMaxVirtualSize"],
        metadata["fAutoSave"],
        metadata["fAutoFlush"],
        metadata["fEstimate"],
    )


def _occurrences(data: bytes, needle: bytes) -> list[int]:
    found = []
    position = data.find(needle)
    while position >= 0:
        found.append(position)
        position = data.find(needle, position + 1)
    return found


@dataclass
class _Written:
    """The baskets of one branch written so far into one range file."""

    total_bytes: list[int] = field(default_factory=list)
    stored_bytes: list[int] = field(default_factory=list)
    seeks: list[int] = field(default_factory=list)
    entries: list[int] = field(default_factory=list)
    leaf_maximum: int = 0
    last_entry_count: int = 0


class RangeFileWriter:
    """One range file being written under a temporary name in its final directory.

    Baskets are appended as they come (memory holds one at a time); the template's bytes,
    patched, go in front at ``commit``.
    """

    def __init__(self, template: RangeTemplate, final: Path) -> None:
        self._template = template
        self._final = final
        self._temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        self._end = len(template.prefix)
        self._adler = 1
        self._written: dict[tuple[str, str], _Written] = {}
        self._stream = self._temp.open("wb")
        try:
            self._stream.seek(self._end)
        except BaseException:
            self.abort()
            raise

    def add(self, tree_path: str, branch_name: str, basket: Basket) -> None:
        """Append ``basket`` as the next basket of that branch."""
        tree = self._template.trees[tree_path]
        slots = tree.branches[branch_name]
        written = self._written.setdefault((tree_path, branch_name), _Written())
        if len(written.seeks) + 1 >= self._template._capacity:
            raise RuntimeError(f"more baskets for {branch_name!r} than the template has room for")
        location = self._end
        if isinstance(basket, CopiedBasket):
            record, total, maximum = _copied_record(basket, location, tree.directory_at)
        else:
            record, total, maximum = _encoded_record(
                basket, slots, location, tree.directory_at, self._template
            )
        self._append(record)
        written.total_bytes.append(total)
        written.stored_bytes.append(len(record))
        written.seeks.append(location)
        written.entries.append(basket.entries)
        written.leaf_maximum = max(written.leaf_maximum, maximum)
        written.last_entry_count = basket.entries

    def _append(self, record: bytes) -> None:
        self._stream.write(record)
        self._adler = zlib.adler32(record, self._adler)
        self._end += len(record)
        if self._end > _MAX_SMALL:
            raise SplitError("a range file would exceed 2 GiB; use fewer events per range")

    def commit(self) -> tuple[Path, int, str]:
        """Patch the template in front, close, rename into place; return (path, size, adler32)."""
        try:
            prefix = self._patched_prefix()
            self._stream.seek(0)
            self._stream.write(prefix)
            self._stream.close()
            tail_length = self._end - len(prefix)
            adler = _adler32_combine(zlib.adler32(prefix), self._adler, tail_length)
            os.replace(self._temp, self._final)
        except BaseException:
            self.abort()
            raise
        return self._final, self._end, f"{adler:08x}"

    def abort(self) -> None:
        # The error that made us abort matters more than one from closing a broken file.
        with contextlib.suppress(Exception):
            self._stream.close()
        self._temp.unlink(missing_ok=True)

    def _patched_prefix(self) -> bytearray:
        template = self._template
        prefix = bytearray(template.prefix)
        _INT32.pack_into(prefix, _FEND_AT, self._end)
        _FREE_SMALL.pack_into(prefix, template._free_at, 1, self._end, 2_000_000_000)
        file_uuid = uuid.uuid4().bytes
        for position in template._uuid_at:
            prefix[position : position + 16] = file_uuid
        capacity = template._capacity
        for tree in template.trees.values():
            tree_entries: int | None = None
            tree_total = tree_stored = 0
            for slots in tree.branches.values():
                written = self._written.get((tree.path, slots.name), _Written())
                entries = sum(written.entries)
                if tree_entries is None:
                    tree_entries = entries
                elif entries != tree_entries:
                    raise RuntimeError(
                        f"{tree.path}: branch {slots.name!r} got {entries} entries, "
                        f"others {tree_entries}"
                    )
                total, stored = sum(written.total_bytes), sum(written.stored_bytes)
                tree_total += total
                tree_stored += stored
                _patch_branch(prefix, slots, written, entries, total, stored, capacity)
            prefix[tree.ttree_at : tree.ttree_at + _TTREE.size] = _ttree_record(
                tree.metadata, tree_entries or 0, tree_total, tree_stored
            )
        return prefix


def _patch_branch(
    prefix: bytearray,
    slots: _BranchSlots,
    written: _Written,
    entries: int,
    total: int,
    stored: int,
    capacity: int,
) -> None:
    n_baskets = len(written.seeks)
    # ROOT sizes its entry-offset buffers by fEntryOffsetLen; uproot sets it from the last
    # basket of a branch with variable-size entries.
    entry_offset_len = (
        4 * written.last_entry_count if slots.kind != "fixed" else slots.entry_offset_len
    )
    _TBRANCH1.pack_into(
        prefix, slots.tbranch_at, 0, slots.basket_size, entry_offset_len, n_baskets, entries
    )
    _TBRANCH2.pack_into(
        prefix,
        slots.tbranch_at + _TBRANCH1.size + _IO_FEATURES,
        slots.offset,
        capacity,
        slots.split_level,
        entries,
        slots.first_entry,
        total,
        stored,
    )
    padding = [0] * (capacity - n_baskets)
    boundaries = [0, *itertools.accumulate(written.entries)]
    _basket_arrays(capacity).pack_into(
        prefix,
        slots.arrays_at,
        *written.stored_bytes,
        *padding,
        _SPEEDBUMP,
        *boundaries,
        *padding[1:],
        _SPEEDBUMP,
        *written.seeks,
        *padding,
    )
    if slots.leaf_at is not None and slots.leaf_struct is not None:
        if slots.counter:
            record = slots.leaf_struct.pack(0, written.leaf_maximum)
        else:
            record = _string_leaf(written.leaf_maximum)
        prefix[slots.leaf_at : slots.leaf_at + len(record)] = record


@functools.cache
def _basket_arrays(capacity: int) -> struct.Struct:
    """fBasketBytes, fBasketEntry and fBasketSeek, each after its one-byte "speedbump"."""
    return struct.Struct(f">{capacity}iB{capacity}qB{capacity}q")


def _encoded_record(
    basket: EncodedBasket,
    slots: _BranchSlots,
    location: int,
    directory_at: int,
    template: RangeTemplate,
) -> tuple[bytes, int, int]:
    """The TKey and basket of ``basket``, as uproot's writer lays them out."""
    compression = template._compression
    key_length = slots.key_length
    n = basket.entries
    maximum = 0
    if basket.offsets is None:
        payload = basket.data
        nev_buf_size = slots.itemsize
        if slots.counter and n:
            maximum = int(np.frombuffer(basket.data, ">i4").max())
    else:
        positions = (basket.offsets + key_length).astype(">i4")
        if slots.kind == "string":
            # uproot writes a string basket's last entry offset as 0, a jagged one's as fLast.
            lengths = np.diff(basket.offsets)
            maximum = int(lengths.max()) if n else 0
            positions[-1] = 0
            nev_buf_size = 1000
        else:
            nev_buf_size = n + 2
        payload = basket.data + _COUNT.pack(n + 1) + positions.tobytes()
    last = key_length + len(basket.data)
    if basket.offsets is not None and nev_buf_size * n + key_length == last:
        # uproot's reader takes a basket whose size equals fNevBufSize per entry for one without
        # entry offsets; nothing else reads fNevBufSize of such a basket.
        nev_buf_size += 1
    stored = payload if compression is None else uproot.compression.compress(payload, compression)
    stored_length = len(stored)
    key = _KEY_BIG.pack(
        key_length + stored_length,
        1004,
        len(payload),
        template._datime,
        key_length,
        0,
        location,
        directory_at,
    )
    header = _TBASKET.pack(3, 32000, nev_buf_size, n, last)
    record = b"".join((key, slots.key_strings, header, b"\x00", stored))
    return record, key_length + len(payload), maximum


def _copied_record(
    basket: CopiedBasket, location: int, directory_at: int
) -> tuple[bytes, int, int]:
    key = basket.key
    (nbytes, version, objlen, datime, key_length, cycle) = _KEY_SMALL.unpack_from(key, 0)[:6]
    if version > 1000:
        header = _KEY_BIG.pack(
            nbytes, version, objlen, datime, key_length, cycle, location, directory_at
        )
    else:
        header = _KEY_SMALL.pack(
            nbytes, version, objlen, datime, key_length, cycle, location, directory_at
        )
    return header + key[len(header) :], key_length + objlen, basket.leaf_maximum


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
