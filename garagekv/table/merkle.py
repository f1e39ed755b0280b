"""Per-partition Merkle tries over a table's local entries, kept up to date from the to-do queue.

Anti-entropy compares these tries between replicas and only walks down where hashes differ, so
two replicas holding the same entries exchange one hash per partition.

Shape: one trie per partition (the first byte of the tree key). An entry sits at the path given
by ``kh = blake2sum(tree_key)``; a node at ``prefix`` covers the entries whose ``kh`` starts
with it and is

- ``Empty`` when it covers none (never stored: an absent key reads as Empty),
- ``Leaf(tree_key, value_hash)`` when it covers exactly one,
- ``Intermediate([(byte, child hash), ...])`` (sorted by byte) when it covers two or more.

Insertion splits a leaf as deep as the two keys share a prefix; deletion pulls a lone leaf back
up. The shape therefore depends only on the set of entries, never on the order of updates, and so
does the root hash: equal data means equal roots on every replica.

A node's hash is ``blake2sum(msgpack(node))`` with the node in its wire form (``to_wire``):
``[2, tree key, value hash]`` for a leaf, ``[1, [[byte, child hash], ...]]`` for an intermediate.
Anti-entropy compares these hashes, so they never depend on how nodes are stored.

Storage, in ``<table>:merkle`` at ``partition byte || prefix``, a format byte first:

- format 1, the wire form as msgpack: every intermediate node, and the leaves stored before
  format 4 (with their value hash);
- format 4, a leaf below a partition's root: the tree key and nothing else. Its hash is the
  parent's child hash, which stands in for its value hash (the value hash is the entry's own
  hash, read back from the data when a caller asks for the leaf, ``get_node``): a leaf took
  82 bytes in format 1 (the tree key, its value hash, framing), 41 now, and its entry is
  rewritten only when its key changes, not its value (docs/storage.md, "Bytes per item");
- format 3, a leaf at a partition's root (it has no parent) or just below it (its parent is
  written lazily, see below): msgpack ``[tree key, leaf hash]``;
- format 2, read only: an intermediate node holding its leaf children's tree keys (``decode_inner``),
  as a version between formats 1 and 4 stored them. Nodes of 1 to 4 KiB (the level that
  holds most leaves, from about a million items per node) fill LMDB pages badly and are costly to
  rewrite, which format 4 avoids.

A leaf of format 1 and a node of format 2 (with its leaves) are rewritten in the current formats
when the updater next rewrites them (``repair merkle`` rewrites them all).

Roots are written lazily. A partition's root has up to 256 children (9.5 KiB at the top of a big
trie), and the entries of a batch fall in as many partitions as they are entries, so rewriting
each root a batch touched cost about one root per entry. A batch that only adds or changes
entries leaves a stored intermediate root alone: it writes the root's children, records each
changed child's position in ``<table>:merkle_dirty`` (``partition byte ‖ child byte``), and the
root's stored child hashes for those positions are stale until the root is settled. Settling
(the worker, ``SETTLE_ROOTS`` roots at a time, at most every ``SETTLE_INTERVAL`` under load and
all of them when the queue is empty; a batch that removes entries from the partition, before it
starts) hashes each marked child as stored, writes the root and drops its marks. Readers
(``get_node``, ``root_hash``) apply the marks to the root they read, so what anti-entropy sees is
always current. A leaf whose parent is a root is stored with its hash (format 3, like a leaf at a
root), since the parent's copy of the hash may be stale.

``TableData`` writes ``merkle_todo[tree_key] = blake2sum(new bytes)`` (empty bytes: deleted) in the
same transaction as each change; ``MerkleUpdater`` drains it in batches, one writer transaction
per batch, and removes a to-do entry only if it still holds the value it applied. Within a batch
a node is read, hashed and written at most once, however many of the batch's entries are below it:
the top of a trie is above every entry, so per-entry hashing would re-pack it for each of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.table.data import TableData
from garagekv.table.merkle_children import INTERMEDIATE_HEAD, RawChildren
from garagekv.table.merkle_children import MIN_BYTES as RAW_MIN_BYTES
from garagekv.util import codec
from garagekv.util.background import Notify, WorkerState
from garagekv.util.codec import blake2sum
from garagekv.util.errors import StorageError

log = logging.getLogger(__name__)

#: First byte of every stored node, so the format can migrate. Format 1 (the wire form) for
#: intermediate nodes, and leaves of earlier versions; formats 3 and 4 for leaves.
NODE_FORMAT = 1
#: Read only: an intermediate node with its leaf children's tree keys in it (``decode_inner``).
NODE_FORMAT_INLINE = 2
#: A leaf at a partition's root or one of its children: msgpack ``[tree key, leaf hash]``.
NODE_FORMAT_ROOT_LEAF = 3
#: A leaf below a partition's root: its tree key; its hash is in its parent.
NODE_FORMAT_LEAF = 4
#: To-do entries applied per ``work()`` step (one writer transaction each).
BATCH = 100
#: Seconds of trie work after which a step stops early when writes wait for its group commit
#: (the rest stays queued for the next step): a step's cost per entry grows with the trie (a
#: node of up to 4 KiB rewritten per entry at 10 million entries), and every write committed
#: with it waits for all of it. Without writes waiting, a step does its whole batch.
STEP_BUDGET = 0.004
#: Entries re-queued per transaction by ``rebuild``.
REBUILD_BATCH = 1000
#: The worker also looks at its queue this often when nobody wakes it.
IDLE_WAKEUP = 60.0
#: Once woken, wait this long so that a burst of writes makes one batch: the top of a trie is
#: hashed once per batch, however many entries below it changed.
LINGER = 0.05
#: Roots settled per writer transaction: each hashes its marked children as stored (up to 256
#: nodes of up to 4 KiB at 10 million entries, about 2 ms), which the group commit waits for.
SETTLE_ROOTS = 4
#: Under load (a non-empty queue), roots are settled at most this often: each root is then
#: rewritten once per ``256 / SETTLE_ROOTS * SETTLE_INTERVAL`` seconds rather than once per batch.
SETTLE_INTERVAL = 1.0
#: The start of a stored intermediate node in format 1: the format byte, then msgpack ``[1, ...``.
_INTERMEDIATE_PREFIX = bytes([NODE_FORMAT]) + INTERMEDIATE_HEAD

_EMPTY, _INTERMEDIATE, _LEAF = 0, 1, 2


@dataclass(frozen=True)
class MerkleNode:
    """One trie node; build them with ``EMPTY``, ``MerkleNode.leaf`` and ``MerkleNode.intermediate``."""

    kind: int
    children: tuple[tuple[int, bytes], ...] = ()  # Intermediate: sorted (byte, child hash)
    key: bytes = b""  # Leaf: the entry's tree key
    # Leaf: blake2sum of the entry's bytes; empty when only the leaf's hash is known (read from
    # storage and the entry changed since, see MerkleUpdater.get_node).
    value_hash: bytes = b""
    # Leaf: the node's hash, computed once when it is built, or read from storage (formats 3, 4).
    leaf_hash: bytes = field(default=b"", repr=False)
    # Intermediate read in format 2: its leaf children stored in it, (byte, tree key).
    inline_keys: tuple[tuple[int, bytes], ...] = field(default=(), compare=False, repr=False)

    @staticmethod
    def leaf(key: bytes, value_hash: bytes) -> MerkleNode:
        return MerkleNode(_LEAF, key=key, value_hash=value_hash, leaf_hash=blake2sum(_leaf_body(key, value_hash)))

    @staticmethod
    def stored_leaf(key: bytes, leaf_hash: bytes) -> MerkleNode:
        """A leaf known by its hash only (how formats 2 and 3 store leaves)."""
        return MerkleNode(_LEAF, key=key, leaf_hash=leaf_hash)

    @staticmethod
    def intermediate(children: dict[int, bytes]) -> MerkleNode:
        return MerkleNode(_INTERMEDIATE, children=tuple(sorted(children.items())))

    @property
    def is_empty(self) -> bool:
        return self.kind == _EMPTY

    @property
    def is_leaf(self) -> bool:
        return self.kind == _LEAF

    @property
    def is_intermediate(self) -> bool:
        return self.kind == _INTERMEDIATE

    def to_wire(self) -> list[Any]:
        if self.kind == _LEAF:
            return [_LEAF, self.key, self.value_hash]
        if self.kind == _INTERMEDIATE:
            return [_INTERMEDIATE, [[b, h] for b, h in self.children]]
        return [_EMPTY]

    @classmethod
    def from_wire(cls, w: Any) -> MerkleNode:
        try:
            kind = int(w[0])
            if kind == _LEAF:
                return cls.leaf(bytes(w[1]), bytes(w[2]))
            if kind == _INTERMEDIATE:
                return cls(_INTERMEDIATE, children=tuple(_children_from_wire(w[1]).items()))
            if kind == _EMPTY:
                return EMPTY
        except (TypeError, ValueError, IndexError) as e:
            raise StorageError(f"malformed Merkle node: {e!r}") from e
        raise StorageError(f"unknown Merkle node kind {kind}")

    def body(self) -> bytes:
        """Canonical msgpack of the node (only lists, ints and bytes: no map to sort)."""
        return codec.encode_lists(self.to_wire())

    def hash(self) -> bytes:
        if self.leaf_hash:
            return self.leaf_hash
        if self.kind == _LEAF:  # a leaf of format 4 decoded without its parent's hash
            raise StorageError("the hash of this Merkle leaf is in its parent")
        return blake2sum(self.body())

    def encode(self) -> bytes:
        """Format 1, the wire form (how nodes were stored before formats 2 and 3; still read)."""
        return bytes([NODE_FORMAT]) + self.body()

    @classmethod
    def decode(cls, raw: bytes, leaf_hash: bytes = b"") -> MerkleNode:
        """A stored node in any format. A leaf of format 4 has its hash in its parent: pass it
        as ``leaf_hash`` (without it the leaf has a key but no hash). A leaf of format 3 has
        no value hash; a node of format 2 lists its leaf children in ``inline_keys``."""
        if not raw or raw[0] not in (NODE_FORMAT, NODE_FORMAT_INLINE, NODE_FORMAT_ROOT_LEAF, NODE_FORMAT_LEAF):
            raise StorageError("unknown Merkle node format")
        if raw[0] == NODE_FORMAT_LEAF:
            return cls(_LEAF, key=bytes(raw[1:]), leaf_hash=leaf_hash)
        if raw[0] == NODE_FORMAT_INLINE:
            children, inline = decode_inner(raw)
            return cls(_INTERMEDIATE, children=tuple(children.items()), inline_keys=tuple(inline.items()))
        try:
            wire = codec.decode(raw[1:])
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise StorageError(f"malformed Merkle node: {e!r}") from e
        if raw[0] == NODE_FORMAT:
            return cls.from_wire(wire)
        try:
            key, h = wire
            if type(key) is not bytes or type(h) is not bytes:
                raise TypeError("a leaf's key and hash must be bytes")
        except (TypeError, ValueError) as e:
            raise StorageError(f"malformed Merkle node: {e!r}") from e
        return cls.stored_leaf(key, h)


def _leaf_body(key: bytes, value_hash: bytes) -> bytes:
    """``MerkleNode.body()`` of a leaf."""
    return codec.encode_lists([_LEAF, key, value_hash])


def decode_inner(raw: bytes) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """A format-2 node, ``2 ‖ be32(n) ‖ n bytes of msgpack [[byte, child hash], ...]`` then,
    if some children are leaves stored in it, msgpack ``[byte, tree key, ...]``:
    ``({byte: child hash}, {byte: tree key of a leaf child stored here})``."""
    try:
        n = int.from_bytes(raw[1:5], "big")
        if len(raw) < 5 + n:
            raise ValueError("truncated")
        view = memoryview(raw)
        children = _children_from_wire(msgpack.unpackb(view[5 : 5 + n]))
        inline: dict[int, bytes] = {}
        if len(raw) > 5 + n:
            flat = msgpack.unpackb(view[5 + n :])
            if type(flat) is not list or not flat or len(flat) % 2:
                raise ValueError("leaf children must be [byte, tree key, ...]")
            leaf_bytes = flat[0::2]
            inline = dict(zip(leaf_bytes, flat[1::2], strict=True))
            # The children's bytes are checked ints, so this checks the leaves' bytes too.
            if not inline.keys() <= children.keys() or leaf_bytes != sorted(inline):
                raise ValueError("leaf children out of order or not among the children")
            if not set(map(type, inline.values())) <= {bytes}:
                raise TypeError("a leaf child's tree key must be bytes")
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise StorageError(f"malformed Merkle node: {e!r}") from e
    return children, inline


def _children_from_wire(pairs: Any) -> dict[int, bytes]:
    """Validated ``[[byte, hash], ...]``.

    Checked with whole-list operations rather than a loop per child: decoding the nodes at the
    top of the tries (up to 256 children) is a large part of what a batch of updates costs.
    """
    children = dict(pairs)
    keys = list(children)
    if not set(map(type, keys)) <= {int} or not set(map(type, children.values())) <= {bytes}:
        raise TypeError("child bytes must be ints and hashes bytes")
    if len(keys) != len(pairs) or keys != sorted(keys) or (keys and not 0 <= keys[0] <= keys[-1] < 256):
        raise ValueError("children out of order")
    return children


EMPTY = MerkleNode(_EMPTY)
EMPTY_HASH = EMPTY.hash()


def _marked(cursor: Any, root_key: bytes) -> list[bytes]:
    """The marks of the root at ``root_key``: the keys of its children changed since it was written."""
    out: list[bytes] = []
    if cursor.set_range(root_key):
        for k in cursor.iternext(values=False):
            if k[:1] != root_key:
                break
            out.append(k)
    return out


def _stored_hash(raw: bytes) -> bytes:
    """The hash of a root's child from its stored bytes (what settling a root needs).

    A child of a root is an intermediate node (formats 1 and 2) or a leaf of format 3; a leaf of
    format 4 there predates lazy roots and is never marked (a change rewrites it in format 3).
    """
    if raw.startswith(_INTERMEDIATE_PREFIX):
        return blake2sum(raw[1:])  # the wire form: hashed as stored, no decoding
    node = MerkleNode.decode(raw)
    if node.is_leaf and not node.leaf_hash:
        raise StorageError("a root's marked child is a leaf without its hash")
    return node.hash()


def _apply_marks(children: Any, marked: list[bytes], read: Callable[[bytes], bytes | None]) -> None:
    """Set each marked child's hash in a root's ``children`` from the child as stored
    (``read``), or drop the child if nothing is stored there."""
    for k in marked:
        raw = read(k)
        if raw is None:
            children.pop(k[-1], None)
        else:
            children[k[-1]] = _stored_hash(raw)


def node_key(partition: int, prefix: bytes) -> bytes:
    """Where the node of ``partition`` at ``prefix`` is stored."""
    return bytes([partition]) + prefix


def partition_of(tree_key: bytes) -> int:
    """A tree key's trie: the first byte of its partition hash (0 for full-copy tables)."""
    return tree_key[0]


