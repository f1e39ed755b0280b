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
per batch, and removes a to-do entry only if it still holds the value it applied. Within a batch
a node is read, hashed and written at most once, however many of the batch's entries are below it:
the top of a trie is above every entry, so per-entry hashing would re-pack it for each of them.
"""

from __future__ import annotations

import asyncio
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
#: Once woken, wait this long so that a burst of writes makes one batch: the top of a trie is
#: hashed once per batch, however many entries below it changed.
LINGER = 0.05

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
        self.todo = data.merkle_todo
        self._wake = Notify()
        self.done = 0
        self.rebuild_left = 0  # entries a running rebuild has not queued yet
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
        """Set (or with ``None`` remove) the leaf of ``tree_key``: a batch of one."""
        batch = _TrieBatch(tx, self.tree, self.table_name)
        batch.update(tree_key, value_hash)
        batch.flush()

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
        trie = _TrieBatch(tx, self.tree, self.table_name)
        for tree_key, value_hash in batch:
            if tx.get(self.todo, tree_key) != value_hash:
                continue
            trie.update(tree_key, value_hash or None)
            tx.delete(self.todo, tree_key)
            n += 1
        trie.flush()
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
        return WorkerState.BUSY if await self.process_batch() >= BATCH else WorkerState.IDLE

    async def wait_for_work(self) -> None:
        await self._wake.wait(IDLE_WAKEUP)
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


class _Inner:
    """An intermediate node owned by a batch.

    The top of a trie (up to 256 children) is touched by every update of a batch; keeping its
    children in a dict that the batch mutates in place, and sorting, packing and hashing it once at
    the end, is what makes a batch cheap. Children changed in the batch hold ``PENDING``.
    """

    __slots__ = ("children",)

    def __init__(self, children: dict[int, bytes | _Pending]) -> None:
        self.children = children


class _TrieBatch:
    """Updates to the tries of one table inside one writer transaction, stored by ``flush``.

    State lives in this object rather than on the updater, so that two transactions (the writer
    thread and a ``run_sync`` caller) never share it.
    """

    __slots__ = ("tx", "tree", "table_name", "nodes", "dirty")

    def __init__(self, tx: WriteTxn, tree: Any, table_name: str) -> None:
        self.tx = tx
        self.tree = tree
        self.table_name = table_name
        self.nodes: dict[bytes, MerkleNode | _Inner] = {}  # every node read or written so far
        self.dirty: set[bytes] = set()  # the keys of the nodes written

    def update(self, tree_key: bytes, value_hash: bytes | None) -> None:
        kh = blake2sum(tree_key)
        self._update(node_key(partition_of(tree_key), b""), tree_key, kh, 0, value_hash)

    def flush(self) -> None:
        """Hash and store the written nodes (delete the Empty ones), deepest first.

        Deepest first because a node's hash depends on its children's: when a node is reached, every
        ``PENDING`` among its children has been replaced by the hash of that child's final state.
        """
        nodes, tx, tree = self.nodes, self.tx, self.tree
        for key in sorted(self.dirty, key=len, reverse=True):
            node = nodes[key]
            if isinstance(node, _Inner):
                if PENDING in node.children.values():  # a placeholder must never reach the disk
                    raise StorageError(f"{self.table_name}: Merkle child hash left pending at {key.hex()}")
                # The bytes of MerkleNode.body(): msgpack packs tuples as arrays, like lists.
                body = msgpack.packb([_INTERMEDIATE, sorted(node.children.items())], use_bin_type=True)
            elif node.is_empty:
                tx.delete(tree, key)
                continue
            else:
                body = node.body()
            tx.put(tree, key, bytes([NODE_FORMAT]) + body)
            if len(key) > 1:  # below a partition's root (the key holds the partition byte)
                parent = nodes.get(key[:-1])
                if not isinstance(parent, _Inner) or parent.children.get(key[-1]) is not PENDING:
                    raise StorageError(f"{self.table_name}: Merkle node {key.hex()} written without its parent")
                parent.children[key[-1]] = blake2sum(body)
        self.dirty = set()

    def _read(self, key: bytes) -> MerkleNode | _Inner:
        node = self.nodes.get(key)
        if node is None:
            raw = self.tx.get(self.tree, key)
            node = EMPTY if raw is None else MerkleNode.decode(raw)
            if node.is_intermediate:
                node = _Inner(dict(node.children))
            self.nodes[key] = node
        return node

    def _write(self, key: bytes, node: MerkleNode | _Inner) -> _Pending | None:
        """Record ``node`` at ``key``; returns what its parent holds for it (None: no child)."""
        self.nodes[key] = node
        self.dirty.add(key)
        return None if isinstance(node, MerkleNode) and node.is_empty else PENDING

    def _update(
        self, key: bytes, tree_key: bytes, kh: bytes, depth: int, value_hash: bytes | None
    ) -> _Pending | None | _Unchanged:
        """Apply the update below the node at ``key`` (``depth`` bytes of ``kh`` deep).

        Returns ``UNCHANGED``, ``PENDING`` (changed; hashed at ``flush``) or None (became Empty).
        """
        node = self._read(key)
        if isinstance(node, _Inner):
            return self._update_inner(key, node, tree_key, kh, depth, value_hash)

        if node.is_empty:
            if value_hash is None:
                return UNCHANGED
            return self._write(key, MerkleNode.leaf(tree_key, value_hash))

        # Leaf
        if node.key == tree_key:
            if node.value_hash == value_hash:
                return UNCHANGED
            return self._write(key, EMPTY if value_hash is None else MerkleNode.leaf(tree_key, value_hash))
        if value_hash is None:
            return UNCHANGED  # deleting a key that is not here
        # Two keys under one prefix: push the existing leaf one level down, then insert ours next
        # to it (recursively splitting again while they share the next byte).
        if depth >= len(kh):
            raise StorageError("Merkle key hash collision")
        other_kh = blake2sum(node.key)
        children: dict[int, bytes | _Pending] = {}
        for k, h, vh in ((node.key, other_kh, node.value_hash), (tree_key, kh, value_hash)):
            sub = self._update(key + h[depth : depth + 1], k, h, depth + 1, vh)
            if sub is not PENDING:
                raise StorageError(f"{self.table_name}: stray Merkle node below leaf {key.hex()}")
            children[h[depth]] = PENDING
        return self._write(key, _Inner(children))

    def _update_inner(
        self, key: bytes, node: _Inner, tree_key: bytes, kh: bytes, depth: int, value_hash: bytes | None
    ) -> _Pending | None | _Unchanged:
        if depth >= len(kh):
            raise StorageError("Merkle trie deeper than the key hash")
        byte = kh[depth]
        sub = self._update(key + bytes([byte]), tree_key, kh, depth + 1, value_hash)
        if sub is UNCHANGED:
            return UNCHANGED
        children = node.children
        if sub is None:
            children.pop(byte, None)
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


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
