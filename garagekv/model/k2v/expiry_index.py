"""The index of pending expiries on a node: which items hold values that expire, by time.

The ``k2v:expiry`` tree holds one entry per (item, expiry time) of a live value that expires:
key ``be64(expiry ms) ‖ blake2(tree key)``, value the tree key. The item schema keeps it in the
transaction that changes the item, whatever the change (a coordinated insert, a replica's write,
read repair, anti-entropy, GC), so the expiry worker (garagekv/model/k2v/expiry.py) finds the
next due value with one cursor step and never scans the items.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from garagekv.db.env import Database
from garagekv.db.writer import WriteTxn
from garagekv.model.k2v.item import K2VItem
from garagekv.util.codec import blake2sum

EXPIRY_TREE = "k2v:expiry"
#: Index entries read per step of the worker.
SCAN_LIMIT = 1024
ALWAYS = 1 << 64
_EMPTY: frozenset[int] = frozenset()
_BE64 = struct.Struct(">Q")


def index_key(expiry_ms: int, tree_key: bytes) -> bytes:
    """``be64(expiry) ‖ blake2(tree key)``: ordered by time, and short whatever the key length
    (a tree key may already use LMDB's whole key size); the value is the tree key."""
    return _BE64.pack(expiry_ms) + blake2sum(tree_key)


class ExpiryIndex:
    """This node's pending expiries, kept in the transaction of every item change."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.tree = db.tree(EXPIRY_TREE)
        #: The worker sleeps until this time (unix ms): an entry due earlier wakes it.
        self.wake_before_ms = ALWAYS
        self.on_earlier: Callable[[], None] | None = None

    def updated_in(self, tx: WriteTxn, old: K2VItem | None, new: K2VItem | None) -> None:
        """Move the item's entries from its old pending expiries to its new ones."""
        before = old.pending_expiries() if old is not None else _EMPTY
        after = new.pending_expiries() if new is not None else _EMPTY
        if before == after:
            return
        ref = new if new is not None else old
        assert ref is not None
        tree_key = ref.tree_key()
        digest = blake2sum(tree_key)
        for exp in before - after:
            tx.delete(self.tree, _BE64.pack(exp) + digest)
        added = after - before
        for exp in added:
            tx.put(self.tree, _BE64.pack(exp) + digest, tree_key)
        if added and min(added) < self.wake_before_ms and self.on_earlier is not None:
            tx.on_commit(self.on_earlier)

    def __len__(self) -> int:
        with self.db.read() as txn:
            return int(txn.stat(self.tree)["entries"])

    def due(self, now: int, limit: int = SCAN_LIMIT) -> tuple[list[tuple[bytes, int, bytes]], int | None]:
        """Entries due at ``now`` (index key, expiry, tree key), at most ``limit``, and the
        expiry of the first entry not due (None if there is none)."""
        out: list[tuple[bytes, int, bytes]] = []
        with self.db.read() as txn:
            for key, tree_key in txn.cursor(db=self.tree):
                (exp,) = _BE64.unpack_from(key)
                if exp > now:
                    return out, exp
                out.append((bytes(key), exp, bytes(tree_key)))
                if len(out) >= limit:
                    break
        return out, None