class MerkleUpdater:
    """The tries of one table, and the background worker that keeps them up to date."""

    def __init__(self, db: Database, writer: GroupCommitWriter, data: TableData[Any]) -> None:
        self.db = db
        self.writer = writer
        self.data = data
        self.table_name = data.schema.name
        self.tree = db.tree(f"{self.table_name}:merkle")  # opened now, never from a writer job
        self.marks = db.tree(f"{self.table_name}:merkle_dirty")  # roots' stale children
        self.todo = data.merkle_todo
        self._wake = Notify()
        self.done = 0
        self.rebuild_left = 0  # entries a running rebuild has not queued yet
        self._settled_at = 0.0
        self._settle_from = 0  # the partition byte where the next settle_in starts
        self._marks_left = True  # marks may survive a restart: look at once
        data.on_merkle_todo = self.notify

    def notify(self) -> None:
        self._wake.notify()

    # ---- reads -------------------------------------------------------------------------------

    def get_node(self, partition: int, prefix: bytes = b"") -> MerkleNode:
        """The node of ``partition`` at ``prefix``, wherever it is stored.

        A leaf gets its value hash back from the data (the hash of the entry's bytes) when that
        matches the leaf's hash; while the entry's change is still in the to-do queue it does
        not, and the leaf comes without one (a peer asking for the node only looks at the
        children of intermediate nodes).
        """
        with self.db.read() as txn:
            node = self._get(txn, node_key(partition, prefix))
            if node.is_leaf and not node.value_hash:
                raw = self.data.get_raw_at(txn, node.key)
                if raw is not None:
                    full = MerkleNode.leaf(node.key, blake2sum(raw))
                    if full.leaf_hash == node.leaf_hash:
                        node = full
        return node

    def _get(self, txn: Any, key: bytes) -> MerkleNode:
        raw = txn.get(key, db=self.tree)
        if raw is None:
            if len(key) > 1:  # a leaf held by a format-2 parent
                parent_raw = txn.get(key[:-1], db=self.tree)
                if parent_raw is not None and parent_raw[0] == NODE_FORMAT_INLINE:
                    children, inline = decode_inner(parent_raw)
                    if key[-1] in inline:
                        return MerkleNode.stored_leaf(inline[key[-1]], children[key[-1]])
            return EMPTY
        if len(key) == 1 and raw.startswith(_INTERMEDIATE_PREFIX):
            return self._current_root(txn, key, raw)
        if raw[0] != NODE_FORMAT_LEAF:
            return MerkleNode.decode(raw)
        # A leaf below a root: its hash is its parent's child hash.
        parent_raw = txn.get(key[:-1], db=self.tree) if len(key) > 1 else None
        parent = None if parent_raw is None else MerkleNode.decode(parent_raw)
        h = None if parent is None else dict(parent.children).get(key[-1])
        if h is None:
            raise StorageError(f"{self.table_name}: Merkle leaf {key.hex()} has no parent holding its hash")
        return MerkleNode.decode(raw, h)

    def _current_root(self, txn: Any, key: bytes, raw: bytes) -> MerkleNode:
        """The root stored at ``key`` with its marked children's hashes brought up to date."""
        marked = _marked(txn.cursor(db=self.marks), key)
        if not marked:
            return MerkleNode.decode(raw)
        children = dict(MerkleNode.decode(raw).children)
        _apply_marks(children, marked, lambda k: txn.get(k, db=self.tree))
        return MerkleNode.intermediate(children)

    def root_hash(self, partition: int) -> bytes:
        with self.db.read() as txn:
            return self._get(txn, node_key(partition, b"")).hash()

    def todo_len(self) -> int:
        with self.db.read() as txn:
            return txn.stat(self.todo)["entries"]

    # ---- trie updates (inside a writer transaction) -------------------------------------------

    def update_in(self, tx: WriteTxn, tree_key: bytes, value_hash: bytes | None) -> None:
        """Set (or with ``None`` remove) the leaf of ``tree_key``: a batch of one."""
        batch = _TrieBatch(tx, self.tree, self.table_name, self.marks)
        batch.update(tree_key, value_hash)
        batch.flush()

    def settle_in(self, tx: WriteTxn, limit: int = SETTLE_ROOTS) -> bool:
        """Write up to ``limit`` roots that have marks, from where the last call stopped (so that
        under load every root gets its turn), fewer once ``STEP_BUDGET`` is spent while writes
        wait; returns whether some are left."""
        started = time.perf_counter()
        cur = tx.cursor(self.marks)
        roots: list[bytes] = []
        found = cur.set_range(bytes([self._settle_from])) or cur.first()
        while found and len(roots) < limit:
            root = cur.key()[:1]
            if root in roots:
                break  # wrapped around
            roots.append(root)
            found = (root[0] < 255 and cur.set_range(bytes([root[0] + 1]))) or cur.first()
        if not roots:
            return False
        batch = _TrieBatch(tx, self.tree, self.table_name, self.marks)
        for root in roots:
            batch.settle_root(root)
            self._settle_from = (root[0] + 1) % 256
            if self._budget_spent(started):
                break
        batch.flush()
        return cur.first()

    def _budget_spent(self, started: float) -> bool:
        """Whether a step begun at ``started`` stops here: ``STEP_BUDGET`` is spent and other
        writer jobs wait for its commit."""
        return time.perf_counter() - started > STEP_BUDGET and self.writer.others_waiting()

    # ---- the to-do queue ---------------------------------------------------------------------

    def _peek(self, limit: int = BATCH) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self.db.read() as txn:
            for k, v in txn.cursor(db=self.todo):
                out.append((k, v))
                if len(out) >= limit:
                    break
        return out

    def apply_batch_in(self, tx: WriteTxn, batch: list[tuple[bytes, bytes]]) -> int:
        """Apply to-do entries read earlier; each is applied and removed only if still unchanged.

        An entry that changed since it was read (the item was written again) stays queued with
        its new value, for the next batch, and so do the entries after ``STEP_BUDGET`` ran out
        while writes wait. Returns how many entries were applied.
        """
        n = 0
        started = time.perf_counter()
        removing = {partition_of(k) for k, value_hash in batch if not value_hash}
        trie = _TrieBatch(tx, self.tree, self.table_name, self.marks, lazy_except=removing)
        for tree_key, value_hash in batch:
            if n and self._budget_spent(started):
                break  # the rest stays queued
            if tx.get(self.todo, tree_key) != value_hash:
                continue
            trie.update(tree_key, value_hash or None)
            tx.delete(self.todo, tree_key)
            n += 1
        trie.flush()
        if trie.marked:
            self._marks_left = True
        return n

    async def process_batch(self) -> int:
        """Apply up to ``BATCH`` to-do entries in one transaction; returns how many were seen."""
        batch = self._peek()
        if not batch:
            return 0
        applied = await self.writer.submit(lambda tx: self.apply_batch_in(tx, batch))
        self.done += applied
        return len(batch)

    async def flush(self) -> None:
        """Drain the to-do queue and settle every root (tests, tools)."""
        while await self.process_batch():
            pass
        while await self.writer.submit(self.settle_in):
            pass

    async def rebuild(self) -> int:
        """``repair merkle``: drop every trie and queue every local entry again.

        Returns how many entries were queued. The worker rebuilds the tries in the background;
        meanwhile anti-entropy may push more than needed, which merges harmlessly.
        """

        def clear(tx: WriteTxn) -> int:
            tx.txn.drop(self.tree, delete=False)
            tx.txn.drop(self.marks, delete=False)
            return tx.txn.stat(self.data.store)["entries"]

        with self.db.read() as txn:  # visible in progress() at once, before the first commit
            self.rebuild_left = max(1, txn.stat(self.data.store)["entries"])
        self.rebuild_left = await self.writer.submit(clear)
        total = 0
        after: bytes | None = None
        while True:

            def requeue(tx: WriteTxn, after: bytes | None = after) -> tuple[bytes | None, int]:
                cur = tx.cursor(self.data.store)
                if not (cur.set_range(after) if after is not None else cur.first()):
                    return None, 0
                last, n = None, 0
                for k, v in cur:
                    if k == after:
                        continue
                    tx.put(self.todo, k, blake2sum(self.data.canonical(k, v)))
                    last, n = k, n + 1
                    if n >= REBUILD_BATCH:
                        break
                return last, n

            try:
                after, n = await self.writer.submit(requeue)
            except BaseException:
                self.rebuild_left = 0
                raise
            total += n
            self.rebuild_left = max(0, self.rebuild_left - n)
            self.notify()
            if after is None or n < REBUILD_BATCH:
                break
        self.rebuild_left = 0
        log.info("%s: Merkle trie rebuild queued %d entries", self.table_name, total)
        return total

    # ---- Worker ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self.table_name} Merkle"

    async def work(self) -> WorkerState:
        n = await self.process_batch()
        now = time.monotonic()
        if self._marks_left and (n == 0 or now - self._settled_at >= SETTLE_INTERVAL):
            # A few roots per interval under load; all of them, a step at a time, once idle.
            self._settled_at = now
            self._marks_left = await self.writer.submit(self.settle_in)
            if n == 0 and self._marks_left:
                return WorkerState.BUSY
        return WorkerState.BUSY if n >= BATCH else WorkerState.IDLE

    async def wait_for_work(self) -> None:
        # Marks left when the writes stopped: come back to settle them without a write's wake-up.
        await self._wake.wait(SETTLE_INTERVAL if self._marks_left else IDLE_WAKEUP)
        await asyncio.sleep(LINGER)

    def progress(self) -> dict[str, Any]:
        # A rebuild's entries not queued yet count as queued: the work is still ahead.
        return {"done": self.done, "queue": self.todo_len() + self.rebuild_left}


