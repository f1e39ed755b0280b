"""Value types of the K2V client: tokens, items, queries and result pages.

They mirror the JSON of the K2V API (``pk``, ``sk``, ``ct``, ``v``; camelCase query fields) with
Python names, and convert to and from it with ``to_json`` / ``from_json``.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

Value = bytes | None
"""One of an item's concurrent values: bytes, or ``None`` for a tombstone (a deletion)."""


@dataclass(frozen=True, slots=True)
class CausalityToken:
    """An opaque causality token as returned by the server (``X-Garage-Causality-Token``).

    Pass the token of a read to the next write of the same item so that the write replaces the
    values that were read instead of adding a concurrent one. Construction does not validate
    (the server is the judge); :meth:`parse` does.
    """

    value: str

    EMPTY: ClassVar[CausalityToken]  # the token of an empty causal context ("AAAAAAAAAAA")

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, token: CausalityToken | str) -> CausalityToken:
        return token if isinstance(token, CausalityToken) else cls(str(token))

    @classmethod
    def parse(cls, value: str) -> CausalityToken:
        """A validated token: raises ``ValueError`` if ``value`` is not a well-formed token."""
        cls.decode_clock(value)
        return cls(value)

    @staticmethod
    def decode_clock(value: str) -> list[tuple[int, int]]:
        """The (node, time) pairs of a token: unpadded base64url of ``checksum ‖ (node, time)*``."""
        if not value or any(c in value for c in "+/=") or len(value) % 4 == 1:
            raise ValueError(f"invalid causality token: {value!r}")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            raise ValueError(f"invalid causality token: {value!r}")
        if len(raw) < 8 or (len(raw) - 8) % 16:
            raise ValueError(f"invalid causality token: {value!r}")
        (checksum,) = struct.unpack_from(">Q", raw)
        pairs = [struct.unpack_from(">QQ", raw, off) for off in range(8, len(raw), 16)]
        x = 0
        for node, t in pairs:
            x ^= node ^ t
        if x != checksum:
            raise ValueError(f"invalid causality token (checksum): {value!r}")
        return [(node, t) for node, t in pairs]

    def clock(self) -> list[tuple[int, int]]:
        """The (node id, time) pairs of this token (``ValueError`` if malformed)."""
        return self.decode_clock(self.value)


CausalityToken.EMPTY = CausalityToken("AAAAAAAAAAA")


def b64encode(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def b64decode(value: str) -> bytes:
    return base64.b64decode(value.encode("ascii"), validate=True)


def decode_values(raw: Any) -> list[Value]:
    if not isinstance(raw, list):
        raise ValueError("expected a list of values")
    return [None if v is None else b64decode(v) for v in raw]


@dataclass(frozen=True, slots=True)
class Item:
    """An item: its concurrent ``values`` (``None`` = tombstone) and its causality ``token``.

    One value is the normal case; several mean concurrent writes (a conflict the application
    resolves by writing back with ``token``). A deleted item reads as ``[None]``.
    """

    partition_key: str
    sort_key: str
    values: list[Value]
    token: CausalityToken
    expires: int | None = None
    """When the earliest-expiring live value expires (unix ms; values written with a TTL), or None."""

    @property
    def is_conflict(self) -> bool:
        return len(self.values) > 1

    @property
    def is_deleted(self) -> bool:
        """True when every value is a tombstone."""
        return all(v is None for v in self.values)

    @property
    def live_values(self) -> list[bytes]:
        """The values that are not tombstones."""
        return [v for v in self.values if v is not None]

    @property
    def value(self) -> Value:
        """The single value (``None`` if deleted); ``ValueError`` when there are concurrent values."""
        if len(self.values) != 1:
            raise ValueError(f"{len(self.values)} concurrent values for {self.partition_key!r}/{self.sort_key!r}")
        return self.values[0]

    def to_json(self) -> dict[str, Any]:
        """The K2V item format ``{"pk", "sk", "ct", "v": [base64 | null]}`` (and ``"exp"`` if set)."""
        out: dict[str, Any] = {
            "pk": self.partition_key,
            "sk": self.sort_key,
            "ct": self.token.value,
            "v": [None if v is None else b64encode(v) for v in self.values],
        }
        if self.expires is not None:
            out["exp"] = self.expires
        return out

    @classmethod
    def from_json(cls, pk: str, obj: dict[str, Any]) -> Item:
        exp = obj.get("exp")
        return cls(pk, obj["sk"], decode_values(obj["v"]), CausalityToken(obj["ct"]), None if exp is None else int(exp))


@dataclass(frozen=True, slots=True)
class InsertOp:
    """One write of an InsertBatch; ``value=None`` writes a tombstone (a delete). ``ttl``: the
    value expires that many seconds after it is written (1 to 31,536,000; not on a delete)."""

    partition_key: str
    sort_key: str
    value: bytes | None
    token: CausalityToken | None = None
    ttl: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pk": self.partition_key,
            "sk": self.sort_key,
            "ct": None if self.token is None else str(self.token),
            "v": None if self.value is None else b64encode(self.value),
        }
        if self.ttl is not None:
            out["ttl"] = self.ttl
        return out


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One partition of ReadIndex, with the server's (eventually consistent) counters."""

    partition_key: str
    entries: int
    conflicts: int
    values: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "pk": self.partition_key,
            "entries": self.entries,
            "conflicts": self.conflicts,
            "values": self.values,
            "bytes": self.bytes,
        }


