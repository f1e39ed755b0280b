"""Range sums (garagekv/table/range_sums.py) against a model computed from scratch.

Whatever sequence of inserts, changes and deletes reached a set of entries, the stored chunk
sums, prefix sums and range sums must be those of that set alone; a rebuild must give the same
sums as the writes, also while writes go on during it.
"""

from __future__ import annotations

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.table.range_sums import FORMAT, LEVELS, META, Hasher, RangeSums, pack_sum

MASK = (1 << 256) - 1
HASHER = Hasher(b"test key", fanout_bits=1)  # a boundary every 2 keys per level: deep chunks
PARTITIONS = (3, 4, 200)


def canonical(k: bytes, stored: bytes) -> bytes:
    """The entries' canonical bytes depend on their key too (as a packed K2V item's do)."""
    return stored + k[-2:]


def element(k: bytes, stored: bytes) -> int:
    return HASHER.element(k, canonical(k, stored))


def tree_key(p: int, i: int) -> bytes:
    return bytes([p]) + b"\x00" * 31 + i.to_bytes(2, "big")


class Store:
    """A data tree and its range sums on real LMDB, plus the set they should describe."""

    def __init__(self, path) -> None:
        self.db = Database(path, map_size=64 << 20)
        self.writer = GroupCommitWriter(self.db)
        self.data = self.db.tree("t:data")
        self.sums = RangeSums(self.db, "t", self.data, canonical)
        self.sums.open(b"test key")
        self.sums.hasher = HASHER
        self.model: dict[bytes, bytes] = {}

    def close(self) -> None:
        self.writer.close()
        self.db.close()

    def write(self, k: bytes, v: bytes | None) -> None:
        def job(tx):
            old = tx.get(self.data, k)
            if v is None:
                if old is not None:
                    tx.delete(self.data, k)
            else:
                tx.put(self.data, k, v)
            # change_in takes canonical bytes, as TableData passes them.
            before = None if old is None else canonical(k, old)
            self.sums.change_in(tx, k, before, None if v is None else canonical(k, v))

        self.writer.run_sync(job)
        if v is None:
            self.model.pop(k, None)
        else:
            self.model[k] = v

    def expected_chunks(self, p: int, level: int) -> list[tuple[bytes, int]]:
        keys = sorted(k for k in self.model if k[0] == p)
        out: list[tuple[bytes, int]] = [(b"", 0)]
        for k in keys:
            if HASHER.rank(k) >= level:
                out.append((k, 0))
            start, s = out[-1]
            out[-1] = (start, (s + element(k, self.model[k])) & MASK)
        return out

    def assert_sums(self) -> None:
        with self.db.read() as txn:
            # Nothing but the meta record and chunks of levels 1..LEVELS.
            assert all(k == META or 1 <= k[0] <= LEVELS for k, _ in txn.cursor(db=self.sums.tree))
        for p in PARTITIONS:
            for level in range(1, LEVELS + 1):
                assert stored_chunks(self, p, level) == self.expected_chunks(p, level)

    def expected_prefix(self, p: int, x: bytes | None) -> int:
        return sum(element(k, v) for k, v in self.model.items() if k[0] == p and (x is None or k < x)) & MASK


def stored_chunks(store: Store, p: int, level: int) -> list[tuple[bytes, int]]:
    with store.db.read() as txn:
        got = store.sums.chunks(txn, p, level, None, None)
    # A partition's start is kept at sum 0 once its entries are gone: the same as no record.
    return got if got else [(b"", 0)]


ops = st.lists(
    st.tuples(st.sampled_from(PARTITIONS), st.integers(0, 40), st.sampled_from([None, b"a", b"b", b"ccc"])),
    max_size=120,
)


