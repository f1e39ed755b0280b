"""How K2V items are kept in their LMDB tree: without what the tree key and a bucket number say.

A K2V item's canonical bytes (``K2VItem.encode``: a format byte, then msgpack ``[bucket id,
partition key, sort key, entries]``) are what replicas exchange, hash and compare. Kept as they
are, every item repeats the 32-byte bucket id and its sort key, which the tree key
(``partition hash ‖ sort key``) already holds: 43 of the 184 bytes of a 100-byte item
(docs/storage.md, "Bytes per item"). The tree holds instead::

    canonical format byte | 0x80, varint(bucket number), msgpack str(partition key), entries

where the bucket number is this node's own small number for the bucket id (``BucketNumbers``,
the ``k2v_item:buckets`` tree: bucket id -> be32 number; never reused, never removed). The
canonical bytes are rebuilt from the stored ones, the tree key and the number by slicing and
joining bytes, without decoding (``TableData`` does it on every read, docs/storage.md).

Values written before (format byte below 0x80) are read as they are. A value whose layout is not
the expected one (a sort key that is not the tree key's) is stored as it is rather than packed.
"""

from __future__ import annotations

import threading
from typing import Protocol

from garagekv.db.env import Database
from garagekv.db.writer import WriteTxn
from garagekv.model.k2v.item import ITEM_FORMAT_EXPIRY, ITEM_FORMAT_VERSION
from garagekv.util.errors import StorageError

#: The first byte of a packed item: the canonical format byte with this bit set.
PACKED = 0x80
#: What every canonical item starts with after its format byte: a 4-element array, then the
#: 32-byte bucket id as msgpack bin 8.
_HEAD = b"\x94\xc4\x20"
_PK_AT = 1 + len(_HEAD) + 32
_FIXSTR = [bytes([0xA0 | n]) for n in range(32)]
#: The item formats whose layout this knows (a later one is stored as it is until it is added).
_PACKABLE = (ITEM_FORMAT_VERSION, ITEM_FORMAT_EXPIRY)


def str_header(n: int) -> bytes:
    """msgpack's header of an ``n``-byte UTF-8 string (how ``K2VItem.encode`` packs keys)."""
    if n < 32:
        return bytes([0xA0 | n])
    if n < 0x100:
        return bytes([0xD9, n])
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big")
    return b"\xdb" + n.to_bytes(4, "big")


