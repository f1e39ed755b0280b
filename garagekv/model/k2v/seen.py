"""PollRange seen markers: what a client has already seen of a range, across all storage nodes.

``vector_clock[n]`` says "every item's entry for node n up to this time has been seen"; an item
whose clock is covered by it is old news. An item seen only in part (its clock still goes beyond
``vector_clock``, e.g. a dot from another node that the replying node had) keeps its own clock in
``items``. The marker is opaque to clients: standard base64 (with padding) of zlib-compressed
canonical msgpack. Garage uses zstd; zlib is in the standard library and the format is ours.

Format 2 (written since clocks were bounded) is ``[2, clock, [sk, clock, sk, clock, ...]]`` where
a clock is one binary string of big-endian u64 pairs ``(node, time)`` sorted by node: a marker of
n items is about 2n msgpack objects, however long its clocks, so decoding one costs little and
can be bounded before it starts. Format 1 (``[1, [[node, time], ...], [[sk, [[node, time],
...]], ...]]``, one object per number) is still read, from markers handed out before, but only
up to MAX_V1_DECOMPRESSED.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from garagekv.model.k2v.causality import (
    MAX_CLOCK_ENTRIES,
    is_u64,
    max_client_time,
    vclock_gt,
    vclock_max,
)
from garagekv.model.k2v.item import K2VItem
from garagekv.util import codec
from garagekv.util.errors import BadRequest

MARKER_FORMAT_VERSION = 2
# A marker comes from a client and is decoded on the event loop of every node it reaches, so
# each stage is bounded before it runs (docs/k2v-compat.md, "Hostile input"): the text before
# base64, the output of zlib (bombs), then msgpack with a cap on every array, string and binary
# (no maps or extensions at all), then the number of per-item clocks and the length and times of
# each clock (as for tokens). Format 2 keeps the object count at about two per item, so the
# largest accepted marker decodes in milliseconds; format 1 spends one object per number and is
# held to a sixteenth of the size. encode() sheds per-item clocks to stay inside the bounds: an
# item whose clock is shed may be reported once more, never missed.
MAX_MARKER_DECOMPRESSED = 1024 * 1024
MAX_V1_DECOMPRESSED = 64 * 1024
MAX_MARKER_CHARS = 2 * 1024 * 1024
MAX_MARKER_ITEMS = 10_000
MAX_MARKER_KEY_BYTES = 64 * 1024  # far above any configurable key length limit
_PAIR = struct.Struct(">QQ")
#: Markers ``decode_shared`` remembers (by their text, only those of at most
#: ``SHARED_MAX_CHARS``): a PollRanges client sends back the marker of every range without news
#: as it got it, call after call, and each storage node decodes each of them again.
SHARED_MARKERS = 8192
SHARED_MAX_CHARS = 4096
_shared: OrderedDict[str, RangeSeenMarker] = OrderedDict()


def _invalid(why: str = "") -> BadRequest:
    return BadRequest("Invalid seenMarker" + (f": {why}" if why else ""))


def _clock_to_wire(vc: dict[int, int]) -> bytes:
    return b"".join(_PAIR.pack(n, t) for n, t in sorted(vc.items()))


def _clock_from_bin(w: Any, limit: int) -> dict[int, int]:
    """A format-2 clock: a binary string of (node, time) u64 pairs.

    Its length needs no check here: ``decode`` has msgpack refuse any binary longer than
    MAX_CLOCK_ENTRIES pairs before it is built.
    """
    if not isinstance(w, bytes) or len(w) % _PAIR.size:
        raise _invalid()
    vc = dict(_PAIR.iter_unpack(w))
    if len(vc) * _PAIR.size != len(w):
        raise _invalid()  # a node listed twice
    if vc and (t := max(vc.values())) > limit:
        raise _invalid(f"time {t} is beyond any node's clock")
    return vc


def _clock_from_wire(w: Any, limit: int) -> dict[int, int]:
    if not isinstance(w, list):
        raise _invalid()
    if len(w) > MAX_CLOCK_ENTRIES:
        raise _invalid(f"a clock has more than {MAX_CLOCK_ENTRIES} entries")
    vc: dict[int, int] = {}
    for pair in w:
        if not (isinstance(pair, list) and len(pair) == 2 and is_u64(pair[0]) and is_u64(pair[1])):
            raise _invalid()
        if pair[0] in vc:
            raise _invalid()
        if pair[1] > limit:
            raise _invalid(f"time {pair[1]} is beyond any node's clock")
        vc[pair[0]] = pair[1]
    return vc


@dataclass
class RangeSeenMarker:
    vector_clock: dict[int, int] = field(default_factory=dict)
    items: dict[str, dict[int, int]] = field(default_factory=dict)

    def copy(self) -> RangeSeenMarker:
        """A marker that can be changed without changing this one (per-item clocks are shared:
        every change replaces them)."""
        return RangeSeenMarker(dict(self.vector_clock), dict(self.items))

    def restrict(self, prefix: str | None = None, start: str | None = None, end: str | None = None) -> None:
        """Forget per-item clocks outside ``[start, end)`` / ``prefix``.

        A marker may be reused for a sub-range; items outside the range it is now used for would
        only bloat it.
        """

        def keep(sk: str) -> bool:
            return (
                (start is None or sk >= start)
                and (end is None or sk < end)
                and (prefix is None or sk.startswith(prefix))
            )

        self.items = {sk: vc for sk, vc in self.items.items() if keep(sk)}

    def mark_seen_node_items(
        self, node: int, items: Iterable[K2VItem], issued: int = 0, stable: int | None = None
    ) -> None:
        """Record that ``node`` answered with ``items``: everything it had of them is now seen.

        The node's own entry of each item is complete on that node (it created those dots), so
        ``vector_clock[node]`` can move up to its latest dot, but never past ``stable``: the
        node's bound, read before it looked at the items, up to which every dot of its own was
        already in its store. A later dot may have been issued before a lower one appeared (a
        conditional write's dot is reserved before its round and shows up at its commit, after
        plain inserts that got later times: docs/k2v-compat.md), and an answer read after a
        wake-up holds only some of the range's items. The entry's discard time moves it too,
        but only up to ``issued``, the node's own clock read before it looked at the items: a
        discard time beyond it came from a token the node never handed out (forged, and
        recorded by another coordinator), and trusting it would hide the node's next writes
        from this marker. Dots beyond those bounds, and dots of other nodes, are remembered in
        the item's own clock under its sort key.
        """
        for item in items:
            cc = item.causal_context().vclock
            own = item.items.get(node)
            if own is not None:
                t = own.values[-1][0] if own.values else 0
                if own.t_discard <= issued:
                    t = max(t, own.t_discard)
                if stable is not None:
                    t = min(t, stable)
                if t > self.vector_clock.get(node, 0):
                    self.vector_clock[node] = t
            if vclock_gt(cc, self.vector_clock):
                self.items[item.sort_key] = vclock_max(self.items.get(item.sort_key, {}), cc)

    def canonicalize(self) -> None:
        """Drop per-item clocks that ``vector_clock`` already covers (they add nothing)."""
        self.items = {sk: vc for sk, vc in self.items.items() if vclock_gt(vc, self.vector_clock)}

    def is_new_item(self, item: K2VItem) -> bool:
        """Whether ``item`` has something the marker's holder has not seen yet."""
        return self.is_new_clock(item.sort_key, item.causal_context().vclock)

    def is_new_clock(self, sort_key: str, cc: dict[int, int]) -> bool:
        """Whether an item of ``sort_key`` whose causal context is ``cc`` is new to the marker."""
        if not vclock_gt(cc, self.vector_clock):
            return False
        seen = self.items.get(sort_key)
        return seen is None or vclock_gt(cc, seen)

    def encode(self) -> str:
        """Opaque text form (format 2) of the canonicalized marker (``self`` is left untouched).

        Per-item clocks beyond what :meth:`decode` accepts are shed, last sort keys first.
        """
        items = [(sk, _clock_to_wire(vc)) for sk, vc in sorted(self.items.items()) if vclock_gt(vc, self.vector_clock)]
        del items[MAX_MARKER_ITEMS:]
        clock = _clock_to_wire(self.vector_clock)

        def pack(items: list[tuple[str, bytes]]) -> bytes:
            return codec.encode_lists([MARKER_FORMAT_VERSION, clock, [x for pair in items for x in pair]])

        packed = pack(items)
        while len(packed) > MAX_MARKER_DECOMPRESSED and items:
            del items[len(items) // 2 :]
            packed = pack(items)
        return base64.b64encode(zlib.compress(packed, 6)).decode("ascii")

    @classmethod
    def decode(cls, s: str) -> RangeSeenMarker:
        """Parse a client-supplied marker; anything malformed is ``BadRequest("Invalid seenMarker")``."""
        if not isinstance(s, str) or not s.isascii():
            raise _invalid()
        if len(s) > MAX_MARKER_CHARS:
            raise _invalid(f"longer than {MAX_MARKER_CHARS} characters")
        try:
            raw = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid()
        if base64.b64encode(raw).decode("ascii") != s:
            raise _invalid()  # non-canonical padding bits
        try:
            d = zlib.decompressobj()
            packed = d.decompress(raw, MAX_MARKER_DECOMPRESSED + 1)
        except zlib.error:
            raise _invalid()
        if len(packed) > MAX_MARKER_DECOMPRESSED:
            raise _invalid(f"more than {MAX_MARKER_DECOMPRESSED} bytes once decompressed")
        if not d.eof or d.unused_data or d.unconsumed_tail:
            raise _invalid()  # truncated or trailing garbage
        # Every format starts with a 3-element array and the version as a positive fixint.
        if packed[:2] == b"\x93\x01":
            if len(packed) > MAX_V1_DECOMPRESSED:
                raise _invalid(f"more than {MAX_V1_DECOMPRESSED} bytes once decompressed (format 1)")
            return cls._decode_v1(packed)
        try:
            body = msgpack.unpackb(
                packed,
                raw=False,
                max_array_len=2 * MAX_MARKER_ITEMS,
                max_str_len=MAX_MARKER_KEY_BYTES,
                max_bin_len=_PAIR.size * MAX_CLOCK_ENTRIES,
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception:
            raise _invalid()
        if not (isinstance(body, list) and len(body) == 3 and body[0] == MARKER_FORMAT_VERSION):
            raise _invalid()
        if type(body[0]) is not int or not isinstance(body[2], list) or len(body[2]) % 2:
            raise _invalid()
        limit = max_client_time()
        marker = cls(_clock_from_bin(body[1], limit), {})
        flat = body[2]
        for i in range(0, len(flat), 2):
            sk = flat[i]
            if not isinstance(sk, str) or sk in marker.items:
                raise _invalid()
            marker.items[sk] = _clock_from_bin(flat[i + 1], limit)
        return marker

    @classmethod
    def decode_shared(cls, s: str) -> RangeSeenMarker:
        """``decode``, remembering the last ``SHARED_MARKERS`` small markers decoded: the marker
        returned may be shared, so it must not be changed (``copy()`` first)."""
        hit = _shared.get(s) if isinstance(s, str) else None
        if hit is not None:
            _shared.move_to_end(s)
            return hit
        marker = cls.decode(s)
        if len(s) <= SHARED_MAX_CHARS:
            _shared[s] = marker
            if len(_shared) > SHARED_MARKERS:
                _shared.popitem(last=False)
        return marker

    @classmethod
    def _decode_v1(cls, packed: bytes) -> RangeSeenMarker:
        try:
            body = msgpack.unpackb(
                packed, raw=False, max_array_len=MAX_MARKER_ITEMS, max_map_len=0, max_bin_len=0, max_ext_len=0
            )
        except Exception:
            raise _invalid()
        if not (isinstance(body, list) and len(body) == 3 and isinstance(body[2], list)):
            raise _invalid()
        limit = max_client_time()
        marker = cls(_clock_from_wire(body[1], limit), {})
        for ent in body[2]:
            if not (isinstance(ent, list) and len(ent) == 2 and isinstance(ent[0], str)):
                raise _invalid()
            if ent[0] in marker.items:
                raise _invalid()
            marker.items[ent[0]] = _clock_from_wire(ent[1], limit)
        return marker
