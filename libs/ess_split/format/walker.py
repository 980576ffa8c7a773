"""Walk a serialised object (a key's record) and note everything a rewrite must keep true.

Consumes the uncompressed bytes of a record (what follows its key), the key's length and the
file's streamers. Produces a tree of ``Node``s: for every object its class, version, where it
starts and ends, and each member's position and value, read as the file's streamer records
say (ROOT's own streamers for TObject, TObjArray, TList, TArray* and TBasket). It notes, on the
way, the three kinds of numbers that depend on positions in the record:

- byte counts (``counts``): an object's size, in front of it;
- anchors: where an object written through a pointer starts (its byte count), and where a
  class name is written for the first time (``objects``, ``classes``);
- references (``refs``): a later pointer to the same object, or a later object of the same
  class, written as the anchor's position in the buffer (the key's header included) plus 2.

A record rewritten with some parts longer or shorter (``edit``) stays valid when these three are
recomputed. Raises ``RecordError`` where the bytes are not as ROOT writes them and
``Unsupported`` where they use what is not read here (the caller names the object).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ess_split.format.buffer import (
    BYTECOUNT_MASK,
    BYTECOUNT_VMASK,
    CLASS_MASK,
    IS_REFERENCED,
    MAP_OFFSET,
    MEMBERWISE,
    NEW_CLASS_TAG,
    NULL_TAG,
    Reader,
    RecordError,
)
from ess_split.format.streamers import ClassInfo, Element, Streamers, TypeCode

__all__ = ["Node", "Ref", "Unsupported", "Value", "Walk"]

_DISPLACEMENT_MASK = 0xFF000000
_SCALARS = {
    TypeCode.CHAR: struct.Struct(">b"),
    TypeCode.SHORT: struct.Struct(">h"),
    TypeCode.INT: struct.Struct(">i"),
    TypeCode.LONG: struct.Struct(">q"),
    TypeCode.FLOAT: struct.Struct(">f"),
    TypeCode.COUNTER: struct.Struct(">i"),
    TypeCode.DOUBLE: struct.Struct(">d"),
    TypeCode.LEGACY_CHAR: struct.Struct(">b"),
    TypeCode.UCHAR: struct.Struct(">B"),
    TypeCode.USHORT: struct.Struct(">H"),
    TypeCode.UINT: struct.Struct(">I"),
    TypeCode.ULONG: struct.Struct(">Q"),
    TypeCode.BITS: struct.Struct(">I"),
    TypeCode.LONG64: struct.Struct(">q"),
    TypeCode.ULONG64: struct.Struct(">Q"),
    TypeCode.BOOL: struct.Struct(">?"),
}
_DTYPES: dict[int, np.dtype[Any]] = {code: np.dtype(s.format) for code, s in _SCALARS.items()}
_ARRAY_CLASSES: dict[str, np.dtype[Any]] = {
    "TArrayC": np.dtype(">i1"),
    "TArrayS": np.dtype(">i2"),
    "TArrayI": np.dtype(">i4"),
    "TArrayL": np.dtype(">i8"),
    "TArrayL64": np.dtype(">i8"),
    "TArrayF": np.dtype(">f4"),
    "TArrayD": np.dtype(">f8"),
}
_INLINE_OBJECTS = (TypeCode.OBJECT, TypeCode.ANY, TypeCode.OBJECT_p, TypeCode.ANY_p)
_POINTERS = (TypeCode.OBJECT_P, TypeCode.ANY_P, TypeCode.ANY_P_NO_VT)
# Members written inside a byte count of their own: STL containers, and members with a streamer
# of their own (TClassStreamer, as ROOT's own classes use for STL members).
_WRAPPED = (
    TypeCode.STL,
    TypeCode.STL_STRING,
    TypeCode.STL_p,
    TypeCode.STREAMER,
    TypeCode.STREAM_LOOP,
)


class Unsupported(Exception):
    """Sound bytes written in a way that is not read here; the message says which."""


@dataclass(frozen=True)
class Ref:
    """A pointer to an object written earlier in the record, at payload position ``target``."""

    target: int


@dataclass
class Value:
    """A member: its bytes are ``start``..``end`` of the payload; ``value`` what they hold."""

    start: int
    end: int
    value: Any


@dataclass
class Node:
    """An object of the record. ``tagged_at`` is where its pointer's byte count is, for an
    object written through a pointer."""

    classname: str
    version: int
    start: int
    end: int = -1
    members: dict[str, Value] = field(default_factory=dict)
    bases: list[Node] = field(default_factory=list)
    tagged_at: int | None = None

    def find(self, name: str) -> Value | None:
        """The member ``name`` of this object or of its bases."""
        found = self.members.get(name)
        if found is not None:
            return found
        for base in self.bases:
            found = base.find(name)
            if found is not None:
                return found
        return None

    def get(self, name: str) -> Any:
        found = self.find(name)
        if found is None:
            raise KeyError(f"{self.classname} has no member {name!r}")
        return found.value

    def is_a(self, classname: str) -> bool:
        return self.classname == classname or any(base.is_a(classname) for base in self.bases)


class Walk:
    """The walk of one record; see the module's docstring."""

    def __init__(self, data: bytes, keylen: int, streamers: Streamers) -> None:
        self.data = data
        self.keylen = keylen
        self.streamers = streamers
        #: (position of the 4 bytes, payload position they point at, points at a class)
        self.refs: list[tuple[int, int, bool]] = []
        #: (position of the 4-byte count, end of the object it counts)
        self.counts: list[tuple[int, int]] = []
        self.classes: dict[int, str] = {}
        self.objects: dict[int, str] = {}

    def reader(self, position: int = 0, end: int | None = None) -> Reader:
        return Reader(self.data, position, end)

    # --- pointers -------------------------------------------------------------------------

    def object_any(self, r: Reader) -> Node | Ref | None:
        """An object written through a pointer (TBufferFile::WriteObjectAny)."""
        start = r.pos
        first = r.u32()
        end: int | None = None
        if first & BYTECOUNT_MASK and first != NEW_CLASS_TAG:
            end = r.pos + (first & ~BYTECOUNT_MASK)
            if end > r.end:
                raise RecordError(f"an object at {start} claims to end at {end}, past {r.end}")
            tag_at = r.pos
            tag = r.u32()
        else:
            tag_at, tag = start, first
        if not tag & CLASS_MASK:
            if tag == NULL_TAG:
                return None
            if end is not None:
                raise Unsupported(f"a reference with a byte count at {start}")
            target = tag - MAP_OFFSET - self.keylen
            if target not in self.objects:
                raise RecordError(f"a reference at {start} points at {target}, where no object is")
            self.refs.append((tag_at, target, False))
            return Ref(target)
        if end is None:
            raise Unsupported(f"an object without a byte count at {start} (ROOT before 3.0)")
        if tag == NEW_CLASS_TAG:
            classname = r.cstring()
            self.classes[tag_at] = classname
        else:
            where = (tag & ~CLASS_MASK) - MAP_OFFSET - self.keylen
            found = self.classes.get(where)
            if found is None:
                raise RecordError(
                    f"a class reference at {tag_at} points at {where}, where no class is"
                )
            classname = found
            self.refs.append((tag_at, where, True))
        self.counts.append((start, end))
        self.objects[start] = classname
        node = self.stream(r, classname)
        node.tagged_at = start
        if r.pos != end:
            raise RecordError(
                f"a {classname} at {start} ends at {r.pos}, its byte count says {end}"
            )
        return node

    # --- one object, by its class's streamer ---------------------------------------------

    def stream(self, r: Reader, classname: str, base_version: int | None = None) -> Node:
        """An object of ``classname`` written by its class's streamer."""
        custom = _CUSTOM.get(classname)
        if custom is not None:
            node: Node = custom(self, r)
            return node
        if classname in _ARRAY_CLASSES:
            return self._tarray(r, classname)
        if classname in ("TClonesArray", "TRefArray", "TMap", "TBtree", "THashTable", "TRef"):
            raise Unsupported(f"a {classname}")
        start = r.pos
        end = self._count(r)
        version = r.u16()
        if version & MEMBERWISE:
            raise Unsupported(f"a {classname} written member-wise")
        checksum = None
        if version == 0 and end is not None and end - start >= 10:
            checksum = r.u32()
        info = self._info(classname, version, checksum, base_version)
        node = Node(classname, version, start)
        self._members(r, info, node)
        node.end = r.pos
        if end is not None and r.pos != end:
            raise RecordError(
                f"a {classname} (version {version}) at {start} ends at {r.pos}, "
                f"its byte count says {end}"
            )
        return node

    def _info(
        self, classname: str, version: int, checksum: int | None, base_version: int | None
    ) -> ClassInfo:
        info = None
        if checksum is not None:
            info = self.streamers.by_checksum(classname, checksum)
        elif version > 0:
            info = self.streamers.get(classname, version)
        if info is None and version <= 1:
            info = self.streamers.only(classname)
        if info is None:
            raise Unsupported(
                f"class {classname} version {version}, which the file's streamers do not describe"
            )
        return info

    def _count(self, r: Reader) -> int | None:
        start = r.pos
        end = r.bytecount()
        if end is not None:
            self.counts.append((start, end))
        return end

    def _members(self, r: Reader, info: ClassInfo, node: Node) -> None:
        for element in info.elements:
            start = r.pos
            if element.is_base:
                if element.name == "TObject" or element.type == TypeCode.TOBJECT:
                    node.bases.append(self._tobject(r))
                else:
                    node.bases.append(self.stream(r, element.name, element.base_version))
                continue
            value = self._element(r, element, node)
            node.members[element.name] = Value(start, r.pos, value)

    def _element(self, r: Reader, element: Element, node: Node) -> Any:
        code = element.type
        if code in _SCALARS:
            scalar = _SCALARS[code]
            return scalar.unpack_from(self.data, r.need(scalar.size))[0]
        if code in (TypeCode.DOUBLE32, TypeCode.FLOAT16):
            return self._float_packed(r, element, 1)
        if code == TypeCode.CHAR_STAR:
            return r.bytes(r.i32())
        if TypeCode.OFFSET_L < code < TypeCode.OFFSET_P:
            basic = code - TypeCode.OFFSET_L
            if basic in (TypeCode.DOUBLE32, TypeCode.FLOAT16):
                return self._float_packed(r, element, element.length)
            return self._array(r, basic, element.length)
        if TypeCode.OFFSET_P < code < TypeCode.OBJECT:
            basic = code - TypeCode.OFFSET_P
            present = r.u8()
            if not present:
                return None
            count_value = node.find(element.count_name or "")
            if count_value is None:
                raise Unsupported(f"{element.name}'s count {element.count_name!r} is not a member")
            count = int(count_value.value) * element.length
            if basic in (TypeCode.DOUBLE32, TypeCode.FLOAT16):
                return self._float_packed(r, element, count)
            return self._array(r, basic, count)
        if code == TypeCode.TSTRING or code == TypeCode.OFFSET_L + TypeCode.TSTRING:
            texts = [r.tstring() for _ in range(element.length)]
            return texts[0] if element.array_length == 0 else texts
        if code == TypeCode.TOBJECT:
            return self._tobject(r)
        if code == TypeCode.TNAMED:
            return self.stream(r, "TNamed")
        kind = code
        if TypeCode.OFFSET_L + TypeCode.OBJECT <= code <= TypeCode.OFFSET_L + TypeCode.STL_p:
            kind = code - TypeCode.OFFSET_L
        typename = element.typename.rstrip("*").strip()
        if kind in _INLINE_OBJECTS:
            objects = [self.stream(r, typename) for _ in range(element.length)]
            return objects[0] if element.array_length == 0 else objects
        if kind in _POINTERS:
            pointers = [self.object_any(r) for _ in range(element.length)]
            return pointers[0] if element.array_length == 0 else pointers
        if code in _WRAPPED:
            return self._wrapped(r, element)
        raise Unsupported(f"member {element.name!r} of type code {code} ({element.typename})")

    def _wrapped(self, r: Reader, element: Element) -> Any:
        """A member written in a byte count of its own (an STL container, or a member with a
        streamer of its own): skipped whole, when nothing in it can be referred to."""
        start = r.pos
        end = self._count(r)
        if end is None:
            raise Unsupported(f"member {element.name!r} ({element.typename}) without a byte count")
        if self.streamers.may_refer(element.typename.rstrip("*").strip()):
            raise Unsupported(f"member {element.name!r} of {element.typename} may hold pointers")
        r.pos = end
        return (start, end)

    def _array(self, r: Reader, basic: int, count: int) -> np.ndarray[Any, Any]:
        dtype = _DTYPES.get(basic)
        if dtype is None:
            raise Unsupported(f"an array of type code {basic}")
        position = r.need(count * dtype.itemsize)
        return np.frombuffer(self.data, dtype, count, position)

    def _float_packed(self, r: Reader, element: Element, count: int) -> Any:
        # Packed values are only passed over: nothing here changes them.
        size = element.packed_size()
        position = r.need(count * size)
        return self.data[position : position + count * size]

    # --- classes with streamers of their own --------------------------------------------

    def _tobject(self, r: Reader) -> Node:
        start = r.pos
        version = r.i16()
        if version & BYTECOUNT_VMASK:
            r.pos = start
            self._count(r)
            version = r.i16()
        node = Node("TObject", version, start)
        unique = r.u32()
        bits = r.u32()
        node.members["fUniqueID"] = Value(r.pos - 8, r.pos - 4, unique)
        node.members["fBits"] = Value(r.pos - 4, r.pos, bits)
        if bits & IS_REFERENCED:
            r.skip(2)
        node.end = r.pos
        return node

    def _objarray(self, r: Reader) -> Node:
        start = r.pos
        end = self._count(r)
        version = r.u16()
        node = Node("TObjArray", version, start)
        if version > 2:
            node.bases.append(self._tobject(r))
        if version > 1:
            name_at = r.pos
            node.members["fName"] = Value(name_at, name_at, r.tstring())
            node.members["fName"].end = r.pos
        size = r.i32()
        lower = r.i32()
        node.members["fLowerBound"] = Value(r.pos - 4, r.pos, lower)
        items_at = r.pos
        items = [self.object_any(r) for _ in range(size)]
        node.members["items"] = Value(items_at, r.pos, items)
        node.end = r.pos
        if end is not None and r.pos != end:
            raise RecordError(f"a TObjArray at {start} ends at {r.pos}, its byte count says {end}")
        return node

    def _list(self, r: Reader, classname: str = "TList") -> Node:
        start = r.pos
        end = self._count(r)
        version = r.u16()
        if version <= 3:
            raise Unsupported(f"a {classname} of version {version}")
        node = Node(classname, version, start)
        node.bases.append(self._tobject(r))
        node.members["fName"] = Value(r.pos, r.pos, r.tstring())
        size = r.i32()
        items_at = r.pos
        items: list[Node | Ref | None] = []
        for _ in range(size):
            items.append(self.object_any(r))
            length = r.u8()
            if length == 255:
                length = r.i32()
            r.skip(length)
        node.members["items"] = Value(items_at, r.pos, items)
        node.end = r.pos
        if end is not None and r.pos != end:
            raise RecordError(
                f"a {classname} at {start} ends at {r.pos}, its byte count says {end}"
            )
        return node

    def _tarray(self, r: Reader, classname: str) -> Node:
        start = r.pos
        count = r.i32()
        dtype = _ARRAY_CLASSES[classname]
        position = r.need(count * dtype.itemsize)
        node = Node(classname, 0, start, r.pos)
        node.members["fArray"] = Value(
            start, r.pos, np.frombuffer(self.data, dtype, count, position)
        )
        return node

    def _basket(self, r: Reader) -> Node:
        """An embedded TBasket: a key's fields, the basket's, its entry offsets and its bytes."""
        start = r.pos
        node = Node("TBasket", 0, start)
        nbytes, key_version, objlen, _datime, keylen, _cycle = struct.unpack_from(
            ">ihiIhh", self.data, r.need(18)
        )
        if key_version > 1000:
            r.skip(16)
        else:
            r.skip(8)
        for _ in range(3):
            r.tstring()
        node.version = r.u16()
        buffer_size = r.i32()
        nev_buf_size = r.i32()
        io_bits = 0
        if nev_buf_size < 0:
            nev_buf_size = -nev_buf_size
            io_bits = r.u8()
        nev_buf = r.i32()
        last = r.i32()
        flag = r.u8()
        offsets: np.ndarray[Any, Any] | None = None
        displacement: np.ndarray[Any, Any] | None = None
        generate = flag >= 80
        if generate:
            flag -= 80
        if not generate and flag and flag % 10 != 2:
            if nev_buf:
                offsets = self._array(r, TypeCode.INT, r.i32()).astype(np.int64)
                if 20 < flag < 40:
                    offsets &= ~_DISPLACEMENT_MASK
            if flag > 40:
                displacement = self._array(r, TypeCode.INT, r.i32()).astype(np.int64)
        content = b""
        if flag == 1 or flag > 10:
            content = r.bytes(last if node.version > 1 else r.i32())
        values = {
            "fNbytes": nbytes,
            "fObjlen": objlen,
            "fKeylen": keylen,
            "fBufferSize": buffer_size,
            "fNevBufSize": nev_buf_size,
            "fIOBits": io_bits,
            "fNevBuf": nev_buf,
            "fLast": last,
            "generated_offsets": generate,
            "offsets": offsets,
            "displacement": displacement,
            "content": content,
        }
        node.members = {name: Value(start, r.pos, value) for name, value in values.items()}
        node.end = r.pos
        return node

    def _tree_index(self, r: Reader) -> Node:
        """A TTreeIndex (TTreeIndex::Streamer): its base, the two expressions, then the major
        and minor values and the entry numbers of its ``fN`` entries, sorted."""
        start = r.pos
        end = self._count(r)
        version = r.u16()
        node = Node("TTreeIndex", version, start)
        node.bases.append(self.stream(r, "TVirtualIndex"))
        for name in ("fMajorName", "fMinorName"):
            at = r.pos
            node.members[name] = Value(at, at, r.tstring())
            node.members[name].end = r.pos
        at = r.pos
        count = r.i64()
        node.members["fN"] = Value(at, r.pos, count)
        arrays = (
            ["fIndexValues", "fIndexValuesMinor", "fIndex"]
            if version > 1
            else [
                "fIndexValues",
                "fIndex",
            ]
        )
        for name in arrays:
            at = r.pos
            node.members[name] = Value(at, 0, self._array(r, TypeCode.LONG64, count))
            node.members[name].end = r.pos
        node.end = r.pos
        if end is not None and r.pos != end:
            raise RecordError(f"a TTreeIndex at {start} ends at {r.pos}, its byte count says {end}")
        return node


_CUSTOM: dict[str, Any] = {
    "TTreeIndex": Walk._tree_index,
    "TObject": Walk._tobject,
    "TObjArray": Walk._objarray,
    "TList": Walk._list,
    "THashList": lambda walk, r: walk._list(r, "THashList"),
    "TBasket": Walk._basket,
}