class _Pending:
    """A child hash not computed yet: the child changed in this batch and is hashed at ``flush``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING = _Pending()


class _LazyRoot:
    """A stored intermediate root that this batch leaves as it is (see the module docstring)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LAZY_ROOT"


LAZY_ROOT = _LazyRoot()


class _Inner:
    """An intermediate node owned by a batch.

    The top of a trie (up to 256 children) is touched by every update of a batch; keeping its
    children in a dict that the batch mutates in place, and sorting, packing and hashing it once at
    the end, is what makes a batch cheap. Children changed in the batch hold ``PENDING``.
    """

    __slots__ = ("children", "inline")

    def __init__(
        self, children: dict[int, bytes | _Pending] | RawChildren, inline: dict[int, bytes] | None = None
    ) -> None:
        # A node read from storage in the canonical shape keeps its children as stored bytes
        # (``RawChildren``: no decoding, and written back by splicing the changes in).
        self.children = children
        # Read in format 2: the leaf children it holds (byte -> tree key), which get entries of
        # their own (format 4) when it is written.
        self.inline = {} if inline is None else inline


class _TrieBatch:
    """Updates to the tries of one table inside one writer transaction, stored by ``flush``.

    State lives in this object rather than on the updater, so that two transactions (the writer
    thread and a ``run_sync`` caller) never share it.
    """

    __slots__ = ("tx", "tree", "table_name", "marks", "lazy_except", "marked", "nodes", "dirty", "stored")

    def __init__(
        self, tx: WriteTxn, tree: Any, table_name: str, marks: Any, lazy_except: set[int] | None = None
    ) -> None:
        self.tx = tx
        self.tree = tree
        self.table_name = table_name
        self.marks = marks
        # None: every root is written. Otherwise a stored intermediate root is left as it is (its
        # changed children marked) but in these partitions: their updates remove entries, which
        # can change a root's shape (a lone leaf moves up), so their roots are settled and written.
        self.lazy_except = lazy_except
        self.marked = False  # whether flush left a root to be settled
        self.nodes: dict[bytes, MerkleNode | _Inner | _LazyRoot] = {}  # every node read or written so far
        self.dirty: set[bytes] = set()  # the keys of the nodes written
        self.stored: dict[bytes, bytes] = {}  # what is stored at the keys read (or written) so far

    def update(self, tree_key: bytes, value_hash: bytes | None) -> None:
        kh = blake2sum(tree_key)
        leaf = None if value_hash is None else MerkleNode.leaf(tree_key, value_hash)
        self._update(node_key(partition_of(tree_key), b""), tree_key, kh, 0, leaf)

    def flush(self) -> None:
        """Hash and store the written nodes (delete the Empty ones), deepest first.

        Deepest first because a node's hash depends on its children's: when a node is reached, every
        ``PENDING`` among its children has been replaced by the hash of that child's final state.
        A leaf deeper than a root's children stores its tree key only (format 4), so its entry is
        written only when that changes; its hash goes to its parent, written after it. A child
        of a lazy root is marked instead.
        """
        nodes, tx, tree, stored = self.nodes, self.tx, self.tree, self.stored
        for key in sorted(self.dirty, key=len, reverse=True):
            node = nodes[key]
            if isinstance(node, _LazyRoot):
                raise StorageError(f"{self.table_name}: lazy Merkle root {key.hex()} written")
            if isinstance(node, _Inner):
                children = node.children
                if isinstance(children, RawChildren):
                    pending = children.pending(PENDING)
                else:
                    pending = PENDING in children.values()
                if pending:  # a placeholder must never reach the disk
                    raise StorageError(f"{self.table_name}: Merkle child hash left pending at {key.hex()}")
                if isinstance(children, RawChildren):
                    body = children.pack()
                else:  # the bytes of MerkleNode.body(): msgpack packs tuples as arrays, like lists
                    body = msgpack.packb([_INTERMEDIATE, sorted(children.items())], use_bin_type=True)
                raw: bytes | None = bytes([NODE_FORMAT]) + body
                node_hash = blake2sum(body)
                for byte, tree_key in node.inline.items():  # format 2 before: its leaves move out
                    if len(key) == 1:  # a root's child keeps its hash (the root's may be stale)
                        child_hash = node.children[byte]
                        assert isinstance(child_hash, bytes)  # checked above: nothing is pending
                        leaf_raw = bytes([NODE_FORMAT_ROOT_LEAF]) + codec.encode_lists([tree_key, child_hash])
                    else:
                        leaf_raw = bytes([NODE_FORMAT_LEAF]) + tree_key
                    tx.put(tree, key + bytes([byte]), leaf_raw)
                    stored[key + bytes([byte])] = leaf_raw
                node.inline = {}
            elif node.is_empty:
                raw, node_hash = None, b""
            elif len(key) <= 2:  # a leaf at a partition's root or below it: stored with its hash
                node_hash = node.hash()
                raw = bytes([NODE_FORMAT_ROOT_LEAF]) + codec.encode_lists([node.key, node_hash])
            else:
                node_hash = node.hash()
                raw = bytes([NODE_FORMAT_LEAF]) + node.key
            old = stored.get(key)
            if raw is None:
                if old is not None:
                    tx.delete(tree, key)
                    del stored[key]
                continue
            if raw != old:
                tx.put(tree, key, raw)
                stored[key] = raw
            if len(key) > 1:  # below a partition's root (the key holds the partition byte)
                parent = nodes.get(key[:-1])
                if isinstance(parent, _LazyRoot):
                    if raw != old:
                        tx.put(self.marks, key, b"")
                        self.marked = True
                    continue
                if not isinstance(parent, _Inner) or parent.children.get(key[-1]) is not PENDING:
                    raise StorageError(f"{self.table_name}: Merkle node {key.hex()} written without its parent")
                parent.children[key[-1]] = node_hash
                parent.inline.pop(key[-1], None)  # it has an entry of its own now, if anything
        self.dirty = set()

    def _read(self, key: bytes) -> MerkleNode | _Inner | _LazyRoot:
        node = self.nodes.get(key)
        if node is not None:
            return node
        parent = self.nodes.get(key[:-1]) if len(key) > 1 else None
        if isinstance(parent, _Inner) and key[-1] not in parent.children:
            node = EMPTY  # the parent knows its children: nothing to read
        elif isinstance(parent, _Inner) and key[-1] in parent.inline:  # held by a format-2 parent
            held = parent.children[key[-1]]
            if not isinstance(held, bytes):  # a child changed in this batch is in self.nodes
                raise StorageError(f"{self.table_name}: Merkle leaf {key.hex()} without its hash")
            node = MerkleNode.stored_leaf(parent.inline[key[-1]], held)
        else:
            raw = self.tx.get(self.tree, key)
            if raw is None:
                node = EMPTY
            else:
                self.stored[key] = raw
                if (
                    len(key) == 1
                    and self.lazy_except is not None
                    and key[0] not in self.lazy_except
                    and raw.startswith(_INTERMEDIATE_PREFIX)
                ):
                    node = LAZY_ROOT
                elif raw[0] == NODE_FORMAT_LEAF:  # its hash is the parent's
                    h: bytes | _Pending | None = None
                    if isinstance(parent, _LazyRoot):  # stored before lazy roots: never marked
                        h = dict(MerkleNode.decode(self.stored[key[:-1]]).children).get(key[-1])
                    elif isinstance(parent, _Inner):
                        h = parent.children.get(key[-1])
                    if not isinstance(h, bytes):  # a child changed in this batch is in self.nodes
                        raise StorageError(f"{self.table_name}: Merkle leaf {key.hex()} without its hash")
                    node = MerkleNode.decode(raw, h)
                elif raw[0] == NODE_FORMAT_INLINE:
                    children, inline = decode_inner(raw)
                    node = _Inner(dict(children), inline)
                else:
                    node = _stored_for_batch(raw)
                if len(key) == 1 and isinstance(node, _Inner):
                    self._settle(key, node)
        self.nodes[key] = node
        return node

    def settle_root(self, key: bytes) -> None:
        """Read the root at ``key`` with its marks applied (``flush`` then writes it)."""
        self._read(key)

    def _settle(self, key: bytes, root: _Inner) -> None:
        """Bring a root read from storage up to date with its marks, which go: the root is
        written by ``flush``."""
        marked = _marked(self.tx.cursor(self.marks), key)
        _apply_marks(root.children, marked, lambda k: self.tx.get(self.tree, k))
        for k in marked:
            self.tx.delete(self.marks, k)
        if marked:
            self.dirty.add(key)

    def _write(self, key: bytes, node: MerkleNode | _Inner) -> _Pending | None:
        """Record ``node`` at ``key``; returns what its parent holds for it (None: no child)."""
        self.nodes[key] = node
        self.dirty.add(key)
        return None if isinstance(node, MerkleNode) and node.is_empty else PENDING

    def _update(
        self, key: bytes, tree_key: bytes, kh: bytes, depth: int, leaf: MerkleNode | None
    ) -> _Pending | None | _Unchanged:
        """Put ``leaf`` (None: remove ``tree_key``'s leaf) below the node at ``key`` (``depth``
        bytes of ``kh`` deep).

        Returns ``UNCHANGED``, ``PENDING`` (changed; hashed at ``flush``) or None (became Empty).
        """
        node = self._read(key)
        if isinstance(node, _Inner):
            return self._update_inner(key, node, tree_key, kh, depth, leaf)
        if isinstance(node, _LazyRoot):
            # The child is written and marked by flush; the root stays as stored.
            if self._update(key + kh[:1], tree_key, kh, 1, leaf) is None:
                raise StorageError(f"{self.table_name}: Merkle child removed below a lazy root {key.hex()}")
            return UNCHANGED

        if node.is_empty:
            if leaf is None:
                return UNCHANGED
            return self._write(key, leaf)

        # Leaf
        if node.key == tree_key:
            if leaf is not None and node.hash() == leaf.hash():
                return UNCHANGED
            return self._write(key, EMPTY if leaf is None else leaf)
        if leaf is None:
            return UNCHANGED  # deleting a key that is not here
        # Two keys under one prefix: push the existing leaf one level down, then insert ours next
        # to it (recursively splitting again while they share the next byte).
        if depth >= len(kh):
            raise StorageError("Merkle key hash collision")
        other_kh = blake2sum(node.key)
        children: dict[int, bytes | _Pending] = {}
        for k, h, new in ((node.key, other_kh, node), (tree_key, kh, leaf)):
            sub = self._update(key + h[depth : depth + 1], k, h, depth + 1, new)
            if sub is not PENDING:
                raise StorageError(f"{self.table_name}: stray Merkle node below leaf {key.hex()}")
            children[h[depth]] = PENDING
        return self._write(key, _Inner(children))

    def _update_inner(
        self, key: bytes, node: _Inner, tree_key: bytes, kh: bytes, depth: int, leaf: MerkleNode | None
    ) -> _Pending | None | _Unchanged:
        if depth >= len(kh):
            raise StorageError("Merkle trie deeper than the key hash")
        byte = kh[depth]
        sub = self._update(key + bytes([byte]), tree_key, kh, depth + 1, leaf)
        if sub is UNCHANGED:
            return UNCHANGED
        children = node.children
        if sub is None:
            children.pop(byte, None)
            node.inline.pop(byte, None)
        else:
            children[byte] = PENDING
        if not children:
            log.warning("%s: Merkle intermediate node left without children", self.table_name)
            return self._write(key, EMPTY)
        if len(children) == 1:
            # A lone leaf below moves up here; a lone intermediate stays (it covers 2+ entries).
            (only,) = children
            child_key = key + bytes([only])
            child = self._read(child_key)
            if isinstance(child, MerkleNode):
                if child.is_leaf:
                    self._write(child_key, EMPTY)
                    return self._write(key, child)
                log.warning("%s: Merkle intermediate node pointing to an empty child", self.table_name)
                return self._write(key, EMPTY)
        return self._write(key, node)


def _stored_for_batch(raw: bytes) -> MerkleNode | _Inner:
    """A stored node of format 1 or 3 as a batch holds it.

    An intermediate node goes straight into an ``_Inner``: its children are checked and made a
    dict once, with no ``MerkleNode`` (and its tuple of children) in between. At the top of a
    large trie (hundreds of children) this decoding is a good part of what a batch costs.
    """
    if len(raw) > RAW_MIN_BYTES and raw.startswith(_INTERMEDIATE_PREFIX):
        raw_children = RawChildren.parse(raw[1:])
        if raw_children is not None:
            return _Inner(raw_children)
    if raw[0] == NODE_FORMAT:
        try:
            wire = codec.decode(raw[1:])
            if type(wire) is list and len(wire) == 2 and wire[0] == _INTERMEDIATE:
                # The batch owns this fresh dict and will put PENDING into it.
                return _Inner(cast(dict[int, bytes | _Pending], _children_from_wire(wire[1])))
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise StorageError(f"malformed Merkle node: {e!r}") from e
    node = MerkleNode.decode(raw)
    return _Inner(dict(node.children)) if node.is_intermediate else node


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
