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

Storage, in ``<table>:merkle`` at ``partition byte || prefix`` (a format byte, then msgpack):

- format 2, an intermediate node: its children ``[[byte, child hash], ...]`` (the bytes its hash
  is computed over), then the tree keys of the children that are leaves, ``[byte, tree key, ...]``.
  Such a leaf has no entry of its own: one LMDB entry per leaf (10 bytes of LMDB header, a 3-byte
  key, framing, its value hash, in pages a third empty) was the biggest cost of the tries
  (docs/storage.md, "Bytes per item"). The leaf's hash, among the children, stands in for its
  value hash: it is all the parent needs, and the value hash is the entry's own hash, read back
  from the data when a caller asks for the leaf (``get_node``);
- format 3, a leaf at a partition's root (it has no parent): ``[tree key, leaf hash]``;
- format 1, how nodes were stored before: the wire form, every leaf under its own key. Still read;
  the updater moves such a leaf into its parent when it rewrites it (``repair merkle`` moves them
  all at once).

``TableData`` writes ``merkle_todo[tree_key] = blake2sum(new bytes)`` (empty bytes: deleted) in the
same transaction as each change; ``MerkleUpdater`` drains it in batches, one writer transaction
per batch, and removes a to-do entry only if it still holds the value it applied. Within a batch
a node is read, hashed and written at most once, however many of the batch's entries are below it:
the top of a trie is above every entry, so per-entry hashing would re-pack it for each of them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.table.data import TableData
from garagekv.util import codec
from garagekv.util.background import Notify, WorkerState
from garagekv.util.codec import blake2sum
from garagekv.util.errors import StorageError

log = logging.getLogger(__name__)

#: First byte of every stored node, so the format can migrate. Format 1 (the wire form, every
#: leaf under its own key) is only read; the updater writes formats 2 and 3.
NODE_FORMAT = 1
#: An intermediate node whose leaf children are stored in it (``encode_inner``).
NODE_FORMAT_INNER = 2
#: A leaf at a partition's root: ``[tree key, leaf hash]``.
NODE_FORMAT_ROOT_LEAF = 3
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
    # Leaf: blake2sum of the entry's bytes; empty when only the leaf's hash is known (read from
    # storage and the entry changed since, see MerkleUpdater.get_node).
    value_hash: bytes = b""
    # Leaf: the node's hash, computed once when it is built, or read from storage (formats 2, 3).
    leaf_hash: bytes = field(default=b"", repr=False)
    # Intermediate read from storage: its children stored in it as leaves, (byte, tree key).
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
        return blake2sum(self.body())

    def encode(self) -> bytes:
        """Format 1, the wire form (how nodes were stored before formats 2 and 3; still read)."""
        return bytes([NODE_FORMAT]) + self.body()

    @classmethod
    def decode(cls, raw: bytes) -> MerkleNode:
        """A stored node in any format; an intermediate of format 2 lists its leaf children in
        ``inline_keys`` (their hashes are its children's), a leaf of format 3 has no value hash."""
        if not raw or raw[0] not in (NODE_FORMAT, NODE_FORMAT_INNER, NODE_FORMAT_ROOT_LEAF):
            raise StorageError("unknown Merkle node format")
        if raw[0] == NODE_FORMAT_INNER:
            children, inline = decode_inner(raw)
            return cls(_INTERMEDIATE, children=tuple(children.items()), inline_keys=tuple(inline.items()))
        try:
            wire = codec.decode(raw[1:])
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise StorageError(f"malformed Merkle node: {e!r}") from e
        if raw[0] == NODE_FORMAT:
            return cls.from_wire(wire)
        try:
            key, leaf_hash = wire
            if type(key) is not bytes or type(leaf_hash) is not bytes:
                raise TypeError("a leaf's key and hash must be bytes")
        except (TypeError, ValueError) as e:
            raise StorageError(f"malformed Merkle node: {e!r}") from e
        return cls.stored_leaf(key, leaf_hash)


def _leaf_body(key: bytes, value_hash: bytes) -> bytes:
    """``MerkleNode.body()`` of a leaf."""
    return codec.encode_lists([_LEAF, key, value_hash])


#: ``MerkleNode.body()`` of an intermediate node is this, then the msgpack of its children (a
#: msgpack array of 2, then the kind 1): format 2 stores those children bytes as they are hashed.
_INNER_BODY_HEAD = b"\x92\x01"


def encode_inner(children: list[tuple[int, bytes]], inline: dict[int, bytes]) -> tuple[bytes, bytes]:
    """A format-2 node and its hash, from its sorted (byte, hash) children and its leaf children's
    tree keys: ``2 ‖ be32(n) ‖ n bytes of msgpack [[byte, hash], ...]`` (the node's body without
    its head), then, if some children are leaves stored here, msgpack ``[byte, tree key, ...]``.

    The children are packed once, for the hash and for storage; a 256-child node is what a batch
    rewrites most.
    """
    pairs = msgpack.packb(children, use_bin_type=True)
    raw = bytes([NODE_FORMAT_INNER]) + len(pairs).to_bytes(4, "big") + pairs
    if inline:
        flat: list[int | bytes] = []
        for b in sorted(inline):
            flat += (b, inline[b])
        raw += msgpack.packb(flat, use_bin_type=True)
    return raw, blake2sum(_INNER_BODY_HEAD + pairs)


