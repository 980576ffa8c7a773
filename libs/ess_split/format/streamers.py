"""The classes a file describes: its streamer records (TStreamerInfo), as the walker needs them.

Consumes the file's streamer records as ``uproot_io`` reads them. Produces, per
class and version (or checksum, for classes without a version of their own), the members in the
order they are written: ``Element``s with ROOT's type code, type name, array length and, for
pointers to arrays, the member that counts them. Also answers whether a class, as written, can
hold references into its buffer (``may_refer``): objects written through pointers, and
collections of them, are written once and referred to by position afterwards.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

__all__ = ["ClassInfo", "Element", "Streamers", "TypeCode"]


class TypeCode:
    """ROOT's TStreamerInfo::EReadWrite codes."""

    BASE = 0
    CHAR = 1
    SHORT = 2
    INT = 3
    LONG = 4
    FLOAT = 5
    COUNTER = 6
    CHAR_STAR = 7
    DOUBLE = 8
    DOUBLE32 = 9
    LEGACY_CHAR = 10
    UCHAR = 11
    USHORT = 12
    UINT = 13
    ULONG = 14
    BITS = 15
    LONG64 = 16
    ULONG64 = 17
    BOOL = 18
    FLOAT16 = 19
    OFFSET_L = 20
    OFFSET_P = 40
    OBJECT = 61
    ANY = 62
    OBJECT_p = 63
    OBJECT_P = 64
    TSTRING = 65
    TOBJECT = 66
    TNAMED = 67
    ANY_p = 68
    ANY_P = 69
    ANY_P_NO_VT = 70
    STL_p = 71
    STL = 300
    STL_STRING = 365
    STREAMER = 500
    STREAM_LOOP = 501


#: Bytes on file of each basic type (Long_t is written as 8 bytes).
BASIC_SIZES = {
    TypeCode.CHAR: 1,
    TypeCode.SHORT: 2,
    TypeCode.INT: 4,
    TypeCode.LONG: 8,
    TypeCode.FLOAT: 4,
    TypeCode.COUNTER: 4,
    TypeCode.DOUBLE: 8,
    TypeCode.LEGACY_CHAR: 1,
    TypeCode.UCHAR: 1,
    TypeCode.USHORT: 2,
    TypeCode.UINT: 4,
    TypeCode.ULONG: 8,
    TypeCode.BITS: 4,
    TypeCode.LONG64: 8,
    TypeCode.ULONG64: 8,
    TypeCode.BOOL: 1,
}

_RANGE = re.compile(r"\[([^\[\]]*,[^\[\]]*)\]")

# Classes written by a streamer of their own, without references into the buffer.
_PLAIN_CUSTOM = frozenset(
    {
        "TObject",
        "TString",
        "TNamed",
        "TDatime",
        "TUUID",
        "TArrayC",
        "TArrayS",
        "TArrayI",
        "TArrayL",
        "TArrayL64",
        "TArrayF",
        "TArrayD",
        "TBits",
        # A reference by unique id and process number (TRef::Streamer, TRefArray::Streamer):
        # no object is written.
        "TRef",
        "TRefArray",
        "string",
        "std::string",
    }
)
# Classes that hold other objects through pointers.
_REFERRING = frozenset(
    {
        "TObjArray",
        "TList",
        "THashList",
        "TMap",
        "TClonesArray",
        "TCollection",
        "TSeqCollection",
        "TOrdCollection",
        "TSortedList",
        "THashTable",
        "TBtree",
    }
)


@dataclass(frozen=True)
class Element:
    """One member (or base class) of a class as its streamer record writes it."""

    name: str
    type: int
    typename: str
    array_length: int
    title: str
    count_name: str | None = None
    base_version: int | None = None
    stl_type: int | None = None
    ctype: int | None = None

    @property
    def is_base(self) -> bool:
        return self.base_version is not None

    @property
    def length(self) -> int:
        """How many values a fixed-size array member holds (1 for a scalar)."""
        return max(self.array_length, 1)

    def packed_size(self) -> int:
        """Bytes of one value of a Double32_t or Float16_t member, as its title's range says
        (TStreamerElement::GetRange): 4 with a range (an integer of so many bits) or for a
        Double32_t without one (a float), 3 when only a number of bits under 15 is given or for
        a Float16_t without one (an exponent byte and a 2-byte mantissa)."""
        double = self.type % TypeCode.OFFSET_L == TypeCode.DOUBLE32
        found = _RANGE.search(self.title)
        if found is None:
            return 4 if double else 3
        parts = [part.strip().lower().replace(" ", "") for part in found.group(1).split(",")]
        nbits = 32
        if len(parts) > 2:
            try:
                nbits = int(parts[2])
            except ValueError:
                nbits = 32
            if not 2 <= nbits <= 32:
                nbits = 32
        low, high = _bound(parts[0]), _bound(parts[1])
        if low < high:
            return 4
        if nbits < 15:
            return 3
        return 4 if double else 3


@dataclass(frozen=True)
class ClassInfo:
    name: str
    version: int
    checksum: int
    elements: tuple[Element, ...]


def _bound(text: str) -> float:
    """A range bound as TStreamerElement::GetRange reads it (multiples of pi included)."""
    if "pi" in text:
        value = math.pi
        if "2pi" in text or "2*pi" in text or "twopi" in text:
            value = 2 * math.pi
        elif "pi/2" in text:
            value = math.pi / 2
        elif "pi/4" in text:
            value = math.pi / 4
        return -value if "-" in text else value
    try:
        return float(text)
    except ValueError:
        return 0.0


