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

Nodes are stored in ``<table>:merkle`` at ``partition byte || prefix``, as a format byte followed
by canonical msgpack. A node's hash is ``blake2sum(msgpack(node))`` (the format byte excluded).

``TableData`` writes ``merkle_todo[tree_key] = blake2sum(new bytes)`` (empty bytes: deleted) in the
same transaction as each change; ``MerkleUpdater`` drains it in batches, one writer transaction
per batch, and removes a to-do entry only if it still holds the value it applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgpack

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.table.data import TableData
from garagekv.util import codec
from garagekv.util.background import Notify, WorkerState
from garagekv.util.codec import blake2sum
from garagekv.util.errors import StorageError

log = logging.getLogger(__name__)

#: First byte of every stored node, so the format can migrate.
NODE_FORMAT = 1
#: To-do entries applied per ``work()`` step (one writer transaction each).
BATCH = 100
#: Entries re-queued per transaction by ``rebuild``.
REBUILD_BATCH = 1000
#: The worker also looks at its queue this often when nobody wakes it.
IDLE_WAKEUP = 60.0

_EMPTY, _INTERMEDIATE, _LEAF = 0, 1, 2


@dataclass(frozen=True)
class MerkleNode:
    """One trie node; build them with ``EMPTY``, ``MerkleNode.leaf`` and ``MerkleNode.intermediate``."""

    kind: int
    children: tuple[tuple[int, bytes], ...] = ()  # Intermediate: sorted (byte, child hash)
    key: bytes = b""  # Leaf: the entry's tree key
    value_hash: bytes = b""  # Leaf: blake2sum of the entry's bytes

    @staticmethod
    def leaf(key: bytes, value_hash: bytes) -> MerkleNode:
        return MerkleNode(_LEAF, key=key, value_hash=value_hash)

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
                children = tuple((int(b), bytes(h)) for b, h in w[1])
                prev = -1
                for b, _ in children:
                    if not prev < b < 256:
                        raise ValueError("children out of order")
                    prev = b
                return cls(_INTERMEDIATE, children=children)
            if kind == _EMPTY:
                return EMPTY
        except (TypeError, ValueError, IndexError) as e:
            raise StorageError(f"malformed Merkle node: {e!r}") from e
        raise StorageError(f"unknown Merkle node kind {kind}")

    def body(self) -> bytes:
        """Canonical msgpack of the node (only lists, ints and bytes: no map to sort)."""
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    def hash(self) -> bytes:
        return blake2sum(self.body())

    def encode(self) -> bytes:
        return bytes([NODE_FORMAT]) + self.body()

    @classmethod
    def decode(cls, raw: bytes) -> MerkleNode:
        if not raw or raw[0] != NODE_FORMAT:
            raise StorageError("unknown Merkle node format")
        try:
            wire = codec.decode(raw[1:])
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise StorageError(f"malformed Merkle node: {e!r}") from e
        return cls.from_wire(wire)


EMPTY = MerkleNode(_EMPTY)
EMPTY_HASH = EMPTY.hash()


def node_key(partition: int, prefix: bytes) -> bytes:
    """Where the node of ``partition`` at ``prefix`` is stored."""
    return bytes([partition]) + prefix


def partition_of(tree_key: bytes) -> int:
    """A tree key's trie: the first byte of its partition hash (0 for full-copy tables)."""
    return tree_key[0]