@dataclass(frozen=True, slots=True)
class IndexPage:
    """One ReadIndex answer. ``next_start`` is the ``start`` of the next page when ``more``."""

    partition_keys: list[IndexEntry]
    more: bool
    next_start: str | None
    prefix: str | None = None
    start: str | None = None
    end: str | None = None
    limit: int | None = None
    reverse: bool = False

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IndexPage:
        return cls(
            [IndexEntry(e["pk"], e["entries"], e["conflicts"], e["values"], e["bytes"]) for e in obj["partitionKeys"]],
            bool(obj["more"]),
            obj.get("nextStart"),
            obj.get("prefix"),
            obj.get("start"),
            obj.get("end"),
            obj.get("limit"),
            bool(obj.get("reverse", False)),
        )


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """One query of a ReadBatch: a range of sort keys in one partition (or one item)."""

    partition_key: str
    prefix: str | None = None
    start: str | None = None
    end: str | None = None
    limit: int | None = None
    reverse: bool = False
    single_item: bool = False
    conflicts_only: bool = False
    tombstones: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"partitionKey": self.partition_key}
        for name, key in (("prefix", "prefix"), ("start", "start"), ("end", "end"), ("limit", "limit")):
            v = getattr(self, name)
            if v is not None:
                out[key] = v
        for name, key in (
            ("reverse", "reverse"),
            ("single_item", "singleItem"),
            ("conflicts_only", "conflictsOnly"),
            ("tombstones", "tombstones"),
        ):
            if getattr(self, name):
                out[key] = True
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ReadQuery:
        return cls(
            obj["partitionKey"],
            obj.get("prefix"),
            obj.get("start"),
            obj.get("end"),
            obj.get("limit"),
            bool(obj.get("reverse") or False),
            bool(obj.get("singleItem") or False),
            bool(obj.get("conflictsOnly") or False),
            bool(obj.get("tombstones") or False),
        )


@dataclass(frozen=True, slots=True)
class ItemPage:
    """The answer to one :class:`ReadQuery`: ``items`` and, when ``more``, the ``next_start``."""

    query: ReadQuery
    items: list[Item]
    more: bool
    next_start: str | None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ItemPage:
        q = ReadQuery.from_json(obj)
        return cls(
            q, [Item.from_json(q.partition_key, it) for it in obj["items"]], bool(obj["more"]), obj.get("nextStart")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **self.query.to_json(),
            "items": [i.to_json() for i in self.items],
            "more": self.more,
            "nextStart": self.next_start,
        }


@dataclass(frozen=True, slots=True)
class DeleteQuery:
    """One query of a DeleteBatch: every live item of a range (or one item) gets a tombstone."""

    partition_key: str
    prefix: str | None = None
    start: str | None = None
    end: str | None = None
    single_item: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"partitionKey": self.partition_key}
        for name in ("prefix", "start", "end"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        if self.single_item:
            out["singleItem"] = True
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DeleteQuery:
        return cls(
            obj["partitionKey"],
            obj.get("prefix"),
            obj.get("start"),
            obj.get("end"),
            bool(obj.get("singleItem") or False),
        )


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """The answer to one :class:`DeleteQuery`: how many live items were deleted."""

    query: DeleteQuery
    deleted_items: int

    def to_json(self) -> dict[str, Any]:
        return {**self.query.to_json(), "deletedItems": self.deleted_items}


@dataclass(frozen=True, slots=True)
class PollRangeResult:
    """Items new or changed since the marker given (all of them on a first call), and the new marker.

    Pass ``seen_marker`` to the next :meth:`~garagekv.client.K2VClient.poll_range` of the same range
    (or a sub-range); it is opaque and may be stored to resume a watch later.
    """

    items: list[Item]
    seen_marker: str
    partition_key: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"items": [i.to_json() for i in self.items], "seenMarker": self.seen_marker}


