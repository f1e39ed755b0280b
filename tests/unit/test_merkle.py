"""Merkle tries: canonical shape (split, pull-up), order independence, the to-do queue, rebuild."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.table.data import TableData
from garagekv.table.merkle import (
    EMPTY,
    EMPTY_HASH,
    PENDING,
    MerkleNode,
    MerkleUpdater,
    _Inner,
    _stored_for_batch,
    _TrieBatch,
    node_key,
)
from garagekv.table.schema import BaseSchema
from garagekv.util.codec import blake2sum
from garagekv.util.errors import StorageError


@dataclass
class Reg:
    """A max-register entry keyed by (partition hash, key)."""

    part: bytes
    key: bytes
    value: int

    def tree_key(self) -> bytes:
        return self.part + self.key

    def encode(self) -> bytes:
        return bytes([len(self.key)]) + self.part + self.key + str(self.value).encode()

    def merge(self, other: Reg) -> None:
        self.value = max(self.value, other.value)

    def is_tombstone(self) -> bool:
        return False


class RegSchema(BaseSchema):
    name = "reg"

    def decode(self, data: bytes) -> Reg:
        n = data[0]
        return Reg(data[1:33], data[33 : 33 + n], int(data[33 + n :]))


P0 = b"\x00" * 32  # a full-copy table's partition hash: everything in partition 0
P7 = b"\x07" + b"\x11" * 31


@pytest.fixture
def env(tmp_path):
    db = Database(tmp_path / "db", map_size=64 << 20, fsync=False)
    writer = GroupCommitWriter(db)
    data = TableData(db, writer, RegSchema())
    merkle = MerkleUpdater(db, writer, data)
    yield db, writer, data, merkle
    writer.close()
    db.close()


def norm(node: MerkleNode) -> MerkleNode:
    """A node as storage knows it: a leaf by its tree key and hash (its value hash is not stored)."""
    return MerkleNode.stored_leaf(node.key, node.hash()) if node.is_leaf else node


def stored_nodes(db: Database, merkle: MerkleUpdater) -> dict[bytes, MerkleNode]:
    """Every stored node of the tries by position (normalised); a leaf below a root takes its
    hash from its parent (and fails without one)."""
    with db.read() as txn:
        raw = dict(txn.cursor(db=merkle.tree))
    out: dict[bytes, MerkleNode] = {}

    def add(key: bytes, node: MerkleNode) -> None:
        assert key not in out, f"Merkle node {key.hex()} stored twice"
        out[key] = norm(node)

    for k, v in raw.items():
        if v[0] == 4:
            parent = MerkleNode.decode(raw[k[:-1]])
            add(k, MerkleNode.decode(v, dict(parent.children)[k[-1]]))
        else:
            node = MerkleNode.decode(v)
            add(k, node)
            for byte, tree_key in node.inline_keys:  # format 2: leaves held by their parent
                add(k + bytes([byte]), MerkleNode.stored_leaf(tree_key, dict(node.children)[byte]))
    return out


def expected_nodes(entries: dict[bytes, bytes]) -> dict[bytes, MerkleNode]:
    """The canonical tries for ``tree_key -> value hash``, built from scratch (normalised)."""
    out: dict[bytes, MerkleNode] = {}

    def build(partition: int, prefix: bytes, keys: list[tuple[bytes, bytes]]) -> bytes | None:
        if not keys:
            return None
        if len(keys) == 1:
            node = MerkleNode.leaf(keys[0][1], entries[keys[0][1]])
        else:
            d = len(prefix)
            groups: dict[int, list] = {}
            for kh, k in keys:
                groups.setdefault(kh[d], []).append((kh, k))
            children = {b: build(partition, prefix + bytes([b]), g) for b, g in groups.items()}
            node = MerkleNode.intermediate(children)
        out[node_key(partition, prefix)] = norm(node)
        return node.hash()

    by_partition: dict[int, list] = {}
    for k in entries:
        by_partition.setdefault(k[0], []).append((blake2sum(k), k))
    for p, keys in by_partition.items():
        build(p, b"", keys)
    return out


def apply(writer: GroupCommitWriter, merkle: MerkleUpdater, ops: list[tuple[bytes, bytes | None]]) -> None:
    def fn(tx):
        for k, vh in ops:
            merkle.update_in(tx, k, vh)

    writer.run_sync(fn)


def keys_sharing_prefix(n_bytes: int, count: int = 2, part: bytes = P0) -> list[bytes]:
    """Tree keys whose key hashes share their first ``n_bytes`` bytes."""
    seen: dict[bytes, list[bytes]] = {}
    for i in itertools.count():
        k = part + f"k{i}".encode()
        group = seen.setdefault(blake2sum(k)[:n_bytes], [])
        group.append(k)
        if len(group) == count:
            return group
    raise AssertionError


def vh(x: object) -> bytes:
    return blake2sum(repr(x).encode())


def stored_raw(db: Database, merkle: MerkleUpdater) -> dict[bytes, bytes]:
    """Every stored key and value of the tries, as bytes: a stray placeholder or stale hash shows."""
    with db.read() as txn:
        return dict(txn.cursor(db=merkle.tree))


def expected_raw(entries: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The stored bytes of the canonical tries: intermediate nodes in format 1, a leaf below a
    root's children as its tree key (format 4), a leaf at a root or below it as its key and hash
    (format 3)."""
    out: dict[bytes, bytes] = {}
    for key, node in expected_nodes(entries).items():
        if node.is_intermediate:
            out[key] = node.encode()
        elif len(key) <= 2:
            out[key] = b"\x03" + msgpack.packb([node.key, node.hash()])
        else:
            out[key] = b"\x04" + node.key
    return out