class MerkleUpdater:
    """The tries of one table, and the background worker that keeps them up to date."""

    def __init__(self, db: Database, writer: GroupCommitWriter, data: TableData) -> None:
        self.db = db
        self.writer = writer
        self.data = data
        self.table_name = data.schema.name
        self.tree = db.tree(f"{self.table_name}:merkle")  # opened now, never from a writer job
        self.todo = data.merkle_todo
        self._wake = Notify()
        self.done = 0
        self.rebuild_left = 0  # entries a running rebuild has not queued yet
        self._batch_nodes: dict[bytes, MerkleNode] | None = None  # see _write_in
        self._batch_dirty: set[bytes] = set()
        data.on_merkle_todo = self.notify

    def notify(self) -> None:
        self._wake.notify()

    # ---- reads -------------------------------------------------------------------------------

    def get_node(self, partition: int, prefix: bytes = b"") -> MerkleNode:
        with self.db.read() as txn:
            raw = txn.get(node_key(partition, prefix), db=self.tree)
        return EMPTY if raw is None else MerkleNode.decode(raw)

    def root_hash(self, partition: int) -> bytes:
        return self.get_node(partition).hash()

    def todo_len(self) -> int:
        with self.db.read() as txn:
            return txn.stat(self.todo)["entries"]

    # ---- trie updates (inside a writer transaction) -------------------------------------------

    def update_in(self, tx: WriteTxn, tree_key: bytes, value_hash: bytes | None) -> None:
        """Set (or with ``None`` remove) the leaf of ``tree_key``."""
        kh = blake2sum(tree_key)
        self._update(tx, node_key(partition_of(tree_key), b""), tree_key, kh, 0, value_hash)

    def _read_in(self, tx: WriteTxn, key: bytes) -> MerkleNode:
        cache = self._batch_nodes
        if cache is not None and key in cache:
            return cache[key]
        raw = tx.get(self.tree, key)
        node = EMPTY if raw is None else MerkleNode.decode(raw)
        if cache is not None:
            cache[key] = node
        return node

    def _write_in(self, tx: WriteTxn, key: bytes, node: MerkleNode) -> bytes | None:
        """Store ``node`` at ``key``; returns its hash, or None for Empty (which is not stored).

        Inside a batch, nodes stay in memory and are written once at the end: the top of the
        trie (up to 256 children) is touched by every update, and decoding and re-encoding it
        per item dominated the cost.
        """
        if self._batch_nodes is not None:
            self._batch_nodes[key] = node
            self._batch_dirty.add(key)
            return None if node.is_empty else node.hash()
        if node.is_empty:
            tx.delete(self.tree, key)
            return None
        body = node.body()
        tx.put(self.tree, key, bytes([NODE_FORMAT]) + body)
        return blake2sum(body)

    def _update(
        self, tx: WriteTxn, key: bytes, tree_key: bytes, kh: bytes, depth: int, value_hash: bytes | None
    ) -> bytes | None | _Unchanged:
        """Apply the update below the node at ``key`` (``depth`` bytes of ``kh`` deep).

        Returns ``UNCHANGED``, or the node's new hash (None if it became Empty).
        """
        node = self._read_in(tx, key)
        if node.is_empty:
            if value_hash is None:
                return UNCHANGED
            return self._write_in(tx, key, MerkleNode.leaf(tree_key, value_hash))

        if node.is_leaf:
            if node.key == tree_key:
                if node.value_hash == value_hash:
                    return UNCHANGED
                new = EMPTY if value_hash is None else MerkleNode.leaf(tree_key, value_hash)
                return self._write_in(tx, key, new)
            if value_hash is None:
                return UNCHANGED  # deleting a key that is not here
            # Two keys under one prefix: push the existing leaf one level down, then insert ours
            # next to it (recursively splitting again while they share the next byte).
            if depth >= len(kh):
                raise StorageError("Merkle key hash collision")
            other_kh = blake2sum(node.key)
            children: dict[int, bytes] = {}
            for k, h, vh in ((node.key, other_kh, node.value_hash), (tree_key, kh, value_hash)):
                sub = self._update(tx, key + h[depth : depth + 1], k, h, depth + 1, vh)
                assert isinstance(sub, bytes)
                children[h[depth]] = sub
            return self._write_in(tx, key, MerkleNode.intermediate(children))

        # Intermediate
        if depth >= len(kh):
            raise StorageError("Merkle trie deeper than the key hash")
        byte = kh[depth]
        sub = self._update(tx, key + bytes([byte]), tree_key, kh, depth + 1, value_hash)
        if sub is UNCHANGED:
            return UNCHANGED
        children = dict(node.children)
        if sub is None:
            children.pop(byte, None)
        else:
            children[byte] = sub
        if not children:
            log.warning("%s: Merkle intermediate node left without children", self.table_name)
            return self._write_in(tx, key, EMPTY)
        if len(children) == 1:
            # A lone leaf below moves up here; a lone intermediate stays (it covers 2+ entries).
            ((only, _),) = children.items()
            child_key = key + bytes([only])
            child = self._read_in(tx, child_key)
            if child.is_leaf:
                self._write_in(tx, child_key, EMPTY)
                return self._write_in(tx, key, child)
            if child.is_empty:
                log.warning("%s: Merkle intermediate node pointing to an empty child", self.table_name)
                return self._write_in(tx, key, EMPTY)
        return self._write_in(tx, key, MerkleNode.intermediate(children))

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
        its new value, for the next batch. Returns how many entries were applied.
        """
        n = 0
        self._batch_nodes, self._batch_dirty = {}, set()
        try:
            for tree_key, value_hash in batch:
                if tx.get(self.todo, tree_key) != value_hash:
                    continue
                self.update_in(tx, tree_key, value_hash or None)
                tx.delete(self.todo, tree_key)
                n += 1
            nodes, dirty = self._batch_nodes, self._batch_dirty
        finally:
            self._batch_nodes, self._batch_dirty = None, set()
        for key in dirty:
            self._write_in(tx, key, nodes[key])
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
        """Drain the to-do queue (tests, tools)."""
        while await self.process_batch():
            pass

    async def rebuild(self) -> int:
        """``repair merkle``: drop every trie and queue every local entry again.

        Returns how many entries were queued. The worker rebuilds the tries in the background;
        meanwhile anti-entropy may push more than needed, which merges harmlessly.
        """

        def clear(tx: WriteTxn) -> int:
            tx.txn.drop(self.tree, delete=False)
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
                    tx.put(self.todo, k, blake2sum(v))
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
        return WorkerState.BUSY if await self.process_batch() else WorkerState.IDLE

    async def wait_for_work(self) -> None:
        await self._wake.wait(IDLE_WAKEUP)

    def progress(self) -> dict[str, Any]:
        # A rebuild's entries not queued yet count as queued: the work is still ahead.
        return {"done": self.done, "queue": self.todo_len() + self.rebuild_left}


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
