"""An RNTuple's schema as a cut needs it: its tree of fields and the physical columns of each.

Consumes the header's fields and columns and those of the footer's schema extension (their ids
continue the header's). Produces ``Field``s (children in id order, columns in the order of their
representations) and ``Column``s (their page codec, field, representation and position in it).
A field's item range in a cluster decides its columns' element ranges (``cutter``); what that
walk needs (structural roles, repetitions, which columns index a collection) is checked here, and
what it cannot follow is refused: unknown roles or flags.

A field added while the RNTuple was written (the footer's schema extension) has deferred
columns: their elements before their first element index are zeros that no page holds. Such a
column counts whole entries (a top-level field, or a record's or array's member of one:
``per_entry`` elements each), which is what places those zeros in each cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ess_split.format.buffer import RecordError
from ess_split.format.walker import Unsupported
from ess_split.rntuple.metadata import (
    COLUMN_DEFERRED,
    COLUMN_RANGE,
    FIELD_CHECKSUM,
    FIELD_PROJECTED,
    FIELD_REPETITIVE,
    FieldRecord,
    SchemaPart,
)
from ess_split.rntuple.pages import Encoding, PageCodec, column_type

__all__ = ["Column", "Field", "Schema"]

#: Structural roles: leaf, collection, record, variant, streamer.
ROLE_VARIANT = 0x03
_ROLES = frozenset({0x00, 0x01, 0x02, ROLE_VARIANT, 0x04})
_FIELD_FLAGS = FIELD_REPETITIVE | FIELD_PROJECTED | FIELD_CHECKSUM
_COLUMN_FLAGS = COLUMN_DEFERRED | COLUMN_RANGE


@dataclass
class Field:
    id: int
    record: FieldRecord
    children: list[int] = field(default_factory=list)
    columns: list[int] = field(default_factory=list)

    @property
    def repetitions(self) -> int:
        """Items of the children (and columns) per item of this field."""
        return self.record.repetitions if self.record.flags & FIELD_REPETITIVE else 1


@dataclass(frozen=True)
class Column:
    id: int
    codec: PageCodec
    field: int
    representation: int
    #: The column's place among its field's columns of the same representation.
    position: int
    #: Elements before the first that pages hold (zeros), for a deferred column.
    first_element: int = 0
    #: Elements per entry, for a column outside every collection and variant.
    per_entry: int | None = None
    #: Where ``first_element`` is written in the footer's schema extension frame.
    first_element_at: int | None = None

    @property
    def deferred(self) -> bool:
        return self.first_element > 0


class Schema:
    """See the module's docstring."""

    def __init__(self, header: SchemaPart, extension: SchemaPart) -> None:
        records = header.fields + extension.fields
        self.fields = [Field(i, record) for i, record in enumerate(records)]
        self.top: list[int] = []
        for item in self.fields:
            record = item.record
            name = record.name
            if record.role not in _ROLES:
                raise Unsupported(f"RNTuple field {name!r} has structural role {record.role}")
            if record.flags & ~_FIELD_FLAGS:
                raise Unsupported(f"RNTuple field {name!r} has flags {record.flags:#x}")
            if record.parent == item.id:
                self.top.append(item.id)
            elif record.parent < len(self.fields):
                self.fields[record.parent].children.append(item.id)
            else:
                raise RecordError(f"RNTuple field {name!r} has parent {record.parent}")
        self.columns: list[Column] = []
        #: Columns of the header; the extension's follow.
        self.header_columns = len(header.columns)
        positions: dict[tuple[int, int], int] = {}
        for index, column in enumerate(header.columns + extension.columns):
            if column.field >= len(self.fields):
                raise RecordError(f"RNTuple column {index} belongs to field {column.field}")
            owner = self.fields[column.field]
            if column.flags & ~_COLUMN_FLAGS:
                raise Unsupported(
                    f"RNTuple field {owner.record.name!r} has a column with flags {column.flags:#x}"
                )
            if column.first_element < 0:
                raise Unsupported(
                    f"RNTuple field {owner.record.name!r} has a deferred column that is suppressed"
                )
            if column.first_element and column.first_element_at is None:
                raise Unsupported(
                    f"RNTuple field {owner.record.name!r}: a deferred column in the header"
                )
            slot = (column.field, column.representation)
            position = positions.get(slot, 0)
            positions[slot] = position + 1
            codec = PageCodec(column_type(column.type_code, column.bits), column.bits)
            self.columns.append(
                Column(
                    index,
                    codec,
                    column.field,
                    column.representation,
                    position,
                    column.first_element,
                    first_element_at=column.first_element_at,
                )
            )
            owner.columns.append(index)
        self._check_tree()
        self._count_entries()

    def _count_entries(self) -> None:
        """Elements per entry of every column that counts whole entries."""
        items: dict[int, int | None] = dict.fromkeys(self.top, 1)
        order = list(self.top)
        while order:
            current = self.fields[order.pop()]
            per_item = items[current.id]
            per_entry = None if per_item is None else per_item * current.repetitions
            counted = current.columns
            nested = False
            if current.columns:
                lead = self.columns[current.columns[0]].codec.kind
                nested = lead.index or lead.encoding is Encoding.SWITCH
            if nested:
                # Only the index (or switch) counts entries; the rest is the content.
                counted = [c for c in current.columns if self.columns[c].position == 0]
            for column in counted:
                self.columns[column] = replace(self.columns[column], per_entry=per_entry)
            if nested:
                per_entry = None
            for child in current.children:
                items[child] = per_entry
                order.append(child)
        for described in self.columns:
            if described.deferred and described.per_entry is None:
                owner = self.fields[described.field].record.name
                raise Unsupported(
                    f"RNTuple field {owner!r}: a deferred column inside a collection or variant"
                )

    def _check_tree(self) -> None:
        seen: set[int] = set()
        stack = list(self.top)
        while stack:
            current = stack.pop()
            if current in seen:
                raise RecordError("RNTuple fields form a cycle")
            seen.add(current)
            stack.extend(self.fields[current].children)
        if len(seen) != len(self.fields):
            raise RecordError("RNTuple fields that no top-level field leads to")
