"""The K2V endpoint's RPC messages, one class each, checked once on receipt.

Requests go from the node that took a client's request to the partition's storage nodes:
``insert``/``check`` (coordinate, or only size-check, a group of inserts), ``poll_item``,
``poll_range`` and ``poll_ranges`` (every range of one PollRanges call that a storage node
holds, in one long poll); ``PollRangeReply`` and ``PollRangesReply`` are the structured
answers. The wire forms are msgpack arrays (docs/protocol.md); a request of the wrong shape is
a ``MalformedMessage`` (400 ``InvalidRequest`` at the sender), never an internal error inside a
handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from garagekv.model.k2v.causality import CausalContext, is_u64
from garagekv.model.k2v.item import MAX_TTL_SEC, Value
from garagekv.model.k2v.range import MAX_KEY_BYTES
from garagekv.rpc.messages import as_bytes, as_int, fields, malformed, tag_of

_WHAT = "K2V request"


def _as_str(field: str, v: Any, what: str = _WHAT) -> str:
    if not isinstance(v, str):
        raise malformed(what, f"{field} must be a string")
    return v


def _as_opt_str(field: str, v: Any) -> str | None:
    return None if v is None else _as_str(field, v)


def _as_timeout(v: Any) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 3600:
        raise malformed(_WHAT, "timeout must be a number of seconds from 0 to 3600")
    return float(v)


def context_to_wire(ctx: CausalContext) -> list[list[int]]:
    return [[n, t] for n, t in ctx.items()]


def context_from_wire(w: Any, what: str = _WHAT) -> CausalContext:
    if not isinstance(w, list | tuple):
        raise malformed(what, "causal context must be an array of [node, time] pairs")
    vclock: dict[int, int] = {}
    for pair in w:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and is_u64(pair[0]) and is_u64(pair[1])):
            raise malformed(what, "causal context must be an array of [node, time] pairs of u64")
        vclock[pair[0]] = pair[1]
    return CausalContext(vclock)


@dataclass
class InsertedItem:
    """One insert to coordinate: ``[pk, sk, context or None, value or None]`` (None: a delete),
    plus ``ttl`` (seconds) as a fifth element for a value that expires.

    The coordinator turns ``ttl`` into the value's expiry from its own clock (write time + ttl).
    """

    partition_key: str
    sort_key: str
    causal_context: CausalContext | None
    value: Value
    ttl: int | None = None

    def to_wire(self) -> list[Any]:
        ct = None if self.causal_context is None else context_to_wire(self.causal_context)
        w = [self.partition_key, self.sort_key, ct, self.value]
        return w if self.ttl is None else [*w, self.ttl]

    @classmethod
    def from_wire(cls, w: Any) -> InsertedItem:
        what = "K2V insert"
        if not isinstance(w, list | tuple) or len(w) not in (4, 5):
            raise malformed(what, "an item must be [partition key, sort key, context, value(, ttl)]")
        pk, sk, ct, value = w[:4]
        ttl = None if len(w) == 4 else as_int(what, "ttl", w[4], 1, MAX_TTL_SEC)
        if ttl is not None and value is None:
            raise malformed(what, "a deletion cannot have a TTL")
        return cls(
            _as_str("partition key", pk, what),
            _as_str("sort key", sk, what),
            None if ct is None else context_from_wire(ct, what),
            None if value is None else as_bytes(what, "value", value),
            ttl,
        )


@dataclass(frozen=True)
class InsertRequest:
    """``[kind, bucket id, [item, ...]]``: coordinate these inserts (``insert``) or only check that
    none would grow its item past the size limits (``check``)."""

    TAGS: ClassVar[tuple[str, str]] = ("insert", "check")
    kind: str
    bucket_id: bytes
    items: tuple[InsertedItem, ...]

    def to_wire(self) -> list[Any]:
        return [self.kind, self.bucket_id, [ins.to_wire() for ins in self.items]]

    @classmethod
    def from_wire(cls, w: Any) -> InsertRequest:
        kind = tag_of(_WHAT, w, cls.TAGS)
        _, bucket_id, items = fields(f"K2V {kind}", w, kind, 3)
        if not isinstance(items, list | tuple):
            raise malformed(f"K2V {kind}", "items must be an array")
        return cls(kind, as_bytes(_WHAT, "bucket id", bucket_id), tuple(InsertedItem.from_wire(i) for i in items))


@dataclass(frozen=True)
class PollItemRequest:
    """``["poll_item", bucket id, pk, sk, context, timeout]``: answer once the item is newer."""

    TAG: ClassVar[str] = "poll_item"
    bucket_id: bytes
    partition_key: str
    sort_key: str
    causal_context: CausalContext
    timeout: float

    def to_wire(self) -> list[Any]:
        ct = context_to_wire(self.causal_context)
        return [self.TAG, self.bucket_id, self.partition_key, self.sort_key, ct, self.timeout]

    @classmethod
    def from_wire(cls, w: Any) -> PollItemRequest:
        _, bucket_id, pk, sk, ct, timeout = fields("K2V poll_item", w, cls.TAG, 6)
        return cls(
            as_bytes(_WHAT, "bucket id", bucket_id),
            _as_str("partition key", pk),
            _as_str("sort key", sk),
            context_from_wire(ct),
            _as_timeout(timeout),
        )


@dataclass(frozen=True)
class PollRangeRequest:
    """``["poll_range", bucket id, pk, prefix, start, end, seen marker or None, timeout]``."""

    TAG: ClassVar[str] = "poll_range"
    bucket_id: bytes
    partition_key: str
    prefix: str | None
    start: str | None
    end: str | None
    seen_marker: str | None
    timeout: float

    def to_wire(self) -> list[Any]:
        return [
            self.TAG,
            self.bucket_id,
            self.partition_key,
            self.prefix,
            self.start,
            self.end,
            self.seen_marker,
            self.timeout,
        ]

    @classmethod
    def from_wire(cls, w: Any) -> PollRangeRequest:
        _, bucket_id, pk, prefix, start, end, marker, timeout = fields("K2V poll_range", w, cls.TAG, 8)
        return cls(
            as_bytes(_WHAT, "bucket id", bucket_id),
            _as_str("partition key", pk),
            _as_opt_str("prefix", prefix),
            _as_opt_str("start", start),
            _as_opt_str("end", end),
            _as_opt_str("seen marker", marker),
            _as_timeout(timeout),
        )


@dataclass(frozen=True)
class PollRangeReply:
    """``[node, [encoded item, ...], issued clock]``: a storage node's new items, and its stable
    clock read before it read them: the last timestamp it had issued, or less, up to which every
    dot of its own was in its store (``LocalClock.stable``; what seen markers may claim of the
    node, see ``RangeSeenMarker.mark_seen_node_items``)."""

    node: int
    raws: tuple[bytes, ...]
    issued: int

    def to_wire(self) -> list[Any]:
        return [self.node, list(self.raws), self.issued]

    @classmethod
    def from_wire(cls, w: Any) -> PollRangeReply:
        what = "K2V poll_range reply"
        if not isinstance(w, list | tuple) or len(w) != 3:
            raise malformed(what, "expected [node, items, issued clock]")
        node, raws, issued = w
        if not isinstance(raws, list | tuple) or not all(isinstance(r, bytes) for r in raws):
            raise malformed(what, "items must be an array of bytes")
        return cls(as_int(what, "node", node, 0, 2**64 - 1), tuple(raws), as_int(what, "issued", issued, 0, 2**64 - 1))


#: The most ranges one ``poll_ranges`` request may carry: a PollRanges call has at most this many
#: (docs/k2v-api.md §8), and a storage node gets at most all of them.
MAX_POLLED_RANGES = 64


@dataclass(frozen=True)
class WatchedRange:
    """One range of a ``poll_ranges`` request: ``[pk, prefix, start, end, seen marker or None]``."""

    partition_key: str
    prefix: str | None
    start: str | None
    end: str | None
    seen_marker: str | None

    def to_wire(self) -> list[Any]:
        return [self.partition_key, self.prefix, self.start, self.end, self.seen_marker]

    @classmethod
    def from_wire(cls, w: Any) -> WatchedRange:
        what = "K2V poll_ranges range"
        if not isinstance(w, list | tuple) or len(w) != 5:
            raise malformed(what, "a range must be [partition key, prefix, start, end, seen marker]")
        pk, prefix, start, end, marker = w
        keys = (_as_opt_str("prefix", prefix), _as_opt_str("start", start), _as_opt_str("end", end))
        if any(k is not None and len(k.encode()) > MAX_KEY_BYTES for k in keys):
            raise malformed(what, f"a sort key bound must be at most {MAX_KEY_BYTES} bytes")
        return cls(_as_str("partition key", pk, what), *keys, _as_opt_str("seen marker", marker))


@dataclass(frozen=True)
class PollRangesRequest:
    """``["poll_ranges", bucket id, [range, ...], timeout]``: the ranges of one PollRanges call
    that this storage node holds, watched together; answer once one of them has news."""

    TAG: ClassVar[str] = "poll_ranges"
    bucket_id: bytes
    ranges: tuple[WatchedRange, ...]
    timeout: float

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.bucket_id, [r.to_wire() for r in self.ranges], self.timeout]

    @classmethod
    def from_wire(cls, w: Any) -> PollRangesRequest:
        what = "K2V poll_ranges"
        _, bucket_id, ranges, timeout = fields(what, w, cls.TAG, 4)
        if not isinstance(ranges, list | tuple) or not 1 <= len(ranges) <= MAX_POLLED_RANGES:
            raise malformed(what, f"ranges must be an array of 1 to {MAX_POLLED_RANGES} ranges")
        return cls(
            as_bytes(_WHAT, "bucket id", bucket_id),
            tuple(WatchedRange.from_wire(r) for r in ranges),
            _as_timeout(timeout),
        )


@dataclass(frozen=True)
class PollRangesReply:
    """``[node, issued clock, [[range index, [encoded item, ...]], ...]]``: the ranges of the
    request (by their index in it) in which the storage node has items their markers have not
    seen (every range without a marker is listed, with its whole content); the ranges not listed
    had nothing new. ``issued`` as in ``PollRangeReply``, read before the first range was."""

    node: int
    issued: int
    news: tuple[tuple[int, tuple[bytes, ...]], ...]

    def to_wire(self) -> list[Any]:
        return [self.node, self.issued, [[i, list(raws)] for i, raws in self.news]]

    @classmethod
    def from_wire(cls, w: Any, n_ranges: int) -> PollRangesReply:
        """Checked against the request it answers, which had ``n_ranges`` ranges."""
        what = "K2V poll_ranges reply"
        if not isinstance(w, list | tuple) or len(w) != 3:
            raise malformed(what, "expected [node, issued clock, news]")
        node, issued, news = w
        if not isinstance(news, list | tuple):
            raise malformed(what, "news must be an array of [range index, items]")
        out: list[tuple[int, tuple[bytes, ...]]] = []
        seen: set[int] = set()
        for entry in news:
            if not isinstance(entry, list | tuple) or len(entry) != 2:
                raise malformed(what, "news must be an array of [range index, items]")
            i = as_int(what, "range index", entry[0], 0, n_ranges - 1)
            if i in seen:
                raise malformed(what, f"range {i} is listed twice")
            seen.add(i)
            raws = entry[1]
            if not isinstance(raws, list | tuple) or not all(isinstance(r, bytes) for r in raws):
                raise malformed(what, "items must be an array of bytes")
            out.append((i, tuple(raws)))
        return cls(as_int(what, "node", node, 0, 2**64 - 1), as_int(what, "issued", issued, 0, 2**64 - 1), tuple(out))


@dataclass(frozen=True)
class FlushCountersRequest:
    """Send this node's queued index counter entries now: ``["flush_counters"]``. A bucket
    deletion asks every storage node first, so that the index it checks counts every write
    acknowledged before it (the queue otherwise lingers about 100 ms)."""

    TAG: ClassVar[str] = "flush_counters"

    def to_wire(self) -> list[Any]:
        return [self.TAG]

    @classmethod
    def from_wire(cls, w: Any) -> FlushCountersRequest:
        fields("K2V flush_counters", w, cls.TAG, 1)
        return cls()


K2VRequest = InsertRequest | PollItemRequest | PollRangeRequest | PollRangesRequest | FlushCountersRequest
_TAGS = (
    *InsertRequest.TAGS,
    PollItemRequest.TAG,
    PollRangeRequest.TAG,
    PollRangesRequest.TAG,
    FlushCountersRequest.TAG,
)


def parse_request(w: Any) -> K2VRequest:
    """The request a peer sent, checked; an unknown tag or a wrong shape is ``MalformedMessage``."""
    tag = tag_of(_WHAT, w, _TAGS)
    if tag in InsertRequest.TAGS:
        return InsertRequest.from_wire(w)
    if tag == PollItemRequest.TAG:
        return PollItemRequest.from_wire(w)
    if tag == PollRangesRequest.TAG:
        return PollRangesRequest.from_wire(w)
    if tag == FlushCountersRequest.TAG:
        return FlushCountersRequest.from_wire(w)
    return PollRangeRequest.from_wire(w)