# --- PollRanges (several ranges in one long poll) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One range of a :meth:`~garagekv.client.K2VClient.poll_ranges` call, with its seen marker.

    ``seen_marker=None`` asks for the range's current content at once (its initial scan); with a
    marker, the range has news once one of its items changed or appeared since that marker.
    """

    partition_key: str
    prefix: str | None = None
    start: str | None = None
    end: str | None = None
    seen_marker: str | None = None

    @classmethod
    def coerce(cls, spec: RangeSpec | str) -> RangeSpec:
        """A spec, or a whole partition given by its key."""
        if isinstance(spec, RangeSpec):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        raise TypeError(f"a range is a RangeSpec or a partition key, not {type(spec).__name__}")

    def with_marker(self, seen_marker: str | None) -> RangeSpec:
        """The same range, resuming from ``seen_marker``."""
        return RangeSpec(self.partition_key, self.prefix, self.start, self.end, seen_marker)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"partitionKey": self.partition_key}
        for name, key in (("prefix", "prefix"), ("start", "start"), ("end", "end"), ("seen_marker", "seenMarker")):
            v = getattr(self, name)
            if v is not None:
                out[key] = v
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RangeSpec:
        return cls(obj["partitionKey"], obj.get("prefix"), obj.get("start"), obj.get("end"), obj.get("seenMarker"))


@dataclass(frozen=True, slots=True)
class RangeChanges:
    """What one range of a PollRanges answer reports.

    ``range`` is the range as it was sent (old marker included) and ``index`` its position in the
    request. ``items`` are new or changed since that marker (the whole range after an initial
    scan); ``seen_marker`` is the marker to send next time. An unchanged range has no items and
    a marker that means the same as the one sent. ``seen_marker`` is ``None`` only for a range
    sent without a marker whose initial scan is not in this answer (it is scanned next time).
    """

    range: RangeSpec
    items: list[Item]
    seen_marker: str | None
    index: int = 0

    @property
    def partition_key(self) -> str:
        return self.range.partition_key

    @property
    def changed(self) -> bool:
        """True when this answer carries news for the range (items, or its first marker)."""
        return bool(self.items) or (self.range.seen_marker is None and self.seen_marker is not None)

    @property
    def next_range(self) -> RangeSpec:
        """The range with the marker to send next."""
        return self.range.with_marker(self.seen_marker)

    def to_json(self) -> dict[str, Any]:
        """The answer's range object, plus the range's filters (so it can be sent back as is)."""
        return {
            **self.next_range.to_json(),
            "seenMarker": self.seen_marker,
            "items": [i.to_json() for i in self.items],
        }


@dataclass(frozen=True, slots=True)
class PollRangesResult:
    """A PollRanges answer: one :class:`RangeChanges` per range of the request, in its order."""

    ranges: list[RangeChanges]

    @property
    def changed(self) -> list[RangeChanges]:
        """Only the ranges with news."""
        return [r for r in self.ranges if r.changed]

    def next_ranges(self) -> list[RangeSpec]:
        """Every range of the request with its latest marker: what the next call sends."""
        return [r.next_range for r in self.ranges]

    def to_json(self) -> dict[str, Any]:
        return {"ranges": [r.to_json() for r in self.ranges]}

    @classmethod
    def from_json(cls, sent: list[RangeSpec], obj: dict[str, Any]) -> PollRangesResult:
        """Decode an answer to the request ``sent`` (raises ``ValueError`` when they do not match)."""
        raw = obj["ranges"]
        if not isinstance(raw, list) or len(raw) != len(sent):
            raise ValueError(f"expected {len(sent)} ranges in the answer")
        out = []
        for i, (spec, r) in enumerate(zip(sent, raw, strict=True)):
            if r["partitionKey"] != spec.partition_key:
                raise ValueError(f"ranges[{i}] is {r['partitionKey']!r}, {spec.partition_key!r} was sent")
            marker = r.get("seenMarker")
            if marker is not None and not isinstance(marker, str):
                raise ValueError(f"ranges[{i}].seenMarker is not a string")
            items = [Item.from_json(spec.partition_key, it) for it in r["items"]]
            out.append(RangeChanges(spec, items, marker, i))
        return cls(out)


# --- partition transactions --------------------------------------------------------------------

MAX_TXN_COMPARES = 64
MAX_TXN_OPS = 128
MAX_TTL = 31_536_000
COMPARE_TARGETS = ("token", "exists", "value", "md5")
_HEX = frozenset("0123456789abcdefABCDEF")


def _as_bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a K2V value must be bytes or str, not {type(value).__name__}")


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where}: missing `{key}`")
    v = obj[key]
    if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
        raise ValueError(f"{where}: `{key}` has the wrong type")
    return v


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction, on one sort key of its partition.

    Build them with :meth:`token`, :meth:`exists`, :meth:`value` or :meth:`md5`.
    """

    sort_key: str
    target: str
    expected: CausalityToken | bool | bytes | str

    @classmethod
    def token(cls, sort_key: str, token: CausalityToken | str) -> Compare:
        """The item's causal context is exactly ``token`` (nothing written since the read that gave it)."""
        return cls(sort_key, "token", CausalityToken.coerce(token))

    @classmethod
    def exists(cls, sort_key: str, exists: bool = True) -> Compare:
        """The item has a live (non-tombstone) value, or (``exists=False``) has none."""
        return cls(sort_key, "exists", bool(exists))

    @classmethod
    def value(cls, sort_key: str, value: bytes | str) -> Compare:
        """The item has exactly one live value, equal to ``value`` (``str`` is UTF-8 encoded)."""
        return cls(sort_key, "value", _as_bytes(value))

    @classmethod
    def md5(cls, sort_key: str, digest: str) -> Compare:
        """The item has exactly one live value, whose MD5 is ``digest`` (32 hex digits, any case)."""
        if not isinstance(digest, str) or len(digest) != 32 or not set(digest) <= _HEX:
            raise ValueError(f"an MD5 digest is 32 hex digits, not {digest!r}")
        return cls(sort_key, "md5", digest)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sk": self.sort_key, "target": self.target}
        e = self.expected
        if self.target == "token":
            out["token"] = str(e)
        elif self.target == "exists":
            out["exists"] = e
        elif self.target == "value" and isinstance(e, bytes):
            out["value"] = b64encode(e)
        elif self.target == "md5":
            out["md5"] = e
        else:
            raise ValueError(f"unknown compare target {self.target!r}")
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "compare") -> Compare:
        sk = _need(obj, "sk", str, where)
        target = _need(obj, "target", str, where)
        if target == "token":
            return cls.token(sk, _need(obj, "token", str, where))
        if target == "exists":
            return cls.exists(sk, _need(obj, "exists", bool, where))
        if target == "value":
            raw = _need(obj, "value", str, where)
            try:
                return cls(sk, "value", b64decode(raw))
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}: `value` is not base64") from None
        if target == "md5":
            try:
                return cls.md5(sk, _need(obj, "md5", str, where))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        raise ValueError(f"{where}: unknown target {target!r} (token, exists, value or md5)")