#: Entries written before the operations, so that these change and delete existing entries (and
#: chunk boundaries) as often as they add new ones.
bases = st.sets(st.tuples(st.sampled_from(PARTITIONS), st.integers(0, 40)), max_size=80)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=bases, ops=ops, probes=st.lists(st.integers(0, 41), max_size=6))
def test_sums_are_those_of_the_final_set(tmp_path_factory, base, ops, probes):
    store = Store(tmp_path_factory.mktemp("sums"))
    try:
        for p, i in sorted(base):
            store.write(tree_key(p, i), b"base")
        for p, i, v in ops:
            store.write(tree_key(p, i), v)
        with store.db.read() as txn:
            assert all(k == META or 1 <= k[0] <= LEVELS for k, _ in txn.cursor(db=store.sums.tree))
            for p in PARTITIONS:
                for level in range(1, LEVELS + 1):
                    want = store.expected_chunks(p, level)
                    assert stored_chunks(store, p, level) == want
                    # The chunks starting in a range another node asks about (bounds: probes).
                    cuts = sorted({tree_key(p, i) for i in probes})
                    for lo, hi in zip([None, *cuts], [*cuts, None], strict=True):
                        got = store.sums.chunks(txn, p, level, lo, hi)
                        assert [c for c in got if c != (b"", 0)] == [
                            c
                            for c in want
                            if c != (b"", 0) and (lo is None or (c[0] or b"\x00") >= lo) and (hi is None or c[0] < hi)
                        ]
                # This node's entries of a range, with their elements, at most ``limit`` of them.
                entries = sorted((k, element(k, v)) for k, v in store.model.items() if k[0] == p)
                for i in probes:
                    lo = tree_key(p, i)
                    assert store.sums.keys(txn, p, lo, None, 3) == [e for e in entries if e[0] >= lo][:3]
                    assert store.sums.keys(txn, p, None, lo, 100) == [e for e in entries if e[0] < lo]
                assert store.sums.partition_sum(txn, p) == store.expected_prefix(p, None)
                for i in probes:
                    x = tree_key(p, i)
                    assert store.sums.prefix_sum(txn, p, x) == store.expected_prefix(p, x)
                # Ranges chosen by another node: every probe a bound, at every level.
                bounds = [b"", *sorted({tree_key(p, i) for i in probes})]
                edges = [*bounds, None]
                want = [
                    (store.expected_prefix(p, edges[j + 1]) - store.expected_prefix(p, lo)) & MASK
                    for j, lo in enumerate(bounds)
                ]
                for level in range(1, LEVELS + 1):
                    assert store.sums.sums_of(txn, p, level, bounds, None) == want
            keys = [tree_key(p, i) for p, i, _ in ops[:10]]
            assert store.sums.elements_of(txn, keys) == [
                None if k not in store.model else element(k, store.model[k]) for k in keys
            ]
    finally:
        store.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=ops, during=ops, batch=st.integers(1, 7))
def test_a_rebuild_gives_the_sums_of_the_writes_also_with_writes_during_it(tmp_path_factory, before, during, batch):
    store = Store(tmp_path_factory.mktemp("rebuild"))
    try:
        for p, i, v in before:
            store.write(tree_key(p, i), v)
        store.writer.run_sync(store.sums.start_rebuild_in)
        more = True
        for n, (p, i, v) in enumerate(during):
            store.write(tree_key(p, i), v)
            if more and n % 3 == 0:
                more = store.writer.run_sync(lambda tx: store.sums.rebuild_step_in(tx, batch))
        while store.writer.run_sync(lambda tx: store.sums.rebuild_step_in(tx, batch)):
            pass
        assert not store.sums.rebuilding
        store.assert_sums()
    finally:
        store.close()


def test_writes_during_a_rebuild_are_counted_up_to_its_progress_and_left_to_it_beyond(tmp_path):
    store = Store(tmp_path / "s")
    try:
        for i in range(0, 80, 2):
            store.write(tree_key(3, i), b"v")
        store.writer.run_sync(store.sums.start_rebuild_in)
        assert store.sums.left_to_rebuild() == 40
        store.writer.run_sync(lambda tx: store.sums.rebuild_step_in(tx, 20))
        assert store.sums.progress == tree_key(3, 38) and store.sums.rebuilt == 20
        assert store.sums.left_to_rebuild() == 20
        store.write(tree_key(3, 38), b"changed at the progress")  # already added: counted now
        store.write(tree_key(3, 40), b"changed past it")  # added by the rebuild when it gets there
        # New keys below the progress, some of them boundaries whose chunks run past it: a split
        # adds up only what the rebuild has added so far.
        for i in range(1, 38, 2):
            store.write(tree_key(3, i), b"new")
        while store.writer.run_sync(lambda tx: store.sums.rebuild_step_in(tx, 20)):
            pass
        assert store.sums.rebuilt == 40 and store.sums.left_to_rebuild() == 0
        store.assert_sums()
    finally:
        store.close()


