"""TKey: the header in front of every record of a ROOT file.

A key is ``fNbytes`` (key and stored record), ``fVersion`` (above 1000 when its seeks are
64-bit), ``fObjlen`` (the record uncompressed), ``fDatime``, ``fKeylen``, ``fCycle``,
``fSeekKey`` (where the key itself is), ``fSeekPdir`` (its directory), then the class name,
name and title as TStrings. A key whose record lies past 2 GiB must be a 64-bit one.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, replace

from ess_split.format.buffer import Reader, RecordError, tstring

__all__ = [
    "BIG_FILE",
    "BIG_KEY_VERSION",
    "SMALL_KEY_VERSION",
    "Key",
    "datime",
    "new_key",
    "parse_key",
]

_START = struct.Struct(">ihiIhh")
_SEEKS_SMALL = struct.Struct(">ii")
_SEEKS_BIG = struct.Struct(">qq")
SMALL_KEY_VERSION = 4
BIG_KEY_VERSION = 1004
#: Positions from here on need 64-bit keys, headers and directories (ROOT's kStartBigFile).
BIG_FILE = 2_000_000_000


def datime(moment: dt.datetime | None = None) -> int:
    """ROOT's TDatime code for ``moment`` (default: now, local time, as ROOT writes it)."""
    m = moment or dt.datetime.now()
    return (
        (m.year - 1995) << 26
        | m.month << 22
        | m.day << 17
        | m.hour << 12
        | m.minute << 6
        | m.second
    )


@dataclass(frozen=True)
class Key:
    """A TKey's header. ``seek_key`` is where the key starts in its file."""

    nbytes: int
    version: int
    objlen: int
    datime: int
    keylen: int
    cycle: int
    seek_key: int
    seek_pdir: int
    classname: str
    name: str
    title: str

    @property
    def big(self) -> bool:
        return self.version > 1000

    @property
    def stored(self) -> int:
        """Bytes of the record as stored (compressed, or not)."""
        return self.nbytes - self.keylen

    @property
    def compressed(self) -> bool:
        return self.stored != self.objlen

    @property
    def data_start(self) -> int:
        return self.seek_key + self.keylen

    def header(self) -> bytes:
        """The TKey's own fields; for most records all of ``keylen``, for a basket followed by
        TBasket's fields."""
        seeks = (_SEEKS_BIG if self.big else _SEEKS_SMALL).pack(self.seek_key, self.seek_pdir)
        return (
            _START.pack(
                self.nbytes, self.version, self.objlen, self.datime, self.keylen, self.cycle
            )
            + seeks
            + tstring(self.classname)
            + tstring(self.name)
            + tstring(self.title)
        )

    def pack(self) -> bytes:
        """This header's bytes (``keylen`` of them), for a key that is only a TKey."""
        header = self.header()
        if len(header) != self.keylen:
            raise ValueError(f"a key of {len(header)} bytes says it has {self.keylen}")
        return header

    def placed(self, seek_key: int, seek_pdir: int, stored: int | None = None) -> Key:
        """This key moved to ``seek_key`` in directory ``seek_pdir`` (64-bit when it must be),
        holding ``stored`` bytes (default: as many as now)."""
        stored = self.stored if stored is None else stored
        big = self.big or seek_key + self.keylen + 16 + stored > BIG_FILE or seek_pdir > BIG_FILE
        version = self.version + 1000 if big and not self.big else self.version
        keylen = self.keylen + (8 if big and not self.big else 0)
        return replace(
            self,
            version=version,
            keylen=keylen,
            nbytes=keylen + stored,
            seek_key=seek_key,
            seek_pdir=seek_pdir,
        )


def new_key(
    classname: str,
    name: str,
    title: str,
    *,
    objlen: int,
    stored: int,
    seek_key: int,
    seek_pdir: int,
    cycle: int = 1,
    when: int | None = None,
    extra: int = 0,
    big: bool = False,
) -> Key:
    """The key of a new record of ``objlen`` bytes stored in ``stored`` at ``seek_key``;
    ``extra`` bytes of the header follow the TKey's own (a basket's fields); ``big`` makes it
    a 64-bit key wherever it is."""
    strings = len(tstring(classname)) + len(tstring(name)) + len(tstring(title))
    small_keylen = _START.size + _SEEKS_SMALL.size + strings + extra
    big = big or seek_key + small_keylen + 8 + stored > BIG_FILE or seek_pdir > BIG_FILE
    keylen = small_keylen + (8 if big else 0)
    return Key(
        nbytes=keylen + stored,
        version=BIG_KEY_VERSION if big else SMALL_KEY_VERSION,
        objlen=objlen,
        datime=datime() if when is None else when,
        keylen=keylen,
        cycle=cycle,
        seek_key=seek_key,
        seek_pdir=seek_pdir,
        classname=classname,
        name=name,
        title=title,
    )


def parse_key(data: bytes, position: int = 0, *, listed: bool = False) -> Key:
    """The key header at ``position`` of ``data``; raises RecordError if it is not one.

    ``listed``: the header is an entry of a directory's key list, whose strings some ROOT
    versions wrote longer than its ``fKeylen`` says (a subdirectory's class as "TDirectoryFile"
    with the length of "TDirectory"); the record's own key is then the one to trust."""
    reader = Reader(data, position)
    nbytes, version, objlen, when, keylen, cycle = _START.unpack_from(
        data, reader.need(_START.size)
    )
    big = version > 1000
    seeks = _SEEKS_BIG if big else _SEEKS_SMALL
    seek_key, seek_pdir = seeks.unpack_from(data, reader.need(seeks.size))
    classname = reader.tstring()
    name = reader.tstring()
    title = reader.tstring()
    too_long = reader.pos - position > keylen and not listed
    if too_long or keylen <= 0 or nbytes < keylen or objlen < 0:
        raise RecordError(
            f"key at {position} is inconsistent (nbytes {nbytes}, keylen {keylen}, objlen {objlen})"
        )
    return Key(
        nbytes, version, objlen, when, keylen, cycle, seek_key, seek_pdir, classname, name, title
    )


def listed_length(data: bytes, position: int) -> int:
    """How many bytes the key header at ``position`` of a key list takes: its fields and
    strings as written, whatever its ``fKeylen`` says."""
    reader = Reader(data, position)
    version = _START.unpack_from(data, reader.need(_START.size))[1]
    reader.skip((_SEEKS_BIG if version > 1000 else _SEEKS_SMALL).size)
    for _ in range(3):
        reader.tstring()
    return reader.pos - position