@dataclass(frozen=True, slots=True, init=False)
class Put:
    """Write ``value`` (``str`` is UTF-8 encoded) over whatever the item holds.

    ``ttl`` (seconds, 1 to 31,536,000) makes the value expire; without it the value does not.
    """

    sort_key: str
    value: bytes
    ttl: int | None

    def __init__(self, sort_key: str, value: bytes | str, ttl: int | None = None) -> None:
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL):
            raise ValueError(f"ttl is a number of seconds from 1 to {MAX_TTL}, not {ttl!r}")
        object.__setattr__(self, "sort_key", sort_key)
        object.__setattr__(self, "value", _as_bytes(value))
        object.__setattr__(self, "ttl", ttl)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "put", "sk": self.sort_key, "v": b64encode(self.value)}
        if self.ttl is not None:
            out["ttl"] = self.ttl
        return out


@dataclass(frozen=True, slots=True)
class Delete:
    """Write a tombstone over whatever the item holds."""

    sort_key: str

    def to_json(self) -> dict[str, Any]:
        return {"op": "delete", "sk": self.sort_key}


@dataclass(frozen=True, slots=True)
class Read:
    """Read the item as of the transaction (after the branch's earlier writes)."""

    sort_key: str

    def to_json(self) -> dict[str, Any]:
        return {"op": "read", "sk": self.sort_key}


