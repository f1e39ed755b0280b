"""The table layer's RPC messages: one small class per message, checked once when received.

Three endpoints per table speak these (formats in docs/protocol.md):

- ``garagekv/table/rpc:<table>`` (``Table``): ``update``, ``get_many``, ``range``;
- ``garagekv/table/sync:<table>`` (anti-entropy): ``sums``, ``elements``, ``items``, ``digest``;
- ``garagekv/table/gc:<table>`` (tombstone GC): ``update``, ``delete_if_equal_hash``.

``to_wire`` gives the msgpack array the message has always been (so nodes of earlier versions
understand it); ``from_wire`` accepts exactly that and raises ``MalformedMessage`` (a 400-class
``InvalidRequest`` for the sender) on an unknown tag, a wrong arity or a field of the wrong type.
Answers whose shape the caller relies on have a class (``get_many``, ``range``) or are checked by
their request's ``answer`` (``sums``, ``elements``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from garagekv.rpc.messages import (
    MalformedMessage,
    as_bool,
    as_bytes,
    as_bytes_list,
    as_int,
    as_opt_bytes,
    as_opt_int,
    fields,
    malformed,
    tag_of,
)
from garagekv.table.data import ScanRange
from garagekv.table.range_sums import LEVELS, unpack_sum
from garagekv.table.schema import Entry, TableSchema

E = TypeVar("E", bound=Entry)

__all__ = [
    "DeleteIfEqualHash",
    "DigestRequest",
    "ElementsRequest",
    "GetMany",
    "GetManyAnswer",
    "ItemsPush",
    "MalformedMessage",
    "RangeAnswer",
    "RangeRequest",
    "SumsRequest",
    "Update",
    "parse_gc_request",
    "parse_sync_request",
    "parse_table_request",
]

#: Anti-entropy compares 256 partitions (the first byte of the tree key).
MAX_SYNC_PARTITION = 255


# ---- the table endpoint (Table) ----------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    """Merge these entries (canonical bytes): ``["update", [raw, ...]]`` (table and GC endpoints)."""

    TAG: ClassVar[str] = "update"
    raws: tuple[bytes, ...]

    def to_wire(self) -> list[Any]:
        return [self.TAG, list(self.raws)]

    @classmethod
    def from_wire(cls, w: Any) -> Update:
        _, raws = fields("table update", w, cls.TAG, 2)
        return cls(as_bytes_list("table update", "entries", raws))


@dataclass(frozen=True)
class GetMany:
    """The stored bytes of these tree keys: ``["get_many", [tree key, ...]]``."""

    TAG: ClassVar[str] = "get_many"
    keys: tuple[bytes, ...]

    def to_wire(self) -> list[Any]:
        return [self.TAG, list(self.keys)]

    @classmethod
    def from_wire(cls, w: Any) -> GetMany:
        _, keys = fields("table get_many", w, cls.TAG, 2)
        keys = as_bytes_list("table get_many", "keys", keys)
        if not all(0 < len(k) <= MAX_TREE_KEY for k in keys):
            raise malformed("table get_many", f"a tree key has 1 to {MAX_TREE_KEY} bytes")
        return cls(keys)


def decode_entries(schema: TableSchema[E], raws: Sequence[bytes], what: str) -> list[E]:
    """Entries a peer sent: bytes that do not decode as one are a malformed message (a 400 back
    to the sender), not an internal error of this node."""
    out: list[E] = []
    for raw in raws:
        try:
            out.append(schema.decode(raw))
        except Exception as e:  # noqa: BLE001 - msgpack and the entry codecs raise many types on garbage
            raise malformed(what, f"an entry does not decode ({type(e).__name__}: {e})"[:300]) from None
    return out


#: The longest key LMDB stores (its default ``maxkeysize``).
MAX_TREE_KEY = 511

#: In a ``get_many`` answer: the entry exists but was left out (past the answer's byte budget).
LEFT_OUT = False


@dataclass(frozen=True)
class GetManyAnswer:
    """One value per key asked, in order: the stored bytes, None (absent) or ``LEFT_OUT``."""

    raws: tuple[bytes | None | bool, ...]

    def to_wire(self) -> list[Any]:
        return list(self.raws)

    @classmethod
    def from_wire(cls, w: Any, asked: int) -> GetManyAnswer:
        what = "table get_many answer"
        if not isinstance(w, list | tuple) or len(w) != asked:
            raise malformed(what, f"expected an array of {asked} values")
        if not all(v is None or v is LEFT_OUT or isinstance(v, bytes) for v in w):
            raise malformed(what, "every value must be bytes, nil or false")
        return cls(tuple(w))


@dataclass(frozen=True)
class RangeRequest:
    """A replica's entries of a range, unmerged:
    ``["range", partition, start, prefix, end, reverse, limit, filter, skip_start]``.

    ``query.filt`` is the filter in its wire form (the schema's ``filter_to_wire``), None for
    none: the receiver rebuilds it with its schema. ``Table`` itself always asks unfiltered.
    """

    TAG: ClassVar[str] = "range"
    query: ScanRange

    def to_wire(self) -> list[Any]:
        q = self.query
        return [self.TAG, q.partition, q.start, q.prefix, q.end, q.reverse, q.limit, q.filt, q.skip_start]

    @classmethod
    def from_wire(cls, w: Any) -> RangeRequest:
        what = "table range"
        _, partition, start, prefix, end, reverse, limit, filt, skip_start = fields(what, w, cls.TAG, 9)
        return cls(
            ScanRange(
                as_bytes(what, "partition", partition),
                as_bytes(what, "start", start),
                prefix=as_bytes(what, "prefix", prefix),
                end=as_opt_bytes(what, "end", end),
                reverse=as_bool(what, "reverse", reverse),
                limit=as_opt_int(what, "limit", limit, 0),
                filt=filt,
                skip_start=as_bool(what, "skip_start", skip_start),
            )
        )


@dataclass(frozen=True)
class RangeAnswer:
    """(sort key, stored bytes) rows in scan order. ``more``: the replica stopped at its byte
    budget, and knows nothing past the last row. On the wire ``[[sort key, raw], ...]``, or
    ``{"rows": [...], "more": true}`` when it stopped early (then never empty)."""

    rows: tuple[tuple[bytes, bytes], ...]
    more: bool = False

    def to_wire(self) -> Any:
        rows = [[sk, raw] for sk, raw in self.rows]
        return {"rows": rows, "more": True} if self.more else rows

    @classmethod
    def from_wire(cls, w: Any) -> RangeAnswer:
        what = "table range answer"
        more = False
        if isinstance(w, dict):
            if set(w) != {"rows", "more"} or w["more"] is not True or not w["rows"]:
                raise malformed(what, 'expected {"rows": [non-empty array], "more": true}')
            w, more = w["rows"], True
        if not isinstance(w, list | tuple):
            raise malformed(what, "expected an array of rows")
        rows = []
        for row in w:
            if not isinstance(row, list | tuple) or len(row) != 2:
                raise malformed(what, "every row must be [sort key, entry]")
            rows.append((as_bytes(what, "sort key", row[0]), as_bytes(what, "entry", row[1])))
        return cls(tuple(rows), more)


TableRequest = Update | GetMany | RangeRequest
_TABLE_REQUESTS: dict[str, Callable[[Any], TableRequest]] = {
    Update.TAG: Update.from_wire,
    GetMany.TAG: GetMany.from_wire,
    RangeRequest.TAG: RangeRequest.from_wire,
}


def parse_table_request(w: Any) -> TableRequest:
    """Rebuild a request to ``garagekv/table/rpc:<table>`` (MalformedMessage if it is not one)."""
    return _TABLE_REQUESTS[tag_of("table request", w, tuple(_TABLE_REQUESTS))](w)


# ---- the sync endpoint (anti-entropy) ----------------------------------------------------------


def _partition(what: str, v: Any) -> int:
    return as_int(what, "partition", v, 0, MAX_SYNC_PARTITION)


#: Bounds per ``sums`` request and keys per ``elements`` request: a level's chunks of one chunk
#: above are about 64; the top level of a partition of a billion entries about 60.
MAX_SYNC_RANGES = 4096


@dataclass(frozen=True)
class SumsRequest:
    """The receiver's sums over ranges the sender chose among its chunks of ``level``:
    ``["sums", partition, level, [bound, ...], end]``, the ranges ``[bound i, bound i+1)`` and
    the last to ``end`` (nil: the partition's end; a first bound ``b""``: its start). The answer
    is one 32-byte little-endian sum per bound (table/range_sums.py)."""

    TAG: ClassVar[str] = "sums"
    partition: int
    level: int
    bounds: tuple[bytes, ...]
    end: bytes | None

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.partition, self.level, list(self.bounds), self.end]

    @classmethod
    def from_wire(cls, w: Any) -> SumsRequest:
        what = "sync sums"
        _, partition, level, bounds, end = fields(what, w, cls.TAG, 5)
        p = _partition(what, partition)
        lv = as_int(what, "level", level, 1, LEVELS)
        bs = as_bytes_list(what, "bounds", bounds)
        e = as_opt_bytes(what, "end", end)
        if not bs or len(bs) > MAX_SYNC_RANGES:
            raise malformed(what, f"expected 1 to {MAX_SYNC_RANGES} bounds")
        edges = [*bs, e] if e is not None else list(bs)
        if any(b[:1] != bytes([p]) for b in edges[1:]) or (bs[0] and bs[0][:1] != bytes([p])):
            raise malformed(what, "every bound must be a key of the partition")
        if any(a >= b for a, b in zip(edges, edges[1:], strict=False)):
            raise malformed(what, "bounds must increase")
        return cls(p, lv, bs, e)

    def answer(self, w: Any) -> list[int]:
        """The receiver's answer: one sum per bound."""
        if not isinstance(w, list) or len(w) != len(self.bounds) or not all(isinstance(v, bytes) for v in w):
            raise malformed("sync sums answer", f"expected {len(self.bounds)} sums")
        return [unpack_sum(v) for v in w]


@dataclass(frozen=True)
class ElementsRequest:
    """The receiver's element of each entry (nil: absent): ``["elements", [tree key, ...]]``."""

    TAG: ClassVar[str] = "elements"
    keys: tuple[bytes, ...]

    def to_wire(self) -> list[Any]:
        return [self.TAG, list(self.keys)]

    @classmethod
    def from_wire(cls, w: Any) -> ElementsRequest:
        _, keys = fields("sync elements", w, cls.TAG, 2)
        ks = as_bytes_list("sync elements", "keys", keys)
        if len(ks) > MAX_SYNC_RANGES:
            raise malformed("sync elements", f"at most {MAX_SYNC_RANGES} keys")
        return cls(ks)

    def answer(self, w: Any) -> list[int | None]:
        """The receiver's answer: one element (or None) per key."""
        if not isinstance(w, list) or len(w) != len(self.keys) or not all(v is None or isinstance(v, bytes) for v in w):
            raise malformed("sync elements answer", f"expected {len(self.keys)} elements or nil")
        return [None if v is None else unpack_sum(v) for v in w]


@dataclass(frozen=True)
class ItemsPush:
    """Merge these entries (canonical bytes), pushed by anti-entropy or an offload:
    ``["items", [raw, ...]]``."""

    TAG: ClassVar[str] = "items"
    raws: tuple[bytes, ...]

    def to_wire(self) -> list[Any]:
        return [self.TAG, list(self.raws)]

    @classmethod
    def from_wire(cls, w: Any) -> ItemsPush:
        _, raws = fields("sync items", w, cls.TAG, 2)
        return cls(as_bytes_list("sync items", "entries", raws))


@dataclass(frozen=True)
class DigestRequest:
    """A summary of the receiver's local data (operators and tests): ``["digest"]``."""

    TAG: ClassVar[str] = "digest"

    def to_wire(self) -> list[Any]:
        return [self.TAG]

    @classmethod
    def from_wire(cls, w: Any) -> DigestRequest:
        fields("sync digest", w, cls.TAG, 1)
        return cls()


SyncRequest = SumsRequest | ElementsRequest | ItemsPush | DigestRequest
_SYNC_REQUESTS: dict[str, Callable[[Any], SyncRequest]] = {
    SumsRequest.TAG: SumsRequest.from_wire,
    ElementsRequest.TAG: ElementsRequest.from_wire,
    ItemsPush.TAG: ItemsPush.from_wire,
    DigestRequest.TAG: DigestRequest.from_wire,
}


def parse_sync_request(w: Any) -> SyncRequest:
    """Rebuild a request to ``garagekv/table/sync:<table>`` (MalformedMessage if it is not one)."""
    return _SYNC_REQUESTS[tag_of("sync request", w, tuple(_SYNC_REQUESTS))](w)


# ---- the GC endpoint ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeleteIfEqualHash:
    """Delete each entry whose stored bytes still hash to the given hash:
    ``["delete_if_equal_hash", [[tree key, hash], ...]]``; the answer is how many went."""

    TAG: ClassVar[str] = "delete_if_equal_hash"
    items: tuple[tuple[bytes, bytes], ...]

    def to_wire(self) -> list[Any]:
        return [self.TAG, [[k, h] for k, h in self.items]]

    @classmethod
    def from_wire(cls, w: Any) -> DeleteIfEqualHash:
        what = "GC delete_if_equal_hash"
        _, items = fields(what, w, cls.TAG, 2)
        if not isinstance(items, list | tuple):
            raise malformed(what, "expected an array of [tree key, hash]")
        out = []
        for item in items:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise malformed(what, "every item must be [tree key, hash]")
            out.append((as_bytes(what, "tree key", item[0]), as_bytes(what, "hash", item[1])))
        return cls(tuple(out))


GcRequest = Update | DeleteIfEqualHash
_GC_REQUESTS: dict[str, Callable[[Any], GcRequest]] = {
    Update.TAG: Update.from_wire,
    DeleteIfEqualHash.TAG: DeleteIfEqualHash.from_wire,
}


def parse_gc_request(w: Any) -> GcRequest:
    """Rebuild a request to ``garagekv/table/gc:<table>`` (MalformedMessage if it is not one)."""
    return _GC_REQUESTS[tag_of("GC request", w, tuple(_GC_REQUESTS))](w)
