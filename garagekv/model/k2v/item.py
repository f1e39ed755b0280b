"""The K2V item: one (bucket, partition key, sort key) holding concurrent values as a DVVS.

Each storage node that coordinated a write owns one :class:`DvvsEntry` ("dotted version vector
set"): the dots ``(node, ts)`` it created and that nobody has superseded yet, plus ``t_discard``,
the time up to which a client has declared that node's values seen and replaced. Only node ``n``
ever creates dots in entry ``n``, with strictly increasing timestamps, so a dot names a value
uniquely and replicas can merge without coordination.

A dot may carry an expiry (unix ms, docs/k2v-api.md "Expiring values"): it is part of the dot,
set once when the dot is created, so it travels with the value through replication, read repair
and anti-entropy. Reads treat a value past its expiry as a tombstone (:meth:`K2VItem.at`); the
expiry worker makes that permanent with :meth:`K2VItem.expire`, which turns the dot into a
tombstone in place (the dot, not the values around it: concurrent values of the same node are
untouched). Under one dot, the expired tombstone wins the merge against the live value, so no
replica can bring the value back.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from garagekv.model.k2v.causality import ITEM_CLOCK_SOFT_CAP, U64_MAX, CausalContext, is_u64
from garagekv.util import codec

# Bumped whenever the encoded layout changes; decode refuses anything else. Format 1 (dots
# ``[ts, value]``) is still what an item without expiring dots encodes to, so existing items
# keep their bytes (and Merkle hashes); format 2 (dots ``[ts, value, expiry or nil]``) is used
# as soon as one dot carries an expiry.
ITEM_FORMAT_VERSION = 1
ITEM_FORMAT_EXPIRY = 2
_NO_EXPIRY = 1 << 64  # ranks a dot without expiry above every expiry (see _dot_rank)
#: The longest TTL a write may ask for (one year), in seconds.
MAX_TTL_SEC = 31_536_000

Value = bytes | None  # None is a tombstone (DeleteItem / DeleteBatch)


class ClockExhausted(ValueError):
    """This node cannot add a dot to this item without passing the u64 limit (or the clock bound).

    Only data stored before clocks were bounded can get there; the write is refused (and tried
    on another storage node) instead of overflowing while encoding or poisoning the node's clock.
    """


@functools.lru_cache(maxsize=1 << 16)
def partition_hash(bucket_id: bytes, partition_key: str) -> bytes:
    """Where a K2V partition lives on the ring: blake2(bucket_id ‖ partition key), 32 bytes.

    Memoised: every request and every replica merge of an item needs it, often several times.
    """
    return codec.blake2sum(bucket_id + partition_key.encode("utf-8"))


@dataclass
class DvvsEntry:
    """One node's dots. ``values`` is sorted by ts and every ts is above ``t_discard``.

    ``expiry`` maps the ts of each dot that expires to its expiry (unix ms); a dot whose value
    is None and that has an expiry is an expired value, made a tombstone by ``K2VItem.expire``.
    """

    t_discard: int = 0
    values: list[tuple[int, Value]] = field(default_factory=list)
    expiry: dict[int, int] = field(default_factory=dict)

    def max_time(self) -> int:
        """Latest time this entry has seen, discarded or not (its part of the causal context)."""
        return max(self.t_discard, self.values[-1][0]) if self.values else self.t_discard

    def discard(self) -> None:
        """Drop the values a client has superseded (ts at or below ``t_discard``)."""
        self.values = [(ts, v) for ts, v in self.values if ts > self.t_discard]
        if self.expiry:
            self.expiry = {ts: e for ts, e in self.expiry.items() if ts > self.t_discard}

    def copy(self) -> DvvsEntry:
        return DvvsEntry(self.t_discard, list(self.values), dict(self.expiry))


Dot = tuple[Value, int | None]  # a dot's value and expiry


def _dot_rank(d: Dot) -> tuple[int, bool, bytes]:
    """A total order on a dot's possible states; the merge keeps the greater one.

    Under one expiry, the expired tombstone beats the live value (expiry is permanent). Without
    expiry a value beats a tombstone and the larger bytes win: two states under one dot only
    otherwise happen if a node reissued a timestamp (lost its state), and this picks
    deterministically so replicas still converge. A dot without expiry ranks above any expiry,
    a later expiry above an earlier one. The rank is injective, so taking the max is a
    semilattice join (commutative, associative, idempotent).
    """
    v, exp = d
    if exp is None:
        return (_NO_EXPIRY, v is not None, v or b"")
    return (exp, v is None, v or b"")


def _join_dot(a: Dot, b: Dot) -> Dot:
    return a if _dot_rank(a) >= _dot_rank(b) else b


@dataclass
class K2VItem:
    """A K2V item; equality is by state (two replicas are equal iff they encode the same)."""

    bucket_id: bytes
    partition_key: str
    sort_key: str
    items: dict[int, DvvsEntry] = field(default_factory=dict)

    @classmethod
    def new(cls, bucket_id: bytes, partition_key: str, sort_key: str) -> K2VItem:
        """An item with no values yet (what a read of a never-written key starts from)."""
        if not isinstance(bucket_id, bytes) or len(bucket_id) != 32:
            raise ValueError("bucket_id must be 32 bytes")
        return cls(bucket_id, partition_key, sort_key, {})

    def copy(self) -> K2VItem:
        return K2VItem(
            self.bucket_id,
            self.partition_key,
            self.sort_key,
            {n: e.copy() for n, e in self.items.items()},
        )

    # --- keys -------------------------------------------------------------------------------

    def partition_hash(self) -> bytes:
        return partition_hash(self.bucket_id, self.partition_key)

    def tree_key(self) -> bytes:
        """Local storage key: items of one partition are contiguous and ordered by sort key."""
        return self.partition_hash() + self.sort_key.encode("utf-8")

    # --- writes -----------------------------------------------------------------------------

    def update(
        self,
        node: int,
        ctx: CausalContext | None,
        value: Value,
        node_ts: int,
        others_limit: int | None = None,
        expires: int | None = None,
    ) -> int:
        """Apply a client write coordinated by ``node``; returns the new dot's timestamp.

        ``expires``: the new value's expiry (unix ms; a TTL write). Only a value can expire, a
        tombstone cannot (a tombstone with an expiry is what an expired value becomes).

        Everything ``ctx`` covers is discarded, then the value is appended to ``node``'s entry at
        ``max(entry's max time, node_ts) + 1``. The caller passes its last issued timestamp
        (or the wall clock, whichever is larger) as ``node_ts`` and persists the result, which is
        what keeps dots unique per node. Without ``ctx`` nothing is discarded: the new value is
        concurrent with the existing ones.

        ``ctx`` comes from a client, so it may claim times no node issued. ``node``'s own time
        in it is cut to what ``node`` has issued or recorded (``node_ts``, its entry's max
        time), other nodes' times to ``others_limit``, and nodes the item does not know are not
        added once it holds ``ITEM_CLOCK_SOFT_CAP`` entries: a forged token can neither push
        this node's clock nor grow the item's token without bound.
        """
        if not is_u64(node) or not is_u64(node_ts):
            raise ValueError("node id and node_ts must be u64")
        if expires is not None and (value is None or not is_u64(expires)):
            raise ValueError("only a value can expire, at a u64 time")
        if value is not None:
            value = bytes(value)
        if ctx is not None:
            own = self.items.get(node)
            own_limit = max(node_ts, own.max_time() if own is not None else 0)
            for n, t in ctx.items():
                if n == node:
                    t = min(t, own_limit)
                elif others_limit is not None:
                    t = min(t, others_limit)
                if t == 0:
                    continue  # discards nothing; don't create a noise entry
                entry = self.items.get(n)
                if entry is None:
                    if n != node and len(self.items) >= ITEM_CLOCK_SOFT_CAP:
                        continue
                    entry = self.items[n] = DvvsEntry()
                entry.t_discard = max(entry.t_discard, t)
        for entry in self.items.values():
            entry.discard()
        entry = self.items.setdefault(node, DvvsEntry())
        t_new = max(entry.max_time(), node_ts) + 1
        if t_new > U64_MAX:
            raise ClockExhausted(f"node {node:016x} has no timestamp left for this item")
        entry.values.append((t_new, value))
        if expires is not None:
            entry.expiry[t_new] = expires
        return t_new

    def merge(self, other: K2VItem) -> None:
        """Merge another replica of the same item into this one, in place.

        Per node: ``t_discard`` is the max of both sides, and the values are the union of both
        sides' dots above it. Given the per-node dot invariant this is exactly Garage's rule
        ("append the other side's values newer than my max time"), since a replica that has seen
        time t of entry n holds every older dot of n that was not discarded. Taking the union
        makes merge commutative, associative and idempotent even when that invariant is broken
        (a node that lost its data and rejoined), instead of depending on merge order.
        """
        if (other.bucket_id, other.partition_key, other.sort_key) != (
            self.bucket_id,
            self.partition_key,
            self.sort_key,
        ):
            raise ValueError("merging replicas of different K2V items")
        for node, theirs in other.items.items():
            mine = self.items.get(node)
            if mine is None:
                self.items[node] = theirs.copy()
                continue
            t_discard = max(mine.t_discard, theirs.t_discard)
            mine_exp, their_exp = mine.expiry, theirs.expiry
            if not mine_exp and not their_exp:  # the usual case, without the expiry bookkeeping
                values: dict[int, Value] = {ts: v for ts, v in mine.values if ts > t_discard}
                for ts, v in theirs.values:
                    if ts > t_discard:
                        values[ts] = _join_dot((values[ts], None), (v, None))[0] if ts in values else v
                mine.t_discard = t_discard
                mine.values = sorted(values.items(), key=lambda d: d[0])
                continue
            dots: dict[int, Dot] = {ts: (v, mine_exp.get(ts)) for ts, v in mine.values if ts > t_discard}
            for ts, v in theirs.values:
                if ts > t_discard:
                    d = (v, their_exp.get(ts))
                    dots[ts] = _join_dot(dots[ts], d) if ts in dots else d
            mine.t_discard = t_discard
            ordered = sorted(dots.items(), key=lambda d: d[0])
            mine.values = [(ts, d[0]) for ts, d in ordered]
            mine.expiry = {ts: d[1] for ts, d in ordered if d[1] is not None}

    # --- expiry -----------------------------------------------------------------------------

    def pending_expiries(self) -> set[int]:
        """Expiry times of the live values that expire (what the expiry index holds for this item)."""
        out: set[int] = set()
        for e in self.items.values():
            if e.expiry:
                out.update(exp for ts, v in e.values if v is not None and (exp := e.expiry.get(ts)) is not None)
        return out

    def expires(self) -> int | None:
        """The earliest expiry among the live values (None: no live value expires)."""
        pending = self.pending_expiries()
        return min(pending) if pending else None

    def expire(self, now: int) -> int:
        """Turn every live value whose expiry is at or before ``now`` into a tombstone, in place
        (the dot and its expiry stay, so the merge keeps it deleted); returns how many.

        Exactly those dots change: values written earlier, later or concurrently, by any node,
        are untouched (a DVVS discard could not do that: it drops every older dot of a node).
        """
        n = 0
        for e in self.items.values():
            if not e.expiry:
                continue
            for i, (ts, v) in enumerate(e.values):
                if v is not None and (exp := e.expiry.get(ts)) is not None and exp <= now:
                    e.values[i] = (ts, None)
                    n += 1
        return n

    def at(self, now: int) -> K2VItem:
        """The item as a reader sees it at ``now``: values past their expiry read as tombstones.

        Returns ``self`` when nothing has expired (the common case), otherwise a copy.
        """
        pending = self.pending_expiries()
        if not pending or min(pending) > now:
            return self
        view = self.copy()
        view.expire(now)
        return view

    # --- reads ------------------------------------------------------------------------------

    def causal_context(self) -> CausalContext:
        """The item's token: per node, the latest time seen (discard times included)."""
        return CausalContext(
            {n: max(e.t_discard, e.values[-1][0]) if e.values else e.t_discard for n, e in self.items.items()}
        )

    def values(self) -> list[Value]:
        """Current values in node order then ts order, deduplicated by content.

        Dedup is why a write retried through a second coordinator, or the same value written
        twice, does not show up as a conflict; two tombstones count as one.
        """
        out: list[Value] = []
        seen: set[Value] = set()
        for node in sorted(self.items):
            for _, v in self.items[node].values:
                if v not in seen:
                    seen.add(v)
                    out.append(v)
        return out

    def is_tombstone(self) -> bool:
        """All values are tombstones (vacuously true with none): hidden by ``tombstones=false``."""
        for e in self.items.values():  # a plain loop: this runs for every item a range scan sees
            for _, v in e.values:
                if v is not None:
                    return False
        return True

    def counts(self) -> dict[str, int]:
        """This item's contribution to the partition's index counters (ReadIndex).

        All four counters are computed from the deduplicated :meth:`values`, the same list a
        client reads, so ``conflicts`` agrees with ``conflictsOnly`` and ``values``/``bytes``
        count what ReadItem would return.
        """
        vals = self.values()
        live = [v for v in vals if v is not None]
        return {
            "entries": 0 if self.is_tombstone() else 1,
            "conflicts": 1 if len(vals) >= 2 else 0,
            "values": len(live),
            "bytes": sum(len(v) for v in live),
        }

    # --- encoding ---------------------------------------------------------------------------

    def encode(self) -> bytes:
        """Canonical bytes: equal states always give equal bytes (Merkle hashes compare them)."""
        if any(e.expiry for e in self.items.values()):
            version = ITEM_FORMAT_EXPIRY
            entries = [
                [n, e.t_discard, [[ts, v, e.expiry.get(ts)] for ts, v in e.values]]
                for n, e in sorted(self.items.items())
            ]
        else:
            version = ITEM_FORMAT_VERSION
            entries = [[n, e.t_discard, [[ts, v] for ts, v in e.values]] for n, e in sorted(self.items.items())]
        body = [self.bucket_id, self.partition_key, self.sort_key, entries]
        return bytes([version]) + codec.encode_lists(body)

    @classmethod
    def decode(cls, data: bytes) -> K2VItem:
        """Inverse of :meth:`encode`; raises ValueError on anything it would not have produced."""
        if not data or data[0] not in (ITEM_FORMAT_VERSION, ITEM_FORMAT_EXPIRY):
            raise ValueError("unknown K2V item format")
        try:
            body = codec.decode(bytes(data[1:]))
        except Exception as e:
            raise ValueError(f"corrupt K2V item: {e}") from None
        return cls._from_body(body, data[0] == ITEM_FORMAT_EXPIRY)

    @classmethod
    def _from_body(cls, body: Any, with_expiry: bool) -> K2VItem:
        bad = ValueError("corrupt K2V item")
        if not isinstance(body, list) or len(body) != 4:
            raise bad
        bucket_id, pk, sk, entries = body
        if not (isinstance(bucket_id, bytes) and len(bucket_id) == 32):
            raise bad
        if not (isinstance(pk, str) and isinstance(sk, str) and isinstance(entries, list)):
            raise bad
        items: dict[int, DvvsEntry] = {}
        prev_node = -1
        dot_len = 3 if with_expiry else 2
        for ent in entries:
            if not (isinstance(ent, list) and len(ent) == 3):
                raise bad
            node, t_discard, vals = ent
            if not (is_u64(node) and node > prev_node and is_u64(t_discard) and isinstance(vals, list)):
                raise bad
            prev_node = node
            values: list[tuple[int, Value]] = []
            expiry: dict[int, int] = {}
            prev_ts = t_discard
            for dot in vals:
                if not (isinstance(dot, list) and len(dot) == dot_len):
                    raise bad
                ts, v = dot[0], dot[1]
                if not (is_u64(ts) and ts > prev_ts and (v is None or isinstance(v, bytes))):
                    raise bad
                if with_expiry and dot[2] is not None:
                    if not is_u64(dot[2]):
                        raise bad
                    expiry[ts] = dot[2]
                prev_ts = ts
                values.append((ts, v))
            items[node] = DvvsEntry(t_discard, values, expiry)
        if with_expiry and not any(e.expiry for e in items.values()):
            raise bad  # not canonical: without an expiry the item encodes as format 1
        return cls(bucket_id, pk, sk, items)


def merge_encoded(raws: Iterable[bytes | None]) -> K2VItem | None:
    """The merge of replicas' encoded copies of one item (None: no replica had it)."""
    merged: K2VItem | None = None
    for raw in raws:
        if raw is None:
            continue
        item = K2VItem.decode(raw)
        if merged is None:
            merged = item
        else:
            merged.merge(item)
    return merged