def inline_raw(entries: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The same tries as format 2 stored them (a version between formats 1 and 4): intermediate
    nodes holding their leaf children's tree keys, root leaves in format 3."""
    nodes = expected_nodes(entries)
    out: dict[bytes, bytes] = {}
    for key, node in nodes.items():
        if node.is_leaf and len(key) == 1:
            out[key] = b"\x03" + msgpack.packb([node.key, node.hash()])
        elif node.is_intermediate:
            leaves = {b: nodes[key + bytes([b])].key for b, _ in node.children if nodes[key + bytes([b])].is_leaf}
            out[key] = fmt2([list(c) for c in node.children], leaves)
    return out


def fmt2(children: list, leaves: dict[int, bytes]) -> bytes:
    """Format 2 by hand: 2, the length of the children's msgpack, the children, the leaves' keys."""
    pairs = msgpack.packb(children)
    flat = [x for b in sorted(leaves) for x in (b, leaves[b])]
    return b"\x02" + len(pairs).to_bytes(4, "big") + pairs + (msgpack.packb(flat) if leaves else b"")


def legacy_raw(entries: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The same tries as nodes were stored before format 2: format 1, every leaf under its own key."""
    return {k: full(n, entries).encode() for k, n in expected_nodes(entries).items()}


def full(node: MerkleNode, entries: dict[bytes, bytes]) -> MerkleNode:
    return MerkleNode.leaf(node.key, entries[node.key]) if node.is_leaf else node


def reset(writer: GroupCommitWriter, merkle: MerkleUpdater) -> None:
    """Empty tries and to-do queue (hypothesis examples share one fixture)."""

    def fn(tx):
        tx.txn.drop(merkle.tree, delete=False)
        tx.txn.drop(merkle.todo, delete=False)
        tx.txn.drop(merkle.marks, delete=False)

    writer.run_sync(fn)


def settle(writer: GroupCommitWriter, merkle: MerkleUpdater) -> None:
    while writer.run_sync(merkle.settle_in):
        pass


def assert_current(db: Database, merkle: MerkleUpdater, model: dict[bytes, bytes]) -> None:
    """What readers see is the canonical trie of ``model``, lazy roots or not: every node below
    the roots as stored, and each root (stored one and its marks) as ``get_node`` answers it."""
    expected = expected_raw(model)
    assert {k: v for k, v in stored_raw(db, merkle).items() if len(k) > 1} == {
        k: v for k, v in expected.items() if len(k) > 1
    }
    for p in {k[0] for k in POOL}:
        want = MerkleNode.decode(expected[bytes([p])]) if bytes([p]) in expected else EMPTY
        assert norm(merkle.get_node(p)) == want


# Keys whose hashes share prefixes, so that batches split leaves several levels deep and pull them
# back up, next to keys spread over the root and a second partition.
POOL = [*keys_sharing_prefix(2, count=3), *keys_sharing_prefix(1, count=3)]
POOL += [k for k in (P0 + f"s{i}".encode() for i in range(8)) if k not in POOL]
POOL += [P7 + f"s{i}".encode() for i in range(3)]


# ---- nodes --------------------------------------------------------------------------------------


def test_node_encoding_round_trips_and_rejects_garbage():
    nodes = [EMPTY, MerkleNode.leaf(b"k" * 40, vh(1)), MerkleNode.intermediate({3: vh(1), 1: vh(2)})]
    for node in nodes:
        assert MerkleNode.decode(node.encode()) == node
        assert MerkleNode.from_wire(node.to_wire()) == node
    assert nodes[2].children == ((1, vh(2)), (3, vh(1)))
    assert len({n.hash() for n in nodes}) == 3 and EMPTY.hash() == EMPTY_HASH
    for bad in (b"", b"\x09\x90", MerkleNode.leaf(b"k", vh(1)).encode()[:3]):
        with pytest.raises(StorageError):
            MerkleNode.decode(bad)
    with pytest.raises(StorageError):
        MerkleNode.from_wire([1, [[3, vh(1)], [1, vh(2)]]])  # children out of order
    with pytest.raises(StorageError):
        MerkleNode.from_wire([7])
    for children in (
        [[1, vh(1)], [1, vh(2)]],
        [[256, vh(1)]],
        [[-1, vh(1)]],
        [[1, "text"]],
        [[b"\x01", vh(1)]],
        [[1]],
        [[1, vh(1), 2]],
        5,
    ):
        with pytest.raises(StorageError):
            MerkleNode.from_wire([1, children])
    assert MerkleNode.from_wire([1, []]).children == ()


def test_a_batch_reads_stored_nodes_as_decode_does_and_rejects_garbage():
    """A batch's own decoding of format-1 nodes (``_stored_for_batch``) agrees with
    ``MerkleNode.decode`` and refuses what it refuses."""
    inner = MerkleNode.intermediate({3: vh(1), 1: vh(2)})
    got = _stored_for_batch(inner.encode())
    assert isinstance(got, _Inner) and dict(got.children.items()) == dict(inner.children) and got.inline == {}
    leaf = MerkleNode.leaf(b"k" * 40, vh(1))
    assert _stored_for_batch(leaf.encode()) == leaf and _stored_for_batch(EMPTY.encode()) == EMPTY
    for bad in (
        inner.encode()[:-3],  # truncated
        b"\x01" + msgpack.packb([1, [[3, vh(1)], [1, vh(2)]]]),  # children out of order
        b"\x01" + msgpack.packb([1, [[256, vh(1)]]]),
        b"\x01" + msgpack.packb([1, [[1, "text"]]]),
        b"\x01" + msgpack.packb([1, 5]),
        b"\x01" + msgpack.packb([7]),
    ):
        with pytest.raises(StorageError):
            _stored_for_batch(bad)


def test_stored_formats_decode_and_reject_garbage():
    """Format 4 (a leaf below a root: its tree key, its hash in the parent), format 3 (a root
    leaf: key and hash) and format 2 (an intermediate node holding its leaves, read only)."""
    leaf = MerkleNode.leaf(b"k" * 40, vh(1))
    below = MerkleNode.decode(b"\x04" + leaf.key, leaf.hash())
    assert below.is_leaf and below.key == leaf.key and below.hash() == leaf.hash() and below.value_hash == b""
    assert below == norm(leaf) and below != leaf  # the value hash is not stored
    with pytest.raises(StorageError, match="in its parent"):
        MerkleNode.decode(b"\x04" + leaf.key).hash()  # no hash without the parent's
    root = MerkleNode.decode(b"\x03" + msgpack.packb([leaf.key, leaf.hash()]))
    assert root == below and MerkleNode.stored_leaf(leaf.key, vh(9)) != root  # a stored leaf is its hash
    for bad in ([b"k"], [b"k", vh(1), b"x"], [b"k", "h"], 5):
        with pytest.raises(StorageError):
            MerkleNode.decode(b"\x03" + msgpack.packb(bad))
    with pytest.raises(StorageError):
        MerkleNode.decode(b"\x05" + leaf.key)
    node = MerkleNode.decode(fmt2([[1, vh(2)], [3, leaf.hash()]], {3: leaf.key}))
    assert node == MerkleNode.intermediate({1: vh(2), 3: leaf.hash()}) and node.inline_keys == ((3, leaf.key),)
    assert MerkleNode.decode(fmt2([], {})).children == ()
    good = fmt2([[1, vh(1)], [2, vh(2)]], {})
    for bad in (
        fmt2([[3, vh(1)], [1, vh(2)]], {}),  # out of order
        fmt2([[1, vh(1)], [1, vh(2)]], {}),
        fmt2([[256, vh(1)]], {}),
        fmt2([[1, "text"]], {}),
        fmt2([[1]], {}),
        fmt2([[1, vh(1), 2]], {}),
        fmt2([[1, vh(1)]], {2: b"k"}),  # a leaf that is not a child
        fmt2([[1, vh(1)]], {1: "k"}),
        good + msgpack.packb([1]),  # a byte without its key
        good + msgpack.packb([2, b"k", 1, b"k"]),  # out of order
        good + msgpack.packb([]),
        good + msgpack.packb(5),
        good[:-3],  # truncated
        b"\x02\x00",
    ):
        with pytest.raises(StorageError):
            MerkleNode.decode(bad)


# ---- trie shape -----------------------------------------------------------------------------------


def test_empty_then_single_leaf_at_root(env):
    db, writer, _, merkle = env
    assert merkle.root_hash(0) == EMPTY_HASH and merkle.get_node(0).is_empty
    k = P0 + b"a"
    apply(writer, merkle, [(k, vh(1))])
    root = merkle.get_node(0)
    # no data behind the leaf here: get_node knows it by its key and hash only
    assert root == norm(MerkleNode.leaf(k, vh(1))) and merkle.root_hash(0) == root.hash()
    assert set(stored_nodes(db, merkle)) == {b"\x00"}
    apply(writer, merkle, [(k, vh(1))])  # same value: nothing changes
    assert merkle.get_node(0) == root
    apply(writer, merkle, [(k, vh(2))])
    assert merkle.get_node(0) == norm(MerkleNode.leaf(k, vh(2)))
    apply(writer, merkle, [(P0 + b"other", None)])  # deleting an absent key: no-op
    assert merkle.get_node(0) == norm(MerkleNode.leaf(k, vh(2)))
    apply(writer, merkle, [(k, None)])
    assert stored_nodes(db, merkle) == {} and merkle.root_hash(0) == EMPTY_HASH


def test_insert_splits_as_deep_as_the_shared_prefix_and_delete_pulls_up(env):
    db, writer, _, merkle = env
    a, b = keys_sharing_prefix(2)
    kh_a, kh_b = blake2sum(a), blake2sum(b)
    assert kh_a[:2] == kh_b[:2] and kh_a[2] != kh_b[2]
    apply(writer, merkle, [(a, vh("a")), (b, vh("b"))])
    nodes = stored_nodes(db, merkle)
    # root -> one child -> one child -> two leaves
    assert set(nodes) == {b"\x00", b"\x00" + kh_a[:1], b"\x00" + kh_a[:2], b"\x00" + kh_a[:3], b"\x00" + kh_b[:3]}
    assert nodes[b"\x00" + kh_a[:3]] == norm(MerkleNode.leaf(a, vh("a")))
    assert nodes[b"\x00" + kh_a[:2]].children == tuple(
        sorted([(kh_a[2], nodes[b"\x00" + kh_a[:3]].hash()), (kh_b[2], nodes[b"\x00" + kh_b[:3]].hash())])
    )
    assert len(nodes[b"\x00"].children) == 1 and len(nodes[b"\x00" + kh_a[:1]].children) == 1
    assert nodes == expected_nodes({a: vh("a"), b: vh("b")})

    c = next(k for k in (P0 + f"c{i}".encode() for i in range(10_000)) if blake2sum(k)[0] != kh_a[0])
    apply(writer, merkle, [(c, vh("c"))])
    assert stored_nodes(db, merkle) == expected_nodes({a: vh("a"), b: vh("b"), c: vh("c")})
    assert len(merkle.get_node(0).children) == 2

    # Deleting b leaves a alone under its branch: a is pulled all the way up to the root's child.
    apply(writer, merkle, [(b, None)])
    nodes = stored_nodes(db, merkle)
    assert nodes == expected_nodes({a: vh("a"), c: vh("c")})
    assert nodes[b"\x00" + kh_a[:1]] == norm(MerkleNode.leaf(a, vh("a"))) and len(nodes) == 3
    # Deleting c: a becomes the root leaf.
    apply(writer, merkle, [(c, None)])
    assert stored_nodes(db, merkle) == {b"\x00": norm(MerkleNode.leaf(a, vh("a")))}


def test_lone_intermediate_child_is_not_pulled_up(env):
    db, writer, _, merkle = env
    a, b, c = keys_sharing_prefix(1, count=3)
    d = next(k for k in (P0 + f"d{i}".encode() for i in range(10_000)) if blake2sum(k)[0] != blake2sum(a)[0])
    entries = {a: vh(1), b: vh(2), c: vh(3), d: vh(4)}
    apply(writer, merkle, list(entries.items()))
    apply(writer, merkle, [(d, None)])
    del entries[d]
    nodes = stored_nodes(db, merkle)
    assert nodes == expected_nodes(entries)
    assert nodes[b"\x00"].is_intermediate and len(nodes[b"\x00"].children) == 1


def test_partitions_are_separate_tries(env):
    db, writer, _, merkle = env
    k0, k7 = P0 + b"x", P7 + b"x"
    apply(writer, merkle, [(k0, vh(0)), (k7, vh(7))])
    assert merkle.get_node(0) == norm(MerkleNode.leaf(k0, vh(0)))
    assert merkle.get_node(7) == norm(MerkleNode.leaf(k7, vh(7)))
    assert merkle.get_node(1).is_empty
    apply(writer, merkle, [(k7, None)])
    assert merkle.get_node(7).is_empty and not merkle.get_node(0).is_empty


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(st.binary(min_size=0, max_size=3), min_size=0, max_size=40, unique=True),
    parts=st.lists(st.sampled_from([P0, P7]), min_size=40, max_size=40),
    deleted=st.lists(st.booleans(), min_size=40, max_size=40),
    seed=st.randoms(use_true_random=False),
)
def test_same_items_in_any_order_give_the_same_trie(env, keys, parts, deleted, seed):
    db, writer, _, merkle = env
    tree_keys = [p + k for p, k in zip(parts, keys, strict=False)]
    final = {k: vh(k) for k, d in zip(tree_keys, deleted, strict=False) if not d}
    # Direct insertion of the final set, in sorted order.
    writer.run_sync(lambda tx: tx.txn.drop(merkle.tree, delete=False))
    apply(writer, merkle, sorted(final.items()))
    direct = stored_nodes(db, merkle)
    roots = {p: merkle.root_hash(p) for p in (0, 7)}
    assert direct == expected_nodes(final)
    # Any other history: every key inserted with a stale value, in random order, then updated or
    # deleted, in another random order (several transactions).
    writer.run_sync(lambda tx: tx.txn.drop(merkle.tree, delete=False))
    first = [(k, vh(("old", k))) for k in tree_keys]
    seed.shuffle(first)
    second = [(k, final.get(k)) for k in tree_keys]
    seed.shuffle(second)
    half = len(second) // 2
    apply(writer, merkle, first)
    apply(writer, merkle, second[:half])
    apply(writer, merkle, second[half:])
    assert stored_nodes(db, merkle) == direct
    assert {p: merkle.root_hash(p) for p in (0, 7)} == roots


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(st.tuples(st.integers(0, len(POOL) - 1), st.none() | st.integers(0, 2)), min_size=20, max_size=80),
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=10),
    settles=st.lists(st.booleans(), min_size=1, max_size=10),
)
def test_batches_give_the_trie_of_single_updates_and_of_the_final_set(env, ops, sizes, settles):
    db, writer, _, merkle = env
    ops = [(POOL[i], None if v is None else vh(v)) for i, v in ops]
    # One update at a time, no batch (each update_in is its own batch of one).
    reset(writer, merkle)
    model: dict[bytes, bytes] = {}
    for k, v in ops:
        apply(writer, merkle, [(k, v)])
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v
    single = stored_raw(db, merkle)
    single_roots = {p: merkle.root_hash(p) for p in (0, 7)}
    assert single == expected_raw(model)

    # The same history through the to-do queue, in batches of random sizes. A batch may name a key
    # several times: only its entry holding the queued (latest) value is applied.
    reset(writer, merkle)
    model = {}
    pos, i = 0, 0
    while pos < len(ops):
        chunk = ops[pos : pos + sizes[i % len(sizes)]]
        pos, i = pos + len(chunk), i + 1

        def fn(tx, chunk=chunk):
            for k, v in chunk:
                tx.put(merkle.todo, k, v or b"")
            return merkle.apply_batch_in(tx, [(k, v or b"") for k, v in chunk])

        assert writer.run_sync(fn) == len({k for k, _ in chunk})
        for k, v in chunk:
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        assert merkle.todo_len() == 0
        assert_current(db, merkle, model)  # after every batch, not only the last
        if settles[i % len(settles)]:  # roots written now and then, as the worker does
            settle(writer, merkle)
            assert stored_raw(db, merkle) == expected_raw(model)
    settle(writer, merkle)
    assert stored_raw(db, merkle) == single
    assert {p: merkle.root_hash(p) for p in (0, 7)} == single_roots
    assert all(merkle.root_hash(p) == (expected_nodes(model).get(bytes([p])) or EMPTY).hash() for p in (0, 7))


def test_a_leaf_below_a_roots_children_stores_its_tree_key_only(env):
    db, writer, _, merkle = env
    entries = {k: vh(k) for k in POOL}
    apply(writer, merkle, list(entries.items()))
    raw = stored_raw(db, merkle)
    assert raw == expected_raw(entries)
    leaves = {k: v for k, v in raw.items() if v[0] == 4}
    assert leaves and all(len(k) > 2 for k in leaves)
    # A root's leaf children keep their hash (format 3): the root may be written later.
    near_root = [msgpack.unpackb(v[1:])[0] for k, v in raw.items() if v[0] == 3]
    assert all(len(k) == 2 for k, v in raw.items() if v[0] == 3)  # P0 and P7 roots are intermediate
    assert sorted([*(v[1:] for v in leaves.values()), *near_root]) == sorted(entries)
    # A new value changes the leaf's hash in its parent, not its entry.
    k = POOL[0]
    before = stored_raw(db, merkle)
    apply(writer, merkle, [(k, vh("new"))])
    after = stored_raw(db, merkle)
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed and all(after[key][0] == 1 for key in changed)  # only intermediate nodes
    entries[k] = vh("new")
    assert after == expected_raw(entries)


def write_raw(writer: GroupCommitWriter, merkle: MerkleUpdater, raw: dict[bytes, bytes]) -> None:
    writer.run_sync(lambda tx: [tx.put(merkle.tree, k, v) for k, v in raw.items()])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.sets(st.integers(0, len(POOL) - 1), min_size=0, max_size=len(POOL)),
    ops=st.lists(st.tuples(st.integers(0, len(POOL) - 1), st.none() | st.integers(0, 2)), max_size=30),
    batched=st.booleans(),
    layout=st.sampled_from(["format 1", "format 2"]),
)
def test_tries_of_earlier_formats_are_read_and_rewritten_on_update(env, start, ops, batched, layout):
    """Tries stored by earlier versions (format 1: every leaf under its own key with its value
    hash; format 2: leaves held by their parent) read the same: the roots match, updates give the
    trie of the final set with no leaf left behind or lost, and a rebuild leaves only the current
    formats."""
    db, writer, _, merkle = env
    reset(writer, merkle)
    model = {POOL[i]: vh(("start", i)) for i in start}
    earlier = legacy_raw if layout == "format 1" else inline_raw
    write_raw(writer, merkle, earlier(model))
    assert stored_nodes(db, merkle) == expected_nodes(model)
    for pos, node in expected_nodes(model).items():  # what anti-entropy reads and sends to peers
        assert norm(merkle.get_node(pos[0], pos[1:])) == node, pos.hex()
    fresh = {p: (expected_nodes(model).get(bytes([p])) or EMPTY).hash() for p in (0, 7)}
    assert {p: merkle.root_hash(p) for p in (0, 7)} == fresh
    updates = [(POOL[i], None if v is None else vh(v)) for i, v in ops]
    if batched:

        def fn(tx):
            for k, v in updates:
                tx.put(merkle.todo, k, v or b"")
            return merkle.apply_batch_in(tx, [(k, v or b"") for k, v in updates])

        writer.run_sync(fn)
    else:
        apply(writer, merkle, updates)
    for k, v in updates:
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v
    assert all(merkle.root_hash(p) == (expected_nodes(model).get(bytes([p])) or EMPTY).hash() for p in (0, 7))
    settle(writer, merkle)  # a batch may have left its roots to be written later
    assert stored_nodes(db, merkle) == expected_nodes(model)  # no stray node left behind
    # Every leaf an update wrote is in format 3 or 4 now; untouched nodes may be as they were.
    new, old = expected_raw(model), earlier(model)
    for k, v in stored_raw(db, merkle).items():
        assert v in (new.get(k), old.get(k)), k.hex()
        if v != new.get(k):
            node = MerkleNode.decode(v, b"-")
            assert node.key not in dict(updates), k.hex()
            assert not {tk for _, tk in node.inline_keys} & set(dict(updates)), k.hex()
    writer.run_sync(lambda tx: tx.txn.drop(merkle.tree, delete=False))
    apply(writer, merkle, sorted(model.items()))  # what ``repair merkle`` does, through the to-do queue
    assert stored_raw(db, merkle) == expected_raw(model)


async def test_get_node_gives_a_leaf_its_value_hash_back_from_the_data(env):
    db, writer, data, merkle = env
    await data.merge_many([Reg(P0, f"k{i}".encode(), i) for i in range(40)])
    await merkle.flush()
    root = merkle.get_node(0)
    assert root.is_intermediate  # 40 keys over 256 children: mostly leaves
    byte, h = next((b, h) for b, h in root.children if merkle.get_node(0, bytes([b])).is_leaf)
    leaf = merkle.get_node(0, bytes([byte]))
    tree_key = leaf.key
    assert leaf == MerkleNode.leaf(tree_key, blake2sum(data.get_raw(tree_key))) and leaf.hash() == h
    assert merkle.get_node(0, bytes([byte])).to_wire() == [2, tree_key, leaf.value_hash]
    # While the entry's change waits in the to-do queue, the leaf has its hash but no value hash.
    await data.merge(Reg(P0, tree_key[32:], 10_000))
    pending = merkle.get_node(0, bytes([byte]))
    assert pending == MerkleNode.stored_leaf(tree_key, leaf.hash()) and pending.value_hash == b""
    await merkle.flush()
    assert merkle.get_node(0, bytes([byte])) == MerkleNode.leaf(tree_key, blake2sum(data.get_raw(tree_key)))
    # A position nobody holds is Empty, below a leaf too; a leaf whose parent lost it is an error.
    free = next(b for b in range(256) if b not in dict(root.children))
    assert merkle.get_node(0, bytes([free])).is_empty and merkle.get_node(0, bytes([byte, 0])).is_empty
    writer.run_sync(lambda tx: tx.put(merkle.tree, bytes([0, free]), b"\x04" + tree_key))
    with pytest.raises(StorageError, match="no parent holding its hash"):
        merkle.get_node(0, bytes([free]))


def test_large_batches_over_a_wide_root(env):
    """Batches of 100 over a root with ~all 256 children, as in a full-copy table."""
    db, writer, _, merkle = env
    model: dict[bytes, bytes] = {}
    for step in range(12):
        batch: dict[bytes, bytes] = {}
        for j in range(100):
            n = (step * 100 + j) * 7 % 1300
            k = P0 + f"w{n}".encode()
            batch[k] = b"" if (step > 6 and j % 3 == 0) else vh((step, j))

        def fn(tx, batch=batch):
            for k, v in batch.items():
                tx.put(merkle.todo, k, v)
            return merkle.apply_batch_in(tx, sorted(batch.items()))

        assert writer.run_sync(fn) == len(batch)
        for k, v in batch.items():
            if v:
                model[k] = v
            else:
                model.pop(k, None)
    assert len(merkle.get_node(0).children) > 200
    assert stored_raw(db, merkle) == expected_raw(model)


def test_a_pending_child_hash_is_never_stored(env):
    db, writer, _, merkle = env

    def fn(tx):
        batch = _TrieBatch(tx, merkle.tree, "reg", merkle.marks)
        batch.nodes[b"\x00"] = _Inner({1: vh(1), 2: PENDING})
        batch.dirty.add(b"\x00")
        batch.flush()

    with pytest.raises(StorageError, match="pending"):
        writer.run_sync(fn)
    assert stored_raw(db, merkle) == {}


# ---- the to-do queue ----------------------------------------------------------------------------


async def test_updater_drains_todo_and_tracks_data(env):
    db, writer, data, merkle = env
    await data.merge_many([Reg(P0, f"k{i}".encode(), i) for i in range(250)])
    assert merkle.todo_len() == 250
    assert await merkle.process_batch() == 100  # one batch = 100 entries, one transaction
    assert merkle.todo_len() == 150
    await merkle.flush()
    assert merkle.todo_len() == 0 and merkle.done == 250
    entries = {k: blake2sum(v) for k, v in _all(db, data)}
    assert stored_nodes(db, merkle) == expected_nodes(entries)
    # An unchanged rewrite queues nothing; a change queues one entry.
    await data.merge(Reg(P0, b"k1", 1))
    assert merkle.todo_len() == 0
    await data.merge(Reg(P0, b"k1", 1000))
    assert merkle.todo_len() == 1
    await merkle.flush()
    entries[P0 + b"k1"] = blake2sum(data.get_raw(P0 + b"k1"))
    assert stored_nodes(db, merkle) == expected_nodes(entries)


async def test_deletion_todo_removes_the_leaf(env):
    db, writer, data, merkle = env
    await data.merge_many([Reg(P0, b"a", 1), Reg(P0, b"b", 2)])
    await merkle.flush()
    raw = data.get_raw(P0 + b"a")
    assert await data.delete_if_equal_hash([(P0 + b"a", blake2sum(raw))]) == 1
    with db.read() as txn:
        assert txn.get(P0 + b"a", db=merkle.todo) == b""  # empty value: deleted
    await merkle.flush()
    assert stored_nodes(db, merkle) == {b"\x00": norm(MerkleNode.leaf(P0 + b"b", blake2sum(data.get_raw(P0 + b"b"))))}


async def test_todo_entry_removed_only_if_unchanged(env):
    db, writer, data, merkle = env
    await data.merge(Reg(P0, b"a", 1))
    stale = merkle._peek()
    await data.merge(Reg(P0, b"a", 2))  # the item changes after the batch was read
    new_hash = blake2sum(data.get_raw(P0 + b"a"))
    applied = await writer.submit(lambda tx: merkle.apply_batch_in(tx, stale))
    assert applied == 0
    with db.read() as txn:
        assert txn.get(P0 + b"a", db=merkle.todo) == new_hash  # still queued, with the new value
    assert merkle.get_node(0).is_empty  # the stale value was not applied
    await merkle.flush()
    assert merkle.todo_len() == 0 and merkle.get_node(0) == MerkleNode.leaf(P0 + b"a", new_hash)


async def test_worker_wakes_on_commit(env):
    db, writer, data, merkle = env
    from garagekv.util.background import BackgroundRunner

    runner = BackgroundRunner()
    info = runner.spawn(merkle)
    try:
        assert merkle.name == "reg Merkle"
        await data.merge(Reg(P0, b"a", 1))
        for _ in range(200):
            if merkle.done == 1:
                break
            await asyncio.sleep(0.01)
        assert merkle.get_node(0).is_leaf
        assert info.to_json()["done"] == 1 and info.to_json()["queue"] == 0
    finally:
        await runner.stop()


async def test_rebuild_restores_the_same_tries(env, monkeypatch):
    db, writer, data, merkle = env
    monkeypatch.setattr("garagekv.table.merkle.REBUILD_BATCH", 7)
    await data.merge_many([Reg(P0 if i % 2 else P7, f"k{i}".encode(), i) for i in range(40)])
    await merkle.flush()
    before = stored_nodes(db, merkle)
    # Damage the tries: a missing leaf and a bogus one.
    apply(writer, merkle, [(P0 + b"k1", None), (P7 + b"ghost", vh(0))])
    assert stored_nodes(db, merkle) != before
    assert await merkle.rebuild() == 40
    assert merkle.todo_len() == 40 and merkle.progress()["queue"] == 40 and merkle.rebuild_left == 0
    await merkle.flush()
    assert stored_nodes(db, merkle) == before


def _all(db: Database, data: TableData) -> list[tuple[bytes, bytes]]:
    with db.read() as txn:
        return list(txn.cursor(db=data.store))


async def test_work_reports_busy_while_a_backlog_remains(env):
    """A full batch means more may be waiting: the worker must come straight back for it."""
    from garagekv.util.background import WorkerState

    db, writer, data, merkle = env
    await data.merge_many([Reg(P0, f"k{i}".encode(), i) for i in range(250)])
    assert [await merkle.work() for _ in range(3)] == [WorkerState.BUSY, WorkerState.BUSY, WorkerState.IDLE]
    assert merkle.todo_len() == 0 and merkle.done == 250


async def test_worker_drains_a_backlog_without_a_new_write(env, monkeypatch):
    """One notification for 250 queued entries: the worker drains them all without another wake-up
    (the idle timer is set far beyond the test's deadline, so only BUSY can keep it going)."""
    from garagekv.util.background import BackgroundRunner

    db, writer, data, merkle = env
    monkeypatch.setattr("garagekv.table.merkle.IDLE_WAKEUP", 3600.0)
    runner = BackgroundRunner()
    runner.spawn(merkle)
    try:
        await data.merge_many([Reg(P0, f"k{i}".encode(), i) for i in range(250)])
        for _ in range(3000):
            if merkle.todo_len() == 0:
                break
            await asyncio.sleep(0.01)
        assert merkle.todo_len() == 0 and merkle.done == 250
    finally:
        await runner.stop()


# ---- edge cases found by mutation testing -------------------------------------------------------


def test_a_leaf_hash_covers_the_value(env):
    """Two replicas holding one key with different values must not agree on the root."""
    db, writer, _, merkle = env
    k = P0 + b"a"
    assert MerkleNode.leaf(k, vh(1)).value_hash == vh(1)
    assert MerkleNode.leaf(k, vh(1)).hash() != MerkleNode.leaf(k, vh(2)).hash()
    apply(writer, merkle, [(k, vh(1))])
    first = merkle.root_hash(0)
    assert first == MerkleNode.leaf(k, vh(1)).hash()
    apply(writer, merkle, [(k, vh(2))])
    assert merkle.root_hash(0) != first and merkle.root_hash(0) == MerkleNode.leaf(k, vh(2)).hash()


def put_raw(writer: GroupCommitWriter, merkle: MerkleUpdater, nodes: dict[bytes, MerkleNode]) -> None:
    writer.run_sync(lambda tx: [tx.put(merkle.tree, key, node.encode()) for key, node in nodes.items()])


def test_a_damaged_intermediate_node_is_repaired_when_its_last_child_goes(env, caplog):
    """An intermediate node with a single child (which the updater never writes) becomes Empty
    when that child is deleted, instead of staying behind as a childless node."""
    db, writer, _, merkle = env
    k = P0 + b"a"
    byte = blake2sum(k)[0]
    leaf = MerkleNode.leaf(k, vh(1))
    put_raw(writer, merkle, {b"\x00": MerkleNode.intermediate({byte: leaf.hash()}), bytes([0, byte]): leaf})
    apply(writer, merkle, [(k, None)])
    assert stored_raw(db, merkle) == {}
    assert "reg: Merkle intermediate node left without children" in caplog.messages


def test_a_damaged_intermediate_node_pointing_to_nothing_is_repaired(env, caplog):
    """A child hash whose node is missing: once the other child goes, the node becomes Empty."""
    db, writer, _, merkle = env
    k = P0 + b"a"
    byte = blake2sum(k)[0]
    leaf = MerkleNode.leaf(k, vh(1))
    missing = (byte + 1) % 256
    root = MerkleNode.intermediate({byte: leaf.hash(), missing: vh("gone")})
    put_raw(writer, merkle, {b"\x00": root, bytes([0, byte]): leaf})
    apply(writer, merkle, [(k, None)])
    assert stored_raw(db, merkle) == {}
    assert "reg: Merkle intermediate node pointing to an empty child" in caplog.messages


async def test_rebuild_progress_counts_every_entry_until_it_is_queued(env, monkeypatch):
    """While a rebuild runs, each entry is either still to be queued (rebuild_left) or in the
    to-do queue: with no worker draining, the queue shown stays the number of entries."""
    db, writer, data, merkle = env
    monkeypatch.setattr("garagekv.table.merkle.REBUILD_BATCH", 7)
    await data.merge_many([Reg(P0, f"k{i}".encode(), i) for i in range(40)])
    await merkle.flush()
    shown: list[int] = []
    monkeypatch.setattr(merkle, "notify", lambda: shown.append(merkle.progress()["queue"]))
    assert await merkle.rebuild() == 40
    assert shown == [40] * 6  # batches of 7, 7, 7, 7, 7 and 5
    assert merkle.progress()["queue"] == 40 and merkle.rebuild_left == 0


async def test_rebuild_of_an_empty_table(env):
    _, _, _, merkle = env
    task = asyncio.create_task(merkle.rebuild())
    await asyncio.sleep(0)  # the rebuild has read the table and waits for its first transaction
    assert merkle.progress()["queue"] == 1  # under way from the start, even with nothing to queue
    assert await task == 0
    assert merkle.progress()["queue"] == 0 and merkle.todo_len() == 0


async def test_a_failed_rebuild_leaves_no_phantom_work(env, monkeypatch):
    _, writer, data, merkle = env
    await data.merge_many([Reg(P0, f"k{i}".encode(), i) for i in range(5)])
    await merkle.flush()
    submit, calls = writer.submit, []

    async def failing_submit(fn):
        calls.append(fn)
        if len(calls) == 2:  # the first requeue transaction, after the trie was dropped
            raise StorageError("disk full")
        return await submit(fn)

    monkeypatch.setattr(writer, "submit", failing_submit)
    with pytest.raises(StorageError, match="disk full"):
        await merkle.rebuild()
    assert merkle.rebuild_left == 0 and merkle.progress()["queue"] == 0


async def test_the_worker_looks_at_its_queue_without_being_woken(env, monkeypatch):
    """The idle wake-up is a safety net for a missed notification: wait_for_work returns on its
    own (the bound only turns a hang into a failure)."""
    _, _, _, merkle = env
    monkeypatch.setattr("garagekv.table.merkle.IDLE_WAKEUP", 0.0)
    monkeypatch.setattr("garagekv.table.merkle.LINGER", 0.0)
    await asyncio.wait_for(merkle.wait_for_work(), timeout=30)


# ---- lazy roots ---------------------------------------------------------------------------------


def marks(db: Database, merkle: MerkleUpdater) -> list[bytes]:
    with db.read() as txn:
        return [k for k, _ in txn.cursor(db=merkle.marks)]


def queue_batch(writer: GroupCommitWriter, merkle: MerkleUpdater, batch: dict[bytes, bytes]) -> int:
    def fn(tx):
        for k, v in batch.items():
            tx.put(merkle.todo, k, v)
        return merkle.apply_batch_in(tx, sorted(batch.items()))

    return writer.run_sync(fn)


def wide(n: int, tag: object = 0, part: bytes = P0) -> dict[bytes, bytes]:
    return {part + f"w{i}".encode(): vh((tag, i)) for i in range(n)}


def test_a_batch_of_new_values_leaves_the_root_to_be_settled_and_readers_see_it_current(env):
    db, writer, _, merkle = env
    model = wide(300)
    queue_batch(writer, merkle, model)  # the root is built by this batch: written at once
    root_raw = stored_raw(db, merkle)[b"\x00"]
    assert marks(db, merkle) == [] and root_raw == expected_raw(model)[b"\x00"]

    change = {k: vh("new") for k in list(model)[:5]} | wide(3, "more", P7)
    queue_batch(writer, merkle, change)
    model |= change
    stored = stored_raw(db, merkle)
    assert stored[b"\x00"] == root_raw  # not rewritten
    assert marks(db, merkle) and {m[:1] for m in marks(db, merkle)} == {b"\x00"}  # P7's root is new
    assert_current(db, merkle, model)  # anti-entropy reads the root with its marks applied
    assert merkle.root_hash(0) == MerkleNode.decode(expected_raw(model)[b"\x00"]).hash() != blake2sum(root_raw[1:])

    settle(writer, merkle)
    assert marks(db, merkle) == [] and stored_raw(db, merkle) == expected_raw(model)


def test_a_batch_removing_entries_settles_the_root_first(env):
    """A removal can change a root's shape (a lone leaf moves up): its partition is written as
    before, marks included, while another partition of the batch stays lazy."""
    db, writer, _, merkle = env
    model = wide(300) | wide(300, 0, P7)
    queue_batch(writer, merkle, model)
    change = {k: vh("new") for k in [*list(model)[:5], *list(model)[-5:]]}
    queue_batch(writer, merkle, change)
    model |= change
    assert {m[:1] for m in marks(db, merkle)} == {b"\x00", b"\x07"}
    gone = list(model)[:40]
    queue_batch(writer, merkle, {k: b"" for k in gone} | {list(model)[-1]: vh("again")})
    model = {k: v for k, v in model.items() if k not in gone} | {list(model)[-1]: vh("again")}
    assert {m[:1] for m in marks(db, merkle)} == {b"\x07"}
    assert stored_raw(db, merkle)[b"\x00"] == expected_raw(model)[b"\x00"]
    assert_current(db, merkle, model)
    # Down to one entry: the lone leaf moves up to the root, with no mark left behind.
    last = next(k for k in model if k[0] == 0)
    queue_batch(writer, merkle, {k: b"" for k in model if k[0] == 0 and k != last})
    model = {k: v for k, v in model.items() if k[0] != 0 or k == last}
    assert stored_raw(db, merkle)[b"\x00"][0] == 3
    settle(writer, merkle)
    assert stored_raw(db, merkle) == expected_raw(model)


def test_settling_takes_the_roots_in_turn(env):
    db, writer, _, merkle = env
    parts = [bytes([p]) + b"\x11" * 31 for p in (0, 7, 200)]
    model = {k: v for part in parts for k, v in wide(300, 0, part).items()}
    queue_batch(writer, merkle, model)
    change = {k: vh("new") for k in list(model)[::50]}
    queue_batch(writer, merkle, change)
    roots = lambda: sorted({m[0] for m in marks(db, merkle)})  # noqa: E731
    assert roots() == [0, 7, 200]
    assert writer.run_sync(lambda tx: merkle.settle_in(tx, 2)) is True
    assert roots() == [200]
    queue_batch(writer, merkle, {k: vh("again") for k in list(model)[::60]})  # marks 0 and 7 again
    assert roots() == [0, 7, 200]
    # The next call starts where the last stopped, so a busy low partition cannot starve 200.
    assert writer.run_sync(lambda tx: merkle.settle_in(tx, 1)) is True
    assert roots() == [0, 7]
    assert writer.run_sync(lambda tx: merkle.settle_in(tx, 5)) is False
    model |= change | {k: vh("again") for k in list(model)[::60]}
    assert stored_raw(db, merkle) == expected_raw(model)


async def leave_marks(data: TableData, merkle: MerkleUpdater) -> None:
    """A settled trie of 300 entries in P0, then changes to some of them, applied but not settled."""
    await data.merge_many([Reg(P0, f"k{i}".encode(), i) for i in range(300)])
    await merkle.flush()
    await data.merge_many([Reg(P0, f"k{i}".encode(), 1000 + i) for i in range(0, 300, 7)])
    while await merkle.process_batch():
        pass


async def test_marks_outlive_a_restart_and_the_worker_settles_them_once_idle(env):
    from garagekv.util.background import WorkerState

    db, writer, data, merkle = env
    await leave_marks(data, merkle)
    assert marks(db, merkle)
    before = merkle.root_hash(0)
    again = MerkleUpdater(db, writer, data)  # a restarted node: nothing in memory
    assert again.root_hash(0) == before and again.progress()["queue"] == 0
    assert await again.work() == WorkerState.IDLE  # an empty queue: the roots are settled
    assert marks(db, merkle) == [] and again.root_hash(0) == before
    with db.read() as txn:
        assert MerkleNode.decode(txn.get(b"\x00", db=merkle.tree)).hash() == before


async def test_rebuild_drops_the_marks(env):
    db, writer, data, merkle = env
    await leave_marks(data, merkle)
    before = merkle.root_hash(0)
    assert marks(db, merkle)
    await merkle.rebuild()
    assert marks(db, merkle) == []
    await merkle.flush()
    assert merkle.root_hash(0) == before


async def test_a_step_stops_at_its_budget_while_writes_wait_and_leaves_the_rest_queued(env, monkeypatch):
    """A Merkle step shares its group commit with writes: while others wait, it stops once
    ``STEP_BUDGET`` is spent (here at once: one entry, one root per step); alone it does all."""
    db, writer, data, merkle = env
    parts = [bytes([p]) + b"\x11" * 31 for p in (0, 7, 200)]
    await data.merge_many([Reg(part, f"k{i}".encode(), i) for part in parts for i in range(100)])
    await merkle.flush()
    await data.merge_many([Reg(part, f"k{i}".encode(), 1000 + i) for part in parts for i in range(0, 100, 10)])
    assert merkle.todo_len() == 30
    done = merkle.done

    monkeypatch.setattr("garagekv.table.merkle.STEP_BUDGET", 0.0)
    waiting = True
    monkeypatch.setattr(writer, "others_waiting", lambda: waiting)
    assert await merkle.process_batch() == 30  # saw them all, applied one
    assert merkle.todo_len() == 29 and merkle.done == done + 1
    while await merkle.process_batch():
        pass
    assert merkle.done == done + 30
    assert sorted({m[0] for m in marks(db, merkle)}) == [0, 7, 200]
    assert await writer.submit(merkle.settle_in) is True  # one root of the four it may take
    assert sorted({m[0] for m in marks(db, merkle)}) == [7, 200]

    waiting = False
    await data.merge_many([Reg(part, f"k{i}".encode(), 2000 + i) for part in parts for i in range(0, 100, 5)])
    assert await merkle.process_batch() == 60 and merkle.todo_len() == 0  # alone: the whole batch
    assert await writer.submit(merkle.settle_in) is False  # and every root
    entries = {k: blake2sum(v) for k, v in _all(db, data)}
    assert stored_nodes(db, merkle) == expected_nodes(entries)
