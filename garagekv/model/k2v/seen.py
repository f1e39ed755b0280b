"""PollRange seen markers: what a client has already seen of a range, across all storage nodes.

``vector_clock[n]`` says "every item's entry for node n up to this time has been seen"; an item
whose clock is covered by it is old news. An item seen only in part (its clock still goes beyond
``vector_clock``, e.g. a dot from another node that the replying node had) keeps its own clock in
``items``. The marker is opaque to clients: standard base64 (with padding) of zlib-compressed
canonical msgpack. Garage uses zstd; zlib is in the standard library and the format is ours.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from garagekv.model.k2v.causality import is_u64, vclock_gt, vclock_max
from garagekv.model.k2v.item import K2VItem
from garagekv.util import codec
from garagekv.util.errors import BadRequest

MARKER_FORMAT_VERSION = 1
# A marker comes from a client: cap what its decompression may allocate (zlib bombs).
MAX_MARKER_DECOMPRESSED = 64 * 1024 * 1024


def _invalid() -> BadRequest:
    return BadRequest("Invalid seenMarker")


def _clock_to_wire(vc: dict[int, int]) -> list[list[int]]:
    return [[n, t] for n, t in sorted(vc.items())]


def _clock_from_wire(w: Any) -> dict[int, int]:
    if not isinstance(w, list):
        raise _invalid()
    vc: dict[int, int] = {}
    for pair in w:
        if not (isinstance(pair, list) and len(pair) == 2 and is_u64(pair[0]) and is_u64(pair[1])):
            raise _invalid()
        if pair[0] in vc:
            raise _invalid()
        vc[pair[0]] = pair[1]
    return vc


@dataclass
class RangeSeenMarker:
    vector_clock: dict[int, int] = field(default_factory=dict)
    items: dict[str, dict[int, int]] = field(default_factory=dict)

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

    def mark_seen_node_items(self, node: int, items: Iterable[K2VItem]) -> None:
        """Record that ``node`` answered with ``items``: everything it had of them is now seen.

        The node's own entry of each item is complete on that node (it coordinated those dots),
        so ``vector_clock[node]`` can move up to it. Dots of other nodes carried by the item may
        not be covered yet; then the item's whole clock is remembered under its sort key.
        """
        for item in items:
            cc = item.causal_context().vclock
            if node in cc:
                self.vector_clock[node] = max(self.vector_clock.get(node, 0), cc[node])
            if vclock_gt(cc, self.vector_clock):
                self.items[item.sort_key] = vclock_max(self.items.get(item.sort_key, {}), cc)

    def canonicalize(self) -> None:
        """Drop per-item clocks that ``vector_clock`` already covers (they add nothing)."""
        self.items = {sk: vc for sk, vc in self.items.items() if vclock_gt(vc, self.vector_clock)}

    def is_new_item(self, item: K2VItem) -> bool:
        """Whether ``item`` has something the marker's holder has not seen yet."""
        cc = item.causal_context().vclock
        if not vclock_gt(cc, self.vector_clock):
            return False
        seen = self.items.get(item.sort_key)
        return seen is None or vclock_gt(cc, seen)

    def encode(self) -> str:
        """Opaque text form of the canonicalized marker (``self`` is left untouched)."""
        items = [[sk, _clock_to_wire(vc)] for sk, vc in sorted(self.items.items()) if vclock_gt(vc, self.vector_clock)]
        body = [MARKER_FORMAT_VERSION, _clock_to_wire(self.vector_clock), items]
        return base64.b64encode(zlib.compress(codec.encode(body), 6)).decode("ascii")

    @classmethod
    def decode(cls, s: str) -> RangeSeenMarker:
        """Parse a client-supplied marker; anything malformed is ``BadRequest("Invalid seenMarker")``."""
        if not isinstance(s, str) or not s.isascii():
            raise _invalid()
        try:
            raw = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid()
        if base64.b64encode(raw).decode("ascii") != s:
            raise _invalid()  # non-canonical padding bits
        try:
            d = zlib.decompressobj()
            packed = d.decompress(raw, MAX_MARKER_DECOMPRESSED)
        except zlib.error:
            raise _invalid()
        if not d.eof or d.unused_data or d.unconsumed_tail:
            raise _invalid()  # truncated, trailing garbage, or over the size cap
        try:
            body = codec.decode(packed)
        except Exception:
            raise _invalid()
        if not (isinstance(body, list) and len(body) == 3 and is_u64(body[0])):
            raise _invalid()
        if body[0] != MARKER_FORMAT_VERSION or not isinstance(body[2], list):
            raise _invalid()
        marker = cls(_clock_from_wire(body[1]), {})
        for ent in body[2]:
            if not (isinstance(ent, list) and len(ent) == 2 and isinstance(ent[0], str)):
                raise _invalid()
            if ent[0] in marker.items:
                raise _invalid()
            marker.items[ent[0]] = _clock_from_wire(ent[1])
        return marker
