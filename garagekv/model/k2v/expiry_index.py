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
from dataclasses import dataclass, field

from garagekv.db.env import Database
from garagekv.db.writer import WriteTxn
from garagekv.model.k2v.item import K2VItem
from garagekv.util.codec import blake2sum

EXPIRY_TREE = "k2v:expiry"
#: Entries the worker expires per step.
SCAN_LIMIT = 1024
#: Entries a walk passes over, due but left to another node, before it stops.
MAX_DEFERRED = 65_536
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

    def select(self, now: int, act_at: Callable[[int, bytes], int], limit: int = SCAN_LIMIT) -> Selection:
        """Walk the due entries in expiry order: those whose ``act_at(expiry, tree key)`` has
        come are ready (at most ``limit``), the others are left for later.

        At most ``MAX_DEFERRED`` entries are left per walk, so entries this node leaves to
        another one never hide its own due ones from it for long.
        """
        sel = Selection()
        with self.db.read() as txn:
            for key, tree_key in txn.cursor(db=self.tree):
                (exp,) = _BE64.unpack_from(key)
                if exp > now:
                    sel.wake_at(exp)
                    break
                at = act_at(exp, bytes(tree_key))
                if at <= now:
                    if not sel.ready:
                        sel.first_ready_exp = exp
                    sel.ready.append((bytes(key), bytes(tree_key)))
                    if len(sel.ready) >= limit:
                        sel.more = True
                        break
                else:
                    sel.deferred += 1
                    sel.wake_at(at)
                    if sel.deferred >= MAX_DEFERRED:
                        break
        return sel


@dataclass
class Selection:
    """One walk of the index: the entries to expire now, and when to look again."""

    ready: list[tuple[bytes, bytes]] = field(default_factory=list)  # (index key, tree key)
    deferred: int = 0
    more: bool = False  # ``limit`` ready entries were taken: more may be due
    next_ms: int | None = None
    first_ready_exp: int | None = None  # the expiry of the first ready entry (the oldest one)

    def wake_at(self, ms: int) -> None:
        if self.next_ms is None or ms < self.next_ms:
            self.next_ms = ms