def str_end(raw: bytes | memoryview, at: int) -> int:
    """Where the msgpack string starting at ``at`` ends (ValueError if there is none)."""
    b = raw[at]
    if 0xA0 <= b <= 0xBF:
        end = at + 1 + (b & 0x1F)
    elif b == 0xD9:
        end = at + 2 + raw[at + 1]
    elif b == 0xDA:
        end = at + 3 + int.from_bytes(raw[at + 1 : at + 3], "big")
    elif b == 0xDB:
        end = at + 5 + int.from_bytes(raw[at + 1 : at + 5], "big")
    else:
        raise ValueError("not a msgpack string")
    if end > len(raw):
        raise ValueError("truncated string")
    return end


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(raw: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = raw[at]
        at += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, at
        shift += 7
        if shift > 28:
            raise ValueError("bucket number too long")


class BucketNumbers:
    """This node's numbers for bucket ids, kept in ``k2v_item:buckets`` and all in memory.

    A number is handed out in the writer transaction of the first item packed with it and its
    entry is written in that same transaction, so a stored item never names a number the tree
    does not hold. Numbers handed out in a transaction that was rolled back are not reused while
    the process runs (``next`` only grows), and the bucket gets its entry the next time.
    """

    def __init__(self, db: Database) -> None:
        self.tree = db.tree("k2v_item:buckets")
        self.by_id: dict[bytes, int] = {}
        self.by_number: dict[int, bytes] = {}
        with db.read() as txn:
            for bucket_id, raw in txn.cursor(db=self.tree):
                n = int.from_bytes(raw, "big")
                self.by_id[bytes(bucket_id)] = n
                self.by_number[n] = bytes(bucket_id)
        self.next = max(self.by_number, default=0) + 1
        self._durable: set[bytes] = set(self.by_id)  # bucket ids whose entry is committed
        self._lock = threading.Lock()

    def number_in(self, tx: WriteTxn, bucket_id: bytes) -> int:
        """The bucket's number, its entry written in ``tx`` if it may not be on disk yet."""
        n = self.by_id.get(bucket_id)
        if n is None:
            with self._lock:  # the writer thread, or a tool's run_sync next to it
                n = self.by_id.get(bucket_id)
                if n is None:
                    n = self.next
                    self.next += 1
                    self.by_number[n] = bucket_id
                    self.by_id[bucket_id] = n
        if bucket_id not in self._durable and tx.get(self.tree, bucket_id) is None:
            tx.put(self.tree, bucket_id, n.to_bytes(4, "big"))
            tx.on_commit(lambda: self._durable.add(bucket_id))
        return n

    def bucket_id(self, n: int) -> bytes:
        bucket_id = self.by_number.get(n)
        if bucket_id is None:
            raise StorageError(f"stored K2V item names bucket number {n}, which this node does not know")
        return bucket_id


class BucketIds(Protocol):
    """What ``ItemStoredForm`` needs of ``BucketNumbers``."""

    def number_in(self, tx: WriteTxn, bucket_id: bytes) -> int: ...

    def bucket_id(self, n: int) -> bytes: ...


class ItemStoredForm:
    """The ``StoredForm`` of the K2V item table (see the module docstring)."""

    def __init__(self, buckets: BucketIds) -> None:
        self.buckets = buckets
        # first byte ‖ one-byte bucket number -> the canonical bytes up to the partition key
        self._heads: dict[bytes, bytes] = {}

    def pack(self, tx: WriteTxn, tree_key: bytes, raw: bytes) -> bytes:
        fmt = raw[0] if raw else 0
        if fmt not in _PACKABLE or raw[1:4] != _HEAD or len(tree_key) < 32:
            return raw
        try:
            pk_end = str_end(raw, _PK_AT)
            sk_end = str_end(raw, pk_end)
        except (ValueError, IndexError):
            return raw
        sk = tree_key[32:]
        if raw[sk_end - len(sk) : sk_end] != sk or str_header(len(sk)) != raw[pk_end : sk_end - len(sk)]:
            return raw  # the sort key is not the tree key's: keep the bytes as they are
        n = self.buckets.number_in(tx, raw[4:_PK_AT])
        return bytes([fmt | PACKED]) + _varint(n) + raw[_PK_AT:pk_end] + raw[sk_end:]

    def unpack(self, tree_key: bytes, stored: bytes) -> bytes:
        if not stored or stored[0] < PACKED:
            return stored
        # The usual case (a one-byte bucket number, keys under 32 bytes), with as few operations
        # as can be: every read of an item comes through here.
        head = self._heads.get(stored[:2])
        if head is not None and len(stored) > 2:
            pk_end = 3 + (stored[2] & 0x1F)
            sk = tree_key[32:]
            if 0xA0 <= stored[2] <= 0xBF and len(sk) < 32 and pk_end <= len(stored):
                return b"".join((head, stored[2:pk_end], _FIXSTR[len(sk)], sk, stored[pk_end:]))
        return self._unpack(tree_key, stored)

    def _unpack(self, tree_key: bytes, stored: bytes) -> bytes:
        try:
            n, at = _read_varint(stored, 1)
            pk_end = str_end(stored, at)
        except (ValueError, IndexError) as e:
            raise StorageError(f"malformed stored K2V item at {tree_key.hex()}: {e}") from None
        sk = tree_key[32:]
        head = bytes([stored[0] ^ PACKED]) + _HEAD + self.buckets.bucket_id(n)
        if at == 2 and len(self._heads) < 4096:
            self._heads[stored[:2]] = head
        return b"".join((head, stored[at:pk_end], str_header(len(sk)), sk, stored[pk_end:]))
