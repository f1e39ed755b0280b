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
