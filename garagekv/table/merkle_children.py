"""The children of a stored intermediate Merkle node, kept as their msgpack bytes.

A Merkle batch reads, changes and rewrites one node below a partition's root for nearly every
entry (no two entries of a batch share one once a trie holds thousands of entries), and those
nodes hold up to 256 children. Decoding such a node into a dict, checking it, sorting it and
packing it again cost more than the rest of the entry's work. The wire form has a fixed shape,
``[1, [[byte, 32-byte hash], ...]]`` with the bytes in order, so the children can stay as
the stored bytes: a record is ``92 <byte> c4 20 <hash>`` (36 bytes) for a byte below 128 and
``92 cc <byte> c4 20 <hash>`` (37 bytes) above, the records below 128 come first, and a child is
found with one ``bytes.find``. Changes made by the batch sit in a small overlay and are spliced
into the bytes when the node is written (``pack``), which gives exactly what packing the sorted
children would.

Only nodes in that exact shape are parsed this way (``parse`` returns None otherwise, and the
caller decodes and checks the node as before): the checks are whole-slice comparisons, so a
node that passes them is a canonical node.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import msgpack

HASH_LEN = 32
#: Nodes of fewer bytes (about 16 children) are cheaper to decode into a dict: parsing checks a
#: dozen slices whatever the size (measured in docs/performance-log.md, "Merkle nodes as bytes").
MIN_BYTES = 600
_LO, _HI = 36, 37  # record sizes for a child byte below 128 (fixint) and from 128 (uint8)
INTERMEDIATE_HEAD = b"\x92\x01"  # msgpack [1, ...]: an intermediate node's wire form
_REMOVED = object()


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")


class RawChildren:
    """A node's children as stored, with the batch's changes on top (a small dict API: what
    ``merkle._TrieBatch`` uses of a children dict)."""

    __slots__ = ("records", "lo", "hi", "over")

    def __init__(self, records: bytes, lo: bytes, hi: bytes) -> None:
        self.records = records  # the children's records, without the node's header
        self.lo = lo  # the child bytes below 128, in order
        self.hi = hi  # the child bytes from 128, in order
        self.over: dict[int, Any] = {}  # changes: byte -> hash, a placeholder, or _REMOVED

    @classmethod
    def parse(cls, body: bytes) -> RawChildren | None:
        """The children of ``body`` (a node's msgpack, without the format byte), or None when
        it is not a canonical intermediate node of 32-byte hashes."""
        if body[:2] != INTERMEDIATE_HEAD or len(body) < 3:
            return None
        t = body[2]
        if 0x90 <= t <= 0x9F:
            n, start = t & 0x0F, 3
        elif t == 0xDC and len(body) >= 5:
            n, start = int.from_bytes(body[3:5], "big"), 5
        else:
            return None
        n_hi = len(body) - start - _LO * n
        if not 0 <= n_hi <= n or n > 256:
            return None
        n_lo = n - n_hi
        mid = start + _LO * n_lo
        lo = body[start + 1 : mid : _LO]
        hi = body[mid + 2 :: _HI]
        if (
            body[start:mid:_LO] != b"\x92" * n_lo
            or body[start + 2 : mid : _LO] != b"\xc4" * n_lo
            or body[start + 3 : mid : _LO] != b"\x20" * n_lo
            or body[mid::_HI] != b"\x92" * n_hi
            or body[mid + 1 :: _HI] != b"\xcc" * n_hi
            or body[mid + 3 :: _HI] != b"\xc4" * n_hi
            or body[mid + 4 :: _HI] != b"\x20" * n_hi
            or (lo and max(lo) >= 0x80)
            or (hi and min(hi) < 0x80)
            or bytes(sorted(set(lo))) != lo
            or bytes(sorted(set(hi))) != hi
        ):
            return None
        return cls(body[start:], lo, hi)

    # ---- reads --------------------------------------------------------------------------------

    def _stored(self, b: int) -> bytes | None:
        if b < 0x80:
            i = self.lo.find(b)
            off = _LO * i + 4
        else:
            i = self.hi.find(b)
            off = _LO * len(self.lo) + _HI * i + 5
        return None if i < 0 else self.records[off : off + HASH_LEN]

    def get(self, b: int, default: Any = None) -> Any:
        v = self.over.get(b, self)
        if v is self:
            v = self._stored(b)
        return default if v is None or v is _REMOVED else v

    def __getitem__(self, b: int) -> Any:
        v = self.get(b, _REMOVED)
        if v is _REMOVED:
            raise KeyError(b)
        return v

    def __contains__(self, b: object) -> bool:
        return isinstance(b, int) and self.get(b, _REMOVED) is not _REMOVED

    def _merged(self) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for b in (*self.lo, *self.hi):
            out[b] = self._stored(b)
        for b, v in self.over.items():
            if v is _REMOVED:
                out.pop(b, None)
            else:
                out[b] = v
        return dict(sorted(out.items()))

    def __len__(self) -> int:
        n = len(self.lo) + len(self.hi)
        for b, v in self.over.items():
            stored = (self.lo if b < 0x80 else self.hi).find(b) >= 0
            n += (v is not _REMOVED) - stored
        return n

    def __iter__(self) -> Iterator[int]:
        return iter(self._merged())

    def items(self) -> list[tuple[int, Any]]:
        return list(self._merged().items())

    # ---- changes ------------------------------------------------------------------------------

    def __setitem__(self, b: int, v: Any) -> None:
        self.over[b] = v

    def pop(self, b: int, default: Any = None) -> Any:
        v = self.get(b, default)
        self.over[b] = _REMOVED
        return v

    def pending(self, placeholder: object) -> bool:
        """Whether a change still holds ``placeholder`` (stored children never do)."""
        return any(v is placeholder for v in self.over.values())

    def pack(self) -> bytes:
        """The node's msgpack with the changes applied: ``packb([1, sorted(children)])``.

        Added and changed children are spliced into the records in byte order; a removal (rare:
        only batches removing entries make them) or a hash of another length packs the merged
        children instead.
        """
        if any(v is _REMOVED or type(v) is not bytes or len(v) != HASH_LEN for v in self.over.values()):
            return bytes(msgpack.packb([1, self.items()], use_bin_type=True))
        records = bytearray(self.records)
        lo, hi = bytearray(self.lo), bytearray(self.hi)
        for b, h in sorted(self.over.items()):
            if b < 0x80:
                i = bisect_left(lo, b)
                off = _LO * i
                if i < len(lo) and lo[i] == b:
                    records[off + 4 : off + _LO] = h
                else:
                    records[off:off] = b"\x92" + bytes([b]) + b"\xc4\x20" + h
                    lo.insert(i, b)
            else:
                i = bisect_left(hi, b)
                off = _LO * len(lo) + _HI * i
                if i < len(hi) and hi[i] == b:
                    records[off + 5 : off + _HI] = h
                else:
                    records[off:off] = b"\x92\xcc" + bytes([b]) + b"\xc4\x20" + h
                    hi.insert(i, b)
        return INTERMEDIATE_HEAD + _array_header(len(lo) + len(hi)) + bytes(records)