TxnOp = Put | Delete | Read


def txn_op_from_json(obj: Any, where: str = "op") -> TxnOp:
    sk = _need(obj, "sk", str, where)
    op = _need(obj, "op", str, where)
    if op == "put":
        raw = _need(obj, "v", str, where)
        try:
            value = b64decode(raw)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: `v` is not base64") from None
        ttl = obj.get("ttl")
        try:
            return Put(sk, value, ttl)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if op == "delete":
        return Delete(sk)
    if op == "read":
        return Read(sk)
    raise ValueError(f"{where}: unknown op {op!r} (put, delete or read)")


def check_txn(compare: list[Compare], success: list[TxnOp], failure: list[TxnOp]) -> None:
    """The limits of a transaction that can be checked without the server (``ValueError``)."""
    if len(compare) > MAX_TXN_COMPARES:
        raise ValueError(f"at most {MAX_TXN_COMPARES} compares, got {len(compare)}")
    for c in compare:
        if not isinstance(c, Compare):
            raise TypeError(f"a compare is a Compare, not {type(c).__name__}")
    for name, ops in (("success", success), ("failure", failure)):
        if len(ops) > MAX_TXN_OPS:
            raise ValueError(f"at most {MAX_TXN_OPS} {name} ops, got {len(ops)}")
        written: set[str] = set()
        for op in ops:
            if not isinstance(op, Put | Delete | Read):
                raise TypeError(f"a transaction op is a Put, Delete or Read, not {type(op).__name__}")
            if isinstance(op, Put | Delete):
                if op.sort_key in written:
                    raise ValueError(f"{name}: sort key {op.sort_key!r} is written twice")
                written.add(op.sort_key)


def txn_body(compare: list[Compare], success: list[TxnOp], failure: list[TxnOp]) -> dict[str, Any]:
    """The JSON body of ``POST /<bucket>/<pk>?txn``."""
    check_txn(compare, success, failure)
    return {
        "compare": [c.to_json() for c in compare],
        "success": [op.to_json() for op in success],
        "failure": [op.to_json() for op in failure],
    }


@dataclass(frozen=True, slots=True)
class OpResult:
    """The result of one op of the branch that ran.

    ``token`` is the item's token after the op (``None`` for a never-written item). ``values``
    is set for a ``read`` only: the concurrent values (``None`` = tombstone), ``[]`` for an item
    never written; ``expires`` (unix ms) too when a live value of it expires.
    """

    sort_key: str
    token: CausalityToken | None
    values: list[Value] | None = None
    expires: int | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> OpResult:
        ct = obj.get("ct")
        if ct is not None and not isinstance(ct, str):
            raise ValueError("`ct` is not a string")
        sk = obj["sk"]
        if not isinstance(sk, str):
            raise ValueError("`sk` is not a string")
        values = decode_values(obj["v"]) if obj.get("v") is not None else None
        exp = obj.get("exp")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int)):
            raise ValueError("`exp` is not an integer")
        return cls(sk, None if ct is None else CausalityToken(ct), values, exp)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sk": self.sort_key, "ct": None if self.token is None else self.token.value}
        if self.values is not None:
            out["v"] = [None if v is None else b64encode(v) for v in self.values]
        if self.expires is not None:
            out["exp"] = self.expires
        return out

    def item(self, partition_key: str) -> Item | None:
        """A read's result as an :class:`Item` (``None`` if the item was never written)."""
        if self.token is None or self.values is None:
            return None
        return Item(partition_key, self.sort_key, self.values, self.token, self.expires)


@dataclass(frozen=True, slots=True)
class TxnResult:
    """The answer of a transaction: whether the compares held, and one result per op that ran."""

    succeeded: bool
    results: list[OpResult]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TxnResult:
        ok = obj["succeeded"]
        if not isinstance(ok, bool) or not isinstance(obj["results"], list):
            raise ValueError("`succeeded` must be a boolean and `results` a list")
        return cls(ok, [OpResult.from_json(r) for r in obj["results"]])

    def to_json(self) -> dict[str, Any]:
        return {"succeeded": self.succeeded, "results": [r.to_json() for r in self.results]}