class Streamers:
    """The streamer records of one file, by class name and version."""

    def __init__(self, infos: dict[str, dict[int, ClassInfo]]) -> None:
        self._raw = infos
        self._refer: dict[str, bool] = {}

    def names(self) -> list[str]:
        return list(self._raw)

    def get(self, name: str, version: int) -> ClassInfo | None:
        return self._raw.get(name, {}).get(version)

    def by_checksum(self, name: str, checksum: int) -> ClassInfo | None:
        for info in self._raw.get(name, {}).values():
            if info.checksum == checksum:
                return info
        return None

    def only(self, name: str) -> ClassInfo | None:
        """The class's one streamer record, when the file has exactly one."""
        versions = list(self._raw.get(name, {}))
        return self.get(name, versions[0]) if len(versions) == 1 else None

    def may_refer(self, typename: str) -> bool:
        """Whether a value of ``typename``, written out, may hold references into its buffer
        (or cannot be told not to)."""
        found = self._refer.get(typename)
        if found is None:
            found = self._refer[typename] = _may_refer(self, _bare(typename), frozenset())
        return found


def _bare(typename: str) -> str:
    name = typename.strip()
    for prefix in ("const ",):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace(" ", "") if "<" in name else name


_BASIC_NAMES = frozenset(
    {
        "char",
        "unsignedchar",
        "short",
        "unsignedshort",
        "int",
        "unsignedint",
        "long",
        "unsignedlong",
        "longlong",
        "unsignedlonglong",
        "float",
        "double",
        "bool",
        "Char_t",
        "UChar_t",
        "Short_t",
        "UShort_t",
        "Int_t",
        "UInt_t",
        "Long_t",
        "ULong_t",
        "Long64_t",
        "ULong64_t",
        "Float_t",
        "Double_t",
        "Bool_t",
        "Double32_t",
        "Float16_t",
        "int8_t",
        "uint8_t",
        "int16_t",
        "uint16_t",
        "int32_t",
        "uint32_t",
        "int64_t",
        "uint64_t",
        "size_t",
        "unsigned",
        "signed",
        "unsigned char",
        "unsigned short",
        "unsigned int",
        "unsigned long",
        "long long",
        "unsigned long long",
    }
)


def _template_arguments(name: str) -> list[str] | None:
    start = name.find("<")
    if start < 0 or not name.endswith(">"):
        return None
    inner = name[start + 1 : -1]
    arguments: list[str] = []
    current: list[str] = []
    depth = 0
    for char in inner:
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        if char == "," and depth == 0:
            arguments.append("".join(current))
            current = []
        else:
            current.append(char)
    arguments.append("".join(current))
    return [argument.strip() for argument in arguments]


_STL_PREFIXES = (
    "vector<",
    "std::vector<",
    "list<",
    "std::list<",
    "deque<",
    "std::deque<",
    "set<",
    "std::set<",
    "multiset<",
    "std::multiset<",
    "map<",
    "std::map<",
    "multimap<",
    "std::multimap<",
    "unordered_set<",
    "std::unordered_set<",
    "unordered_map<",
    "std::unordered_map<",
    "bitset<",
    "std::bitset<",
    "array<",
    "std::array<",
    "ROOT::VecOps::RVec<",
    "RVec<",
    "pair<",
    "std::pair<",
)


@functools.lru_cache(maxsize=4096)
def _plain(name: str) -> bool:
    return name in _BASIC_NAMES or name in _PLAIN_CUSTOM or name.replace(" ", "") in _BASIC_NAMES


def _may_refer(streamers: Streamers, name: str, seen: frozenset[str]) -> bool:
    if name.endswith("*"):
        return True
    if _plain(name):
        return False
    if name in _REFERRING:
        return True
    if name.startswith(_STL_PREFIXES):
        arguments = _template_arguments(name) or []
        if name.startswith(("bitset<", "std::bitset<")):
            return False
        if name.startswith(("array<", "std::array<")):
            arguments = arguments[:1]
        # Allocators and comparators are not written.
        if name.startswith(
            (
                "map<",
                "std::map<",
                "multimap<",
                "std::multimap<",
                "unordered_map<",
                "std::unordered_map<",
                "pair<",
                "std::pair<",
            )
        ):
            arguments = arguments[:2]
        else:
            arguments = arguments[:1]
        return any(_may_refer(streamers, argument, seen) for argument in arguments)
    if name in seen:
        return False
    versions = streamers._raw.get(name)
    if not versions:
        # A class the file does not describe: nothing tells what it writes.
        return True
    seen = seen | {name}
    for version in versions:
        info = streamers.get(name, version)
        assert info is not None
        for element in info.elements:
            if _element_may_refer(streamers, element, seen):
                return True
    return False


def _element_may_refer(streamers: Streamers, element: Element, seen: frozenset[str]) -> bool:
    code = element.type
    if element.is_base:
        return _may_refer(streamers, element.name, seen)
    if code in (TypeCode.OBJECT_P, TypeCode.ANY_P, TypeCode.ANY_P_NO_VT, TypeCode.STL_p):
        return True
    if code == TypeCode.STREAMER and element.stl_type is not None:
        # A collection written by its own streamer: its values say what it may hold.
        return _may_refer(streamers, _bare(element.typename.strip()), seen)
    if code in (TypeCode.STREAMER, TypeCode.STREAM_LOOP):
        return True
    if code < TypeCode.OBJECT or code in (TypeCode.TSTRING, TypeCode.STL_STRING):
        return False
    if code in (TypeCode.TOBJECT, TypeCode.TNAMED):
        return False
    typename = element.typename.rstrip("*").strip()
    return _may_refer(streamers, _bare(typename), seen)
