"""Index counters: per (bucket, partition key) totals of entries, conflicts, values and bytes.

Every storage node counts the items *it* holds for a partition and publishes its running totals
as one LWW register per counter name, keyed by node. The replicated :class:`CounterEntry` holds
all nodes' registers; readers take the max over the storage nodes of every live layout version
(each replica counts the whole partition, so the largest is the best estimate; during a layout
change the old version's nodes still have full counts while the new ones sync; nodes of retired
versions are ignored). :class:`LocalCounter` is a node's own, non-replicated running total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from garagekv.model.k2v.causality import is_u64
from garagekv.util import codec

COUNTER_NAMES = ("entries", "conflicts", "values", "bytes")
_NAME_SET = frozenset(COUNTER_NAMES)
COUNTER_FORMAT_VERSION = 1

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _is_i64(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and _I64_MIN <= x <= _I64_MAX


def counts_diff(old: Mapping[str, int] | None, new: Mapping[str, int] | None) -> dict[str, int]:
    """``new - old`` per counter name (missing = 0), keeping only the names that changed."""
    old = old or {}
    new = new or {}
    names: Iterable[str] = COUNTER_NAMES
    if not (_NAME_SET.issuperset(old) and _NAME_SET.issuperset(new)):
        names = list(COUNTER_NAMES) + sorted((set(old) | set(new)) - _NAME_SET)
    diff = {n: new.get(n, 0) - old.get(n, 0) for n in names}
    return {n: d for n, d in diff.items() if d != 0}


class _Corrupt(ValueError):
    def __init__(self) -> None:
        super().__init__("corrupt counter encoding")


def _decode_body(data: bytes) -> Any:
    if not data or data[0] != COUNTER_FORMAT_VERSION:
        raise ValueError("unknown counter format")
    try:
        return codec.decode(bytes(data[1:]))
    except Exception:
        raise _Corrupt() from None


def _check_key(bucket_id: Any, pk: Any) -> None:
    if not (isinstance(bucket_id, bytes) and len(bucket_id) == 32 and isinstance(pk, str)):
        raise _Corrupt()


@dataclass
class CounterEntry:
    """Replicated counters of one partition: ``values[name][node] = (ts, value)``.

    Merge is per (name, node) last-writer-wins on ``ts``, ties broken by the larger value, so it
    is commutative, associative and idempotent.
    """

    bucket_id: bytes
    partition_key: str
    values: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)

    def partition_hash(self) -> bytes:
        """Counters are partitioned by bucket (ReadIndex lists one bucket's partition keys)."""
        return self.bucket_id

    def tree_key(self) -> bytes:
        return self.bucket_id + self.partition_key.encode("utf-8")

    def copy(self) -> CounterEntry:
        return CounterEntry(self.bucket_id, self.partition_key, {k: dict(v) for k, v in self.values.items()})

    def merge(self, other: CounterEntry) -> None:
        if (other.bucket_id, other.partition_key) != (self.bucket_id, self.partition_key):
            raise ValueError("merging counters of different partitions")
        for name, nodes in other.values.items():
            mine = self.values.setdefault(name, {})
            for node, tv in nodes.items():
                cur = mine.get(node)
                if cur is None or tv > cur:
                    mine[node] = tv

    def filtered_values(self, nodes: Iterable[int] | None = None) -> dict[str, int]:
        """Per name, the max value over ``nodes`` (all nodes if None); 0 if none of them counted."""
        allowed = None if nodes is None else set(nodes)
        out: dict[str, int] = {}
        for name, per_node in self.values.items():
            vals = [v for n, (_, v) in per_node.items() if allowed is None or n in allowed]
            out[name] = max(vals, default=0)
        return out

    def is_tombstone(self, nodes: Iterable[int] | None = None) -> bool:
        """All counters zero over ``nodes``: the partition is empty (omitted, GC-able)."""
        return all(v == 0 for v in self.filtered_values(nodes).values())

    def encode(self) -> bytes:
        names = [
            [name, [[n, ts, v] for n, (ts, v) in sorted(per_node.items())]]
            for name, per_node in sorted(self.values.items())
        ]
        return bytes([COUNTER_FORMAT_VERSION]) + codec.encode_lists([self.bucket_id, self.partition_key, names])

    @classmethod
    def decode(cls, data: bytes) -> CounterEntry:
        """Inverse of :meth:`encode`; raises ValueError on anything malformed."""
        body = _decode_body(data)
        if not (isinstance(body, list) and len(body) == 3 and isinstance(body[2], list)):
            raise _Corrupt()
        _check_key(body[0], body[1])
        values: dict[str, dict[int, tuple[int, int]]] = {}
        for ent in body[2]:
            if not (isinstance(ent, list) and len(ent) == 2 and isinstance(ent[0], str)):
                raise _Corrupt()
            if ent[0] in values or not isinstance(ent[1], list):
                raise _Corrupt()
            per_node: dict[int, tuple[int, int]] = {}
            for r in ent[1]:
                if not (isinstance(r, list) and len(r) == 3 and is_u64(r[0]) and is_u64(r[1])):
                    raise _Corrupt()
                if not _is_i64(r[2]) or r[0] in per_node:
                    raise _Corrupt()
                per_node[r[0]] = (r[1], r[2])
            values[ent[0]] = per_node
        return cls(body[0], body[1], values)


@dataclass
class LocalCounter:
    """This node's running totals for one partition: ``values[name] = (ts, value)``.

    Updated in the same transaction as the items it counts, then published as this node's
    registers in a :class:`CounterEntry`.
    """

    bucket_id: bytes
    partition_key: str
    values: dict[str, tuple[int, int]] = field(default_factory=dict)

    def tree_key(self) -> bytes:
        return self.bucket_id + self.partition_key.encode("utf-8")

    def apply_diff(self, diff: Mapping[str, int], now_ms: int) -> None:
        """Add ``diff``; each touched name's ts moves to ``max(ts + 1, now_ms)``.

        The ts must strictly increase so the published register beats the previous one on every
        replica, even if the wall clock went backwards.
        """
        for name, d in diff.items():
            ts, v = self.values.get(name, (0, 0))
            self.values[name] = (max(ts + 1, now_ms), v + d)

    def to_entry(self, node: int) -> CounterEntry:
        """The replicated form: one register per name, for ``node``."""
        return CounterEntry(
            self.bucket_id,
            self.partition_key,
            {name: {node: tv} for name, tv in self.values.items()},
        )

    def encode(self) -> bytes:
        names = [[name, ts, v] for name, (ts, v) in sorted(self.values.items())]
        return bytes([COUNTER_FORMAT_VERSION]) + codec.encode_lists([self.bucket_id, self.partition_key, names])

    @classmethod
    def decode(cls, data: bytes) -> LocalCounter:
        body = _decode_body(data)
        if not (isinstance(body, list) and len(body) == 3 and isinstance(body[2], list)):
            raise _Corrupt()
        _check_key(body[0], body[1])
        values: dict[str, tuple[int, int]] = {}
        for r in body[2]:
            if not (isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)):
                raise _Corrupt()
            if not (is_u64(r[1]) and _is_i64(r[2])) or r[0] in values:
                raise _Corrupt()
            values[r[0]] = (r[1], r[2])
        return cls(body[0], body[1], values)
