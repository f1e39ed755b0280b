"""Range sums: what anti-entropy compares, kept up to date inside each write's own transaction.

Replicas of a partition must find the entries on which they differ while exchanging little when
they agree. Each entry is worth an **element**, a keyed 256-bit hash of its tree key and
canonical bytes; a set of entries is worth the **sum** of its elements modulo 2^256. A sum can
be updated by adding and subtracting elements, so a write changes a handful of stored sums
instead of rehashing a path of a tree (what a Merkle trie needs, and what a queue and a
background updater had to batch).

**Chunks.** The entries of a partition (the first byte of the tree key) are cut into chunks at
``LEVELS`` levels. A key's **rank** (0 to ``LEVELS``, from a keyed hash of the key alone: one
key in ``FANOUT`` has rank 1 or more, one in ``FANOUT**2`` rank 2 or more, ...) makes it a
boundary at every level up to its rank. A chunk of level L starts at a boundary of level L (or
at the partition's start) and runs to the next one; its sum is stored at ``bytes([L]) + start``
in ``<table>:sums``, where the partition's start is ``bytes([L, partition])`` (shorter than any
tree key of the partition, so it sorts first). Level 1 chunks hold about ``FANOUT`` entries,
each level ``FANOUT`` chunks of the level below. Boundaries depend on keys only, never on the
order of writes: replicas holding the same entries hold the same records, byte for byte.

**Why keyed.** With a public hash, a client could choose values whose elements add up to zero,
and a replica missing exactly those would look complete. The key is derived from the cluster's
RPC secret, which clients never see; a change of the key (a new secret) rebuilds the sums.

**Writes** (``change_in``, in the transaction that writes the entry): the chunk holding the key
gets the difference of the elements at each level; a new key of rank r splits the chunks of
levels 1..r holding it (the new chunk's sum is added up from the level below, or from the
entries at level 1, about ``FANOUT`` reads); a deleted key of rank r merges its chunks into the
previous ones.

**Reads** (anti-entropy, docs/architecture.md): ``chunks`` lists a node's own chunks of a range
at one level; ``sums_of`` adds up a node's entries over ranges another node chose (one record
each when both nodes have the same boundaries there, a walk down the levels where they do not);
``elements_of`` gives the elements of single entries.

**Rebuild.** The sums are rebuilt from the entries on a format or key change (and by ``repair
merkle``), in key order, a batch per writer transaction, while writes go on: the records then
describe the entries up to ``progress`` (a key) and writes beyond it leave the sums alone (the
rebuild adds them when it gets there). The meta record (``META``) keeps the format, the key's
fingerprint and the progress, so a restart resumes the rebuild.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lmdb

from garagekv.db.env import Database
from garagekv.db.writer import WriteTxn
from garagekv.util import codec
from garagekv.util.errors import StorageError

#: Levels of chunks above the entries.
LEVELS = 4
#: log2 of the number of entries (or chunks of the level below) per chunk, on average.
FANOUT_BITS = 6
FANOUT = 1 << FANOUT_BITS
#: Sums are modulo 2^256: 32 bytes, little-endian.
SUM_BYTES = 32
_MASK = (1 << 256) - 1
#: Where the meta record is (no level is 0).
META = b"\x00"
#: Format of the records; another value in the meta record means a rebuild.
FORMAT = 1
#: Entries added per rebuild transaction.
REBUILD_BATCH = 2000
#: Trees of earlier versions (a Merkle trie and its queues), dropped when the sums are first built.
LEGACY_TREES = ("merkle", "merkle_todo", "merkle_dirty")


def partition_start(level: int, partition: int) -> bytes:
    """The record key of the chunk that starts a partition at ``level``."""
    return bytes([level, partition])


def pack_sum(total: int) -> bytes:
    """A sum (or an element) as stored and sent: 32 bytes, little-endian."""
    return total.to_bytes(SUM_BYTES, "little")


def unpack_sum(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


class Hasher:
    """Elements and ranks under one key (empty: unkeyed, for tests of this module)."""

    def __init__(self, key: bytes = b"", fanout_bits: int = FANOUT_BITS) -> None:
        self.key = key[:64]
        self.fanout_bits = fanout_bits  # smaller in tests, to make many chunks of few entries
        self.fingerprint = hashlib.blake2b(b"garagekv range sums" + self.key, digest_size=8).digest()

    def element(self, tree_key: bytes, raw: bytes) -> int:
        h = hashlib.blake2b(len(tree_key).to_bytes(2, "big"), digest_size=32, key=self.key)
        h.update(tree_key)
        h.update(raw)
        return int.from_bytes(h.digest(), "little")

    def rank(self, tree_key: bytes) -> int:
        v = int.from_bytes(hashlib.blake2b(tree_key, digest_size=8, key=self.key, person=b"rank").digest(), "big")
        return min(LEVELS, (64 - v.bit_length()) // self.fanout_bits)


class RangeSums:
    """The range sums of one table, in ``<table>:sums`` (see the module docstring)."""

    def __init__(
        self, db: Database, table_name: str, data_tree: Any, canonical: Callable[[bytes, bytes], bytes]
    ) -> None:
        self.db = db
        self.table_name = table_name
        self.tree = db.tree(f"{table_name}:sums")
        self.data_tree = data_tree
        self.canonical = canonical
        self.hasher = Hasher()
        #: Sums describe the entries with keys <= progress; None: all of them (no rebuild running).
        self.progress: bytes | None = None
        self.rebuilt = 0  # entries added by the running rebuild, for progress reports

    # ---- set-up and rebuild ------------------------------------------------------------------

    def open(self, key: bytes) -> bool:
        """Use ``key``; returns whether the sums must be rebuilt (``rebuild_step_in`` until False).

        Called once at start-up, before any write: a stored format or key other than ours (or
        none: sums never built, or built by an older version) starts a rebuild from scratch.
        """
        self.hasher = Hasher(key)
        with self.db.read() as txn:
            raw = txn.get(META, db=self.tree)
        meta = None if raw is None else codec.decode(raw)
        if isinstance(meta, list) and len(meta) == 3 and meta[0] == FORMAT and meta[1] == self.hasher.fingerprint:
            self.progress = meta[2] if isinstance(meta[2], bytes) else None
            return self.progress is not None
        env = self.db.environment
        with env.begin(write=True) as txn:
            txn.drop(self.tree, delete=False)
            empty = txn.stat(self.data_tree)["entries"] == 0
            self.progress = None if empty else b""  # b"": no entry is in the sums yet
            txn.put(META, self._meta(self.progress), db=self.tree)
            for legacy in LEGACY_TREES:  # the Merkle tries of earlier versions
                try:
                    txn.drop(env.open_db(f"{self.table_name}:{legacy}".encode(), txn=txn, create=False))
                except lmdb.NotFoundError:
                    pass
        return self.progress is not None

    def start_rebuild_in(self, tx: WriteTxn) -> None:
        """Forget every sum and rebuild them (``repair merkle``)."""
        tx.txn.drop(self.tree, delete=False)
        self.progress = b""
        self.rebuilt = 0
        tx.put(self.tree, META, self._meta(b""))

    def _meta(self, progress: bytes | None) -> bytes:
        return codec.encode_lists([FORMAT, self.hasher.fingerprint, progress])

    @property
    def rebuilding(self) -> bool:
        return self.progress is not None

    def rebuild_step_in(self, tx: WriteTxn, limit: int = REBUILD_BATCH) -> bool:
        """Add the next ``limit`` entries after ``progress``; returns whether some are left."""
        if self.progress is None:
            return False
        cur = tx.cursor(self.data_tree)
        found = cur.set_range(self.progress)
        if found and cur.key() == self.progress:
            found = cur.next()
        # The open chunk of each level: (record key, sum), read back from the last batch.
        open_: dict[int, tuple[bytes, int]] = {}
        added = 0
        last = self.progress
        while found and added < limit:
            k = cur.key()
            e = self.hasher.element(k, self.canonical(k, cur.value()))
            r = self.hasher.rank(k)
            for level in range(1, LEVELS + 1):
                held = open_.get(level)
                if held is None or held[0][1:2] != k[:1]:  # first of the batch, or of a partition
                    if held is not None:
                        tx.put(self.tree, held[0], pack_sum(held[1]))
                    held = self._holder(tx.cursor(self.tree), level, k)
                if level <= r:
                    tx.put(self.tree, held[0], pack_sum(held[1]))
                    held = (bytes([level]) + k, 0)
                open_[level] = (held[0], (held[1] + e) & _MASK)
            added += 1
            last = k
            found = cur.next()
        for rec, s in open_.values():
            tx.put(self.tree, rec, pack_sum(s))
        self.rebuilt += added
        self.progress = last if found else None
        tx.put(self.tree, META, self._meta(self.progress))
        return self.progress is not None

    # ---- writes ------------------------------------------------------------------------------

    def change_in(self, tx: WriteTxn, tree_key: bytes, old_raw: bytes | None, new_raw: bytes | None) -> None:
        """Account for the entry at ``tree_key`` going from ``old_raw`` to ``new_raw`` (None:
        absent), in the transaction that writes it (after the write: a split reads the entries)."""
        progress = self.progress
        if progress is not None and tree_key > progress:
            return  # the rebuild adds it when it gets there
        h = self.hasher
        old = None if old_raw is None else h.element(tree_key, old_raw)
        new = None if new_raw is None else h.element(tree_key, new_raw)
        if old == new:
            return
        r = h.rank(tree_key) if old is None or new is None else 0
        cur = tx.cursor(self.tree)
        tree = self.tree
        for level in range(1, LEVELS + 1):
            own = bytes([level]) + tree_key
            part = None  # the sum of the chunk tree_key starts, when it becomes a boundary here
            if level > r:
                delta = (new or 0) - (old or 0)
            elif old is not None:  # deleted, and it started a chunk: merge it into the previous one
                raw_own = tx.get(tree, own)
                if raw_own is None:
                    raise StorageError(f"{self.table_name}: range sum of {tree_key.hex()} at level {level} is missing")
                tx.delete(tree, own)
                delta = unpack_sum(raw_own) - old
            else:  # new: it takes the rest of its holder's chunk (itself included)
                assert new is not None
                part = self._sum_from(tx, level, tree_key)
                delta = new - part
            rec, held = self._holder(cur, level, tree_key)
            tx.put(tree, rec, pack_sum((held + delta) & _MASK))
            if part is not None:
                tx.put(tree, own, pack_sum(part))

    def _holder(self, cur: Any, level: int, tree_key: bytes) -> tuple[bytes, int]:
        """The record of the chunk of ``level`` holding ``tree_key``, and its sum (0 for the
        partition's start record when it is not stored yet)."""
        target = bytes([level]) + tree_key
        start = partition_start(level, tree_key[0])
        if cur.set_range(target):
            if cur.key() == target:
                return target, unpack_sum(cur.value())
            found = cur.prev()
        else:
            found = cur.last()
        if found:
            k = cur.key()
            if k[:2] == start:
                return k, unpack_sum(cur.value())
        return start, 0

    def _sum_from(self, tx: WriteTxn, level: int, tree_key: bytes) -> int:
        """The sum of the entries from ``tree_key`` to the next boundary of ``level`` (excluded),
        added up from the chunks of the level below (level 1: from the entries)."""
        cur = tx.cursor(self.tree)
        end: bytes | None = None
        if cur.set_range(bytes([level]) + tree_key):
            k = cur.key()
            if k[:2] == partition_start(level, tree_key[0]):
                end = k[1:]
        if self.progress is not None and (end is None or end > self.progress):
            end = self.progress + b"\x00"  # nothing past the rebuild's progress is counted yet
        if level == 1:
            return self._entries_sum(tx.cursor(self.data_tree), tree_key, end)
        total = 0
        lower = bytes([level - 1])
        found = cur.set_range(lower + tree_key)
        while found:
            k = cur.key()
            if k[:2] != lower + tree_key[:1] or (end is not None and k[1:] >= end):
                break
            total += unpack_sum(cur.value())
            found = cur.next()
        return total & _MASK

    def _entries(self, cur: Any, partition: bytes, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        """(tree key, element) of the entries in ``[start, end)`` of ``partition`` (end None: to its end)."""
        found = cur.set_range(start)
        while found:
            k = cur.key()
            if k[:1] != partition or (end is not None and k >= end):
                return
            yield k, self.hasher.element(k, self.canonical(k, cur.value()))
            found = cur.next()

    def _entries_sum(self, cur: Any, start: bytes, end: bytes | None) -> int:
        """The sum of the entries in ``[start, end)`` of ``start``'s partition (end None: to its end)."""
        return sum(e for _, e in self._entries(cur, start[:1], start, end)) & _MASK

    # ---- reads (anti-entropy) ------------------------------------------------------------------

    def chunks(
        self, txn: Any, partition: int, level: int, start: bytes | None, end: bytes | None
    ) -> list[tuple[bytes, int]]:
        """This node's chunks of ``level`` starting in ``[start, end)`` of ``partition`` (start
        None: the partition's start), as (start key, sum); the partition's start is ``b""``."""
        cur = txn.cursor(db=self.tree)
        first = partition_start(level, partition) if start is None else bytes([level]) + start
        out: list[tuple[bytes, int]] = []
        found = cur.set_range(first)
        head = partition_start(level, partition)
        while found:
            k = cur.key()
            if k[:2] != head or (end is not None and k[1:] >= end):
                break
            out.append((b"" if len(k) == 2 else k[1:], unpack_sum(cur.value())))
            found = cur.next()
        return out

    def keys(
        self, txn: Any, partition: int, start: bytes | None, end: bytes | None, limit: int
    ) -> list[tuple[bytes, int]]:
        """This node's entries in ``[start, end)`` of ``partition`` (at most ``limit``), as
        (tree key, element)."""
        p = bytes([partition])
        return list(itertools.islice(self._entries(txn.cursor(db=self.data_tree), p, start or p, end), limit))

    def sums_of(self, txn: Any, partition: int, level: int, bounds: Sequence[bytes], end: bytes | None) -> list[int]:
        """The sum of this node's entries over each range ``[bounds[i], bounds[i+1])`` (the last
        to ``end``; a bound ``b""`` is the partition's start, an ``end`` None its end),
        ranges another node chose at ``level``: a chunk of ours where we have the same
        boundaries, else the difference of two prefix sums."""
        cur = txn.cursor(db=self.tree)
        head = partition_start(level, partition)
        edges = [*bounds, end]
        out: list[int] = []
        for i, lo in enumerate(bounds):
            hi = edges[i + 1]
            rec = head if not lo else bytes([level]) + lo
            if cur.set_key(rec):
                s = unpack_sum(cur.value())
                nxt = cur.next()
                nk = cur.key() if nxt else b""
                same_end = (hi is None and (not nxt or nk[:2] != head)) or (
                    hi is not None and nxt and nk[:2] == head and nk[1:] == hi
                )
                if same_end:
                    out.append(s)
                    continue
            below = self.prefix_sum(txn, partition, lo) if lo else 0
            out.append((self.prefix_sum(txn, partition, hi) - below) & _MASK)
        return out

    def prefix_sum(self, txn: Any, partition: int, x: bytes | None) -> int:
        """The sum of this node's entries of ``partition`` with keys below ``x`` (None: all)."""
        cur = txn.cursor(db=self.tree)
        total = 0
        lo: bytes | None = None  # the start of the chunk holding x at the level above
        for level in range(LEVELS, 0, -1):
            head = partition_start(level, partition)
            found = cur.set_range(head if lo is None else bytes([level]) + lo)
            last: bytes | None = None
            last_sum = 0
            while found:
                k = cur.key()
                if k[:2] != head or (x is not None and k[1:] >= x):
                    break
                total += last_sum
                last, last_sum = k, unpack_sum(cur.value())
                found = cur.next()
            if last is None:
                return total & _MASK  # nothing stored below x in this partition
            if x is None:
                return (total + last_sum) & _MASK
            lo = last[1:] if len(last) > 2 else None
        return (total + self._entries_sum(txn.cursor(db=self.data_tree), lo or bytes([partition]), x)) & _MASK

    def partition_sum(self, txn: Any, partition: int) -> int:
        return self.prefix_sum(txn, partition, None)

    def elements_of(self, txn: Any, keys: list[bytes]) -> list[int | None]:
        """The element of each entry (None: absent here)."""
        out: list[int | None] = []
        for k in keys:
            raw = txn.get(k, db=self.data_tree)
            out.append(None if raw is None else self.hasher.element(k, self.canonical(k, raw)))
        return out

    def left_to_rebuild(self) -> int:
        """Entries a running rebuild has not added yet (an estimate: entries minus those added)."""
        if self.progress is None:
            return 0
        with self.db.read() as txn:
            return max(1, int(txn.stat(self.data_tree)["entries"]) - self.rebuilt)