def decode_inner(raw: bytes) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """A format-2 node: ``({byte: child hash}, {byte: tree key of a leaf child stored here})``."""
    try:
        n = int.from_bytes(raw[1:5], "big")
        if len(raw) < 5 + n:
            raise ValueError("truncated")
        view = memoryview(raw)  # no copy of the (up to 9 KiB of) children
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
        if raw is not None:
            return MerkleNode.decode(raw)
        if len(key) > 1:  # a leaf is stored in its parent
            parent_raw = txn.get(key[:-1], db=self.tree)
            if parent_raw is not None and parent_raw[0] == NODE_FORMAT_INNER:
                children, inline = decode_inner(parent_raw)
                tree_key = inline.get(key[-1])
                if tree_key is not None:
                    return MerkleNode.stored_leaf(tree_key, children[key[-1]])
        return EMPTY

    def root_hash(self, partition: int) -> bytes:
        with self.db.read() as txn:
            return self._get(txn, node_key(partition, b"")).hash()

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

    __slots__ = ("children", "inline")

    def __init__(self, children: dict[int, bytes | _Pending], inline: dict[int, bytes] | None = None) -> None:
        self.children = children
        # The children that are leaves stored in this node (byte -> tree key); their hashes are
        # in ``children`` like the others'.
        self.inline = {} if inline is None else inline


class _TrieBatch:
    """Updates to the tries of one table inside one writer transaction, stored by ``flush``.

    State lives in this object rather than on the updater, so that two transactions (the writer
    thread and a ``run_sync`` caller) never share it.
    """

    __slots__ = ("tx", "tree", "table_name", "nodes", "dirty", "stored")

    def __init__(self, tx: WriteTxn, tree: Any, table_name: str) -> None:
        self.tx = tx
        self.tree = tree
        self.table_name = table_name
        self.nodes: dict[bytes, MerkleNode | _Inner] = {}  # every node read or written so far
        self.dirty: set[bytes] = set()  # the keys of the nodes written
        self.stored: set[bytes] = set()  # keys of the nodes read that have an entry of their own

    def update(self, tree_key: bytes, value_hash: bytes | None) -> None:
        kh = blake2sum(tree_key)
        leaf = None if value_hash is None else MerkleNode.leaf(tree_key, value_hash)
        self._update(node_key(partition_of(tree_key), b""), tree_key, kh, 0, leaf)

    def flush(self) -> None:
        """Hash and store the written nodes (delete the Empty ones), deepest first.

        Deepest first because a node's hash depends on its children's: when a node is reached, every
        ``PENDING`` among its children has been replaced by the hash of that child's final state.
        A leaf below a root goes into its parent (which is written after it); an entry of its own
        that it had (format 1, or the intermediate node it replaced) is deleted.
        """
        nodes, tx, tree, stored = self.nodes, self.tx, self.tree, self.stored
        for key in sorted(self.dirty, key=len, reverse=True):
            node = nodes[key]
            leaf_key: bytes | None = None
            if isinstance(node, _Inner):
                if PENDING in node.children.values():  # a placeholder must never reach the disk
                    raise StorageError(f"{self.table_name}: Merkle child hash left pending at {key.hex()}")
                raw, node_hash = encode_inner(sorted(cast("dict[int, bytes]", node.children).items()), node.inline)
                tx.put(tree, key, raw)
                stored.add(key)
                if len(key) == 1:  # a partition's root
                    continue
            elif node.is_empty:
                if key in stored:
                    tx.delete(tree, key)
                    stored.discard(key)
                continue
            elif len(key) == 1:  # a leaf at a partition's root
                tx.put(tree, key, bytes([NODE_FORMAT_ROOT_LEAF]) + codec.encode_lists([node.key, node.hash()]))
                stored.add(key)
                continue
            else:
                node_hash, leaf_key = node.hash(), node.key
                if key in stored:
                    tx.delete(tree, key)
                    stored.discard(key)
            # below a partition's root (the key holds the partition byte): the parent takes its hash
            parent = nodes.get(key[:-1])
            if not isinstance(parent, _Inner) or parent.children.get(key[-1]) is not PENDING:
                raise StorageError(f"{self.table_name}: Merkle node {key.hex()} written without its parent")
            parent.children[key[-1]] = node_hash
            if leaf_key is None:
                parent.inline.pop(key[-1], None)
            else:
                parent.inline[key[-1]] = leaf_key
        self.dirty = set()

    def _read(self, key: bytes) -> MerkleNode | _Inner:
        node = self.nodes.get(key)
        if node is not None:
            return node
        parent = self.nodes.get(key[:-1]) if len(key) > 1 else None
        if isinstance(parent, _Inner):  # the parent knows whether the child exists, and may hold it
            byte = key[-1]
            tree_key = parent.inline.get(byte)
            if tree_key is not None:
                h = parent.children[byte]
                if isinstance(h, _Pending):  # a child changed in this batch is in self.nodes
                    raise StorageError(f"{self.table_name}: Merkle leaf {key.hex()} pending but not in the batch")
                node = MerkleNode.stored_leaf(tree_key, h)
            elif byte not in parent.children:
                node = EMPTY
        if node is None:
            raw = self.tx.get(self.tree, key)
            if raw is None:
                node = EMPTY
            else:
                self.stored.add(key)
                if raw[0] == NODE_FORMAT_INNER:
                    children, inline = decode_inner(raw)
                    node = _Inner(cast("dict[int, bytes | _Pending]", children), inline)
                else:
                    node = MerkleNode.decode(raw)
                    if node.is_intermediate:  # format 1
                        node = _Inner(dict(node.children))
        self.nodes[key] = node
        return node

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


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
