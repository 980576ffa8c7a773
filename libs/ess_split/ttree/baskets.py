"""A source branch's baskets, decoded; and the baskets a range file gets.

A basket on disk is a key whose header ends with TBasket's own fields (``fBufferSize``,
``fNevBufSize``, ``fNevBuf``, ``fLast`` and a flag), then its stored bytes. Inflated, they are
the entries' bytes up to ``fLast`` (counted from the key's start) and, for entries of variable
size, the entries' offsets (a count, then each entry's start, counted from the key's start) and,
when the entries were moved since they were written, where each was first written (its
*displacement*: ROOT resolves references inside an entry against that position). A basket held
in the TTree record itself (embedded) carries the same, in TBasket's streamed form.

Consumes keyed baskets' bytes or embedded baskets' walked nodes. Produces ``Decoded`` baskets
and, cut from them, ``Piece``s: entries a range file's basket holds, with their offsets and, for
branches whose entries may hold references, their original positions when those changed. A
``Piece`` is also a whole source basket taken over as stored (``copied``), untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ess_split.format.buffer import Reader, RecordError
from ess_split.format.codecs import algorithm_of, inflate
from ess_split.format.keys import Key, parse_key
from ess_split.format.walker import Node, Unsupported

__all__ = ["Decoded", "Piece", "decode_embedded", "decode_keyed", "parse_basket_header"]

#: TBasket::EIOBits::kGenerateOffsetMap: offsets are not stored, or stored as entry sizes.
_GENERATE_OFFSET_MAP = 1
_I32 = np.dtype(">i4")


@dataclass(frozen=True)
class BasketHeader:
    version: int
    buffer_size: int
    nev_buf_size: int
    io_bits: int
    nev_buf: int
    last: int


@dataclass(frozen=True)
class Decoded:
    """A source basket's entries. ``offsets`` (entries + 1 values) say where each entry starts
    in ``data`` (None: each takes ``entry_size`` bytes); ``originals``, where each entry was
    written at first, counted from its basket's key (None: where ``keylen`` and ``offsets``
    put it)."""

    entries: int
    keylen: int
    data: bytes
    offsets: npt.NDArray[np.int64] | None
    originals: npt.NDArray[np.int64] | None
    entry_size: int
    nev_buf_size: int
    #: The algorithm the source basket was stored with (None: stored as it is).
    algorithm: str | None = None

    def cut(self, start: int, stop: int, track: bool) -> Piece:
        """Entries ``start``..``stop - 1`` of this basket (positions within it).

        ``track``: the entries may refer into their buffer. ROOT writes a pointer to an object
        (or a class) it wrote before as that earlier place in the basket, and the earlier place
        may be in an earlier entry; reading, it goes back there when it has not read it. So the
        basket's bytes before the range are kept, in front of its first entry and counted as
        no entry's, and each entry's original position goes with it, which the range file's
        basket needs when its key's length differs from the source's (ROOT's entry
        displacement)."""
        count = stop - start
        if self.offsets is None:
            size = self.entry_size
            data = self.data[start * size : stop * size]
            return Piece(data, None, None, count, size, self.nev_buf_size, algorithm=self.algorithm)
        begin, end = int(self.offsets[start]), int(self.offsets[stop])
        originals = None
        if track:
            begin = 0
            if self.originals is not None:
                originals = self.originals[start:stop]
            else:
                originals = self.offsets[start:stop] + self.keylen
        offsets = self.offsets[start : stop + 1] - begin
        return Piece(
            self.data[begin:end],
            offsets,
            originals,
            count,
            0,
            self.nev_buf_size,
            algorithm=self.algorithm,
            keylen=self.keylen,
        )


@dataclass(frozen=True)
class Piece:
    """Entries for one basket of a range file, or (``copied``) a source basket's whole key
    (header and stored bytes), taken over without inflating it."""

    data: bytes
    offsets: npt.NDArray[np.int64] | None
    originals: npt.NDArray[np.int64] | None
    entries: int
    entry_size: int
    nev_buf_size: int
    #: ``data`` is a source basket's whole key, header and stored bytes, to take over as it is.
    copied: bool = False
    #: The algorithm its source basket was stored with (None: stored as it is).
    algorithm: str | None = None
    #: Its source basket's key length, which a new key matches when it can (0: any).
    keylen: int = 0


def parse_basket_header(raw: bytes, key: Key) -> BasketHeader:
    """The TBasket fields at the end of a basket's key header."""
    reader = Reader(raw, 0, key.keylen)
    reader.skip(18 + (16 if key.big else 8))
    for _ in range(3):
        reader.tstring()
    version = reader.u16()
    buffer_size = reader.i32()
    nev_buf_size = reader.i32()
    io_bits = 0
    if nev_buf_size < 0:
        nev_buf_size = -nev_buf_size
        io_bits = reader.u8()
    nev_buf = reader.i32()
    last = reader.i32()
    reader.skip(1)
    if reader.pos != key.keylen:
        raise RecordError(f"a basket's header ends at {reader.pos}, its key says {key.keylen}")
    return BasketHeader(version, buffer_size, nev_buf_size, io_bits, nev_buf, last)


