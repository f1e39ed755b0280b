"""What a table is: its entry type, how entries merge, and what happens when one changes.

Every table (K2V items, index counters, buckets, aliases, keys) is one of these plus a
replication strategy. Entries are CRDTs: ``merge`` is commutative, associative and idempotent,
and ``encode`` is canonical so replicas can compare bytes.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from garagekv.db.writer import WriteTxn


class Entry(Protocol):
    def tree_key(self) -> bytes: ...

    def encode(self) -> bytes: ...

    def merge(self, other: Any) -> None: ...

    def is_tombstone(self) -> bool: ...


E = TypeVar("E", bound=Entry)


class TableSchema(Protocol[E]):
    """Per-table behaviour; ``updated`` runs inside the transaction that changed the entry."""

    name: str

    def decode(self, data: bytes) -> E: ...

    def updated(self, tx: WriteTxn, old: E | None, new: E | None) -> None: ...

    def matches_filter(self, entry: E, filt: Any) -> bool: ...

    def filter_to_wire(self, filt: Any) -> Any: ...

    def filter_from_wire(self, w: Any) -> Any: ...


class StoredForm(Protocol):
    """How a table keeps its entries in its LMDB tree when not as their canonical bytes.

    A schema may have one as ``stored_form`` (the K2V items do: garagekv/model/k2v/stored.py) to
    leave out what the tree key already says. ``TableData`` packs on every write and unpacks on
    every read, so that everything above it (hashes, replication, the wire, decoding) sees only
    canonical bytes; other modules reading the entry tree directly go through
    ``TableData.canonical``. ``unpack`` must return bytes it is given unchanged if they are not
    packed (entries written before the table had a stored form).
    """

    def pack(self, tx: WriteTxn, tree_key: bytes, raw: bytes) -> bytes: ...

    def unpack(self, tree_key: bytes, stored: bytes) -> bytes: ...


class BaseSchema:
    """Defaults for schemas with no side effects and no filters."""

    name = ""

    def updated(self, tx: WriteTxn, old: Any, new: Any) -> None:
        return None

    def matches_filter(self, entry: Any, filt: Any) -> bool:
        return True

    def filter_to_wire(self, filt: Any) -> Any:
        return filt

    def filter_from_wire(self, w: Any) -> Any:
        return w
