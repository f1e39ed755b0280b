"""State-based CRDTs shared by the metadata tables and the layout staging area.

Each type merges in place with ``merge(other)``; merge is commutative, associative and
idempotent, so replicas converge whatever order updates arrive in. Values held inside must be
canonical-msgpack-able (``to_wire``/``from_wire``) because replicas compare encoded bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from garagekv.util import codec
from garagekv.util.time import increment_logical_clock

T = TypeVar("T")


def merge_values(a: Any, b: Any) -> Any:
    """Pick one of two plain values deterministically: the larger in ``_order_key``'s order.

    Register values are plain data (names, flags, ids, layout roles and parameters), never
    CRDTs themselves, so a tie between two of them is settled by order alone.
    """
    return max(a, b, key=_order_key)


def _order_key(v: Any) -> tuple[Any, ...]:
    # A total order over the wire forms we store (None < bool/int < str < bytes < containers).
    if v is None:
        return (0,)
    if isinstance(v, bool | int):
        return (1, int(v))
    if isinstance(v, str):
        return (2, v)
    if isinstance(v, bytes):
        return (3, v)
    return (4, repr(v))


@dataclass
class Lww(Generic[T]):
    """Last-writer-wins register; equal timestamps keep the larger value (deterministic)."""

    ts: int
    value: T

    @classmethod
    def new(cls, value: T) -> Lww[T]:
        return cls(increment_logical_clock(0), value)

    def update(self, value: T) -> None:
        self.ts = increment_logical_clock(self.ts)
        self.value = value

    def merge(self, other: Lww[T]) -> None:
        if other.ts > self.ts:
            self.ts, self.value = other.ts, other.value
        elif other.ts == self.ts and self.value != other.value:
            self.value = merge_values(self.value, other.value)

    def to_wire(self, enc: Callable[[T], Any] = lambda v: v) -> list[Any]:
        return [self.ts, enc(self.value)]

    @classmethod
    def from_wire(cls, w: list[Any], dec: Callable[[Any], T] = lambda v: v) -> Lww[T]:
        return cls(int(w[0]), dec(w[1]))


@dataclass
class LwwMap(Generic[T]):
    """Map of independent LWW registers, keyed by str or bytes; deletions are explicit values."""

    entries: dict[Any, Lww[T]] = field(default_factory=dict)

    def get(self, key: Any) -> T | None:
        e = self.entries.get(key)
        return None if e is None else e.value

    def get_ts(self, key: Any) -> int:
        e = self.entries.get(key)
        return 0 if e is None else e.ts

    def put(self, key: Any, value: T, ts: int | None = None) -> None:
        """Set ``key``; the timestamp is above the previous one for that key unless given."""
        if ts is None:
            ts = increment_logical_clock(self.get_ts(key))
        self.entries[key] = Lww(ts, value)

    def items(self) -> Iterator[tuple[Any, T]]:
        for k in sorted(self.entries):
            yield k, self.entries[k].value

    def merge(self, other: LwwMap[T]) -> None:
        for k, e in other.entries.items():
            mine = self.entries.get(k)
            if mine is None:
                self.entries[k] = Lww(e.ts, e.value)
            else:
                mine.merge(e)

    def to_wire(self, enc: Callable[[T], Any] = lambda v: v) -> list[Any]:
        return [[k, e.ts, enc(e.value)] for k, e in sorted(self.entries.items())]

    @classmethod
    def from_wire(cls, w: list[Any], dec: Callable[[Any], T] = lambda v: v) -> LwwMap[T]:
        return cls({k: Lww(int(ts), dec(v)) for k, ts, v in w})


class EntryParams(Protocol):
    """The live part of a :class:`DeletableEntry`: a CRDT with a canonical wire form."""

    def merge(self, other: Any) -> None: ...

    def to_wire(self) -> dict[str, Any]: ...


P = TypeVar("P", bound=EntryParams)


class DeletableEntry(Generic[P]):
    """Base of the table entries that are an id plus params deleted for good (keys, buckets).

    ``params`` None is the tombstone; it wins every merge, so a stale
    replica never brings a deleted entry back. The stored form, compared byte for byte between
    replicas, is ``FORMAT + {"id": id, "p": params wire form or nil}``. Subclasses are
    dataclasses built as ``cls(id, params)``; they name their params class (which has
    ``from_wire``) in ``params_type`` and return their id from ``entry_id``.
    """

    FORMAT: ClassVar[bytes] = b"\x01"
    params_type: ClassVar[Any]
    params: P | None

    def entry_id(self) -> Any:
        raise NotImplementedError

    @property
    def is_deleted(self) -> bool:
        return self.params is None

    def is_tombstone(self) -> bool:
        return self.params is None

    def merge(self, other: DeletableEntry[P]) -> None:
        if self.params is None or other.params is None:
            self.params = None
        else:
            self.params.merge(other.params)

    def encode(self) -> bytes:
        wire = None if self.params is None else self.params.to_wire()
        return self.FORMAT + codec.encode({"id": self.entry_id(), "p": wire})

    @classmethod
    def decode(cls, data: bytes) -> Self:
        w = codec.decode(data[1:])
        p = w["p"]
        return cls(w["id"], None if p is None else cls.params_type.from_wire(p))  # type: ignore[call-arg]