def decode_keyed(raw: bytes, where: str) -> Decoded:
    """A basket from its whole key (header and stored bytes)."""
    key = parse_key(raw)
    if key.classname != "TBasket":
        raise RecordError(f"{where}: a {key.classname!r} where a TBasket should be")
    header = parse_basket_header(raw, key)
    if len(raw) < key.nbytes:
        raise RecordError(f"{where}: {len(raw)} bytes of a {key.nbytes}-byte basket")
    stored = memoryview(raw)[key.keylen : key.nbytes]
    content = inflate(stored, key.objlen)
    decoded = _decoded(content, key.keylen, header, None, None, where)
    if key.compressed:
        decoded = replace(decoded, algorithm=algorithm_of(stored))
    return decoded


def decode_embedded(node: Node, where: str) -> Decoded:
    """A basket held in its TTree's record."""
    member = node.members
    keylen = int(member["fKeylen"].value)
    last = int(member["fLast"].value)
    content: bytes = member["content"].value
    if member["generated_offsets"].value:
        raise Unsupported(f"{where}: an embedded basket whose entry offsets are not stored")
    header = BasketHeader(
        node.version,
        int(member["fBufferSize"].value),
        int(member["fNevBufSize"].value),
        int(member["fIOBits"].value),
        int(member["fNevBuf"].value),
        last,
    )
    if len(content) < last:
        raise RecordError(f"{where}: an embedded basket holds {len(content)} of {last} bytes")
    offsets: Any = member["offsets"].value
    displacement: Any = member["displacement"].value
    return _decoded(
        content[keylen:last], keylen, header, offsets, displacement, where, embedded=True
    )


def _decoded(
    content: bytes,
    keylen: int,
    header: BasketHeader,
    offsets: Any,
    displacement: Any,
    where: str,
    *,
    embedded: bool = False,
) -> Decoded:
    entries = header.nev_buf
    border = header.last - keylen
    if border < 0 or border > len(content):
        raise RecordError(f"{where}: fLast {header.last} lies outside the basket")
    if not embedded:
        tail = content[border:]
        data = content[:border]
        if tail:
            reader = Reader(tail)
            count = reader.i32()
            if count < 0 or 4 + 4 * count > len(tail):
                raise RecordError(f"{where}: {count} entry offsets do not fit the basket")
            offsets = np.frombuffer(tail, _I32, count, 4).astype(np.int64)
            rest = len(tail) - 4 - 4 * count
            if rest >= 4:
                extra = np.frombuffer(tail, _I32, 1, 4 + 4 * count)[0]
                if extra > 0 and rest >= 4 + 4 * int(extra):
                    displacement = np.frombuffer(tail, _I32, int(extra), 8 + 4 * count)
                    displacement = displacement.astype(np.int64)
    else:
        data = content
    if offsets is None:
        if header.io_bits & _GENERATE_OFFSET_MAP and entries:
            raise Unsupported(f"{where}: a basket whose entry offsets are not stored")
        size = header.nev_buf_size
        if entries and size * entries != border:
            raise RecordError(
                f"{where}: {border} bytes for {entries} entries of {size} bytes and no offsets"
            )
        return Decoded(entries, keylen, bytes(data), None, None, size, header.nev_buf_size)
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) < entries:
        raise RecordError(f"{where}: {len(offsets)} entry offsets for {entries} entries")
    if header.io_bits & _GENERATE_OFFSET_MAP:
        # Stored as each entry's size.
        sizes = offsets[1 : entries + 1] if len(offsets) > entries else offsets[:entries]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        relative = starts
    else:
        relative = np.empty(entries + 1, np.int64)
        relative[:entries] = offsets[:entries] - keylen
        relative[entries] = border
    if entries and (
        relative[0] < 0 or np.any(np.diff(relative) < 0) or relative[entries] != border
    ):
        raise RecordError(f"{where}: entry offsets are not in order within the basket")
    originals = None
    if displacement is not None and len(displacement) >= entries and entries:
        originals = np.asarray(displacement[:entries], np.int64)
    return Decoded(entries, keylen, bytes(data), relative, originals, 0, header.nev_buf_size)