def test_a_repair_survives_a_restart(tmp_path):
    """``repair merkle`` (``start_rebuild_in``) and a rebuild that ``open`` starts are both
    recorded, so a node restarted before the rebuild's first step still rebuilds."""
    store = Store(tmp_path / "r")
    try:
        for i in range(10):
            store.write(tree_key(3, i), b"v")
        store.writer.run_sync(store.sums.start_rebuild_in)
    finally:
        store.close()
    db = Database(tmp_path / "r", map_size=64 << 20)
    try:
        reopened = RangeSums(db, "t", db.tree("t:data"), canonical)
        assert reopened.open(b"test key") is True and reopened.progress == b""
        rekeyed = RangeSums(db, "t", db.tree("t:data"), canonical)
        assert rekeyed.open(b"another key") is True
        again = RangeSums(db, "t", db.tree("t:data"), canonical)
        assert again.open(b"another key") is True and again.progress == b""
    finally:
        db.close()


def test_elements_and_ranks_never_change_without_a_format_change():
    """Every node of a cluster must compute the same elements and ranks, across versions too: a
    change to how they are computed needs a new ``FORMAT`` (which rebuilds the sums)."""
    h = Hasher(b"a cluster's key")
    assert FORMAT == 1
    assert h.fingerprint.hex() == "8523fab99fe16c96"
    element = h.element(b"\x07partition-hash/sort-key", b"canonical bytes")
    assert pack_sum(element).hex() == "855d7e3eabfd13d89490d076279af57d2c88943e7d96f0958dd95b8acef5803d"
    # The keys of rank 1 or more among the first 3,000 of a partition: about one in 64, and one in
    # 4,096 of rank 2 or more.
    ranked = [(i, h.rank(tree_key(5, i))) for i in range(3000) if h.rank(tree_key(5, i))]
    assert len(ranked) == 42
    assert ranked[:4] == [(107, 1), (188, 1), (270, 1), (272, 1)]
    assert [r for r in ranked if r[1] >= 2] == [(2419, 2), (2716, 2)]


def test_a_changed_key_or_format_starts_a_rebuild_and_a_restart_resumes_it(tmp_path):
    store = Store(tmp_path / "a")
    for i in range(30):
        store.write(tree_key(3, i), b"v")
    store.close()
    db = Database(tmp_path / "a", map_size=64 << 20)
    try:
        same = RangeSums(db, "t", db.tree("t:data"), lambda k, v: v)
        assert same.open(b"test key") is False  # same key: nothing to do
        other = RangeSums(db, "t", db.tree("t:data"), lambda k, v: v)
        assert other.open(b"another key") is True
        writer = GroupCommitWriter(db)
        assert writer.run_sync(lambda tx: other.rebuild_step_in(tx, 10)) is True
        writer.close()
        resumed = RangeSums(db, "t", db.tree("t:data"), lambda k, v: v)
        assert resumed.open(b"another key") is True
        assert resumed.progress == other.progress and resumed.progress == tree_key(3, 9)
    finally:
        db.close()


def test_a_node_of_the_merkle_version_drops_its_tries_and_rebuilds(tmp_path):
    db = Database(tmp_path / "old", map_size=64 << 20)
    try:
        env = db.environment
        data = db.tree("t:data")
        legacy_trees = [db.tree(f"t:{legacy}") for legacy in ("merkle", "merkle_todo", "merkle_dirty")]
        with env.begin(write=True) as txn:
            txn.put(tree_key(3, 1), b"v", db=data)
            for tree in legacy_trees:
                txn.put(b"\x03", b"node", db=tree)
        sums = RangeSums(db, "t", data, lambda k, v: v)
        assert sums.open(b"test key") is True and sums.progress == b""
        with env.begin() as txn:
            for legacy in ("merkle", "merkle_todo", "merkle_dirty"):
                with pytest.raises(lmdb.NotFoundError):
                    env.open_db(f"t:{legacy}".encode(), txn=txn, create=False)
        empty = RangeSums(db, "u", db.tree("u:data"), lambda k, v: v)
        assert empty.open(b"test key") is False  # no entries: nothing to rebuild
    finally:
        db.close()
