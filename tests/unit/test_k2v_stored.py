"""K2V items in their LMDB tree without their bucket id and sort key: packing is lossless, items
stored before are read as they are, bucket numbers survive a restart and a rolled-back write,
and everything above TableData (hashes, anti-entropy, GC, consensus reads) sees canonical bytes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.stored import PACKED, BucketNumbers, ItemStoredForm, str_end, str_header
from garagekv.table.anti_entropy import TableSyncer
from garagekv.table.data import TableData
from garagekv.table.schema import BaseSchema
from garagekv.table.sums_worker import RangeSumsWorker
from garagekv.util.codec import blake2sum
from garagekv.util.errors import StorageError

B1, B2 = bytes(range(32)), bytes(range(100, 132))


class Schema(BaseSchema):
    name = "k2v_item"

    def __init__(self, stored_form: ItemStoredForm | None) -> None:
        self.stored_form = stored_form

    def decode(self, data: bytes) -> K2VItem:
        return K2VItem.decode(data)


@pytest.fixture
def env(tmp_path):
    made: dict[str, tuple] = {}

    def make(packed: bool = True, name: str = "db"):
        if name not in made:  # hypothesis examples share the fixture
            db = Database(tmp_path / name, map_size=64 << 20, fsync=False)
            writer = GroupCommitWriter(db)
            form = ItemStoredForm(BucketNumbers(db)) if packed else None
            made[name] = (db, writer, TableData(db, writer, Schema(form)), form)
        return made[name]

    yield make
    for db, writer, _, _ in made.values():
        writer.close()
        db.close()


def item(bucket: bytes, pk: str, sk: str, value: bytes | None = b"v", node: int = 7, expires: int | None = None):
    it = K2VItem.new(bucket, pk, sk)
    it.update(node, None, value, 1_700_000_000_000, expires=expires)
    return it


def stored(db: Database, data: TableData, key: bytes) -> bytes:
    with db.read() as txn:
        return txn.get(key, db=data.store)


def test_string_headers_match_msgpack():
    import msgpack

    for n in (0, 1, 31, 32, 255, 256, 479, 65535, 65536):
        s = "x" * n
        packed = msgpack.packb(s, use_bin_type=True)
        assert packed == str_header(n) + s.encode()
        assert str_end(packed, 0) == len(packed)
    with pytest.raises(ValueError):
        str_end(b"\xc4\x01x", 0)  # bin, not str
    with pytest.raises(ValueError):
        str_end(b"\xa5ab", 0)  # truncated


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pk=st.text(min_size=0, max_size=300),
    sk=st.text(min_size=0, max_size=300),
    value=st.none() | st.binary(max_size=200),
    expires=st.none() | st.integers(1, 2**40),
    bucket=st.sampled_from([B1, B2]),
)
def test_packing_is_lossless_and_saves_the_bucket_id_and_sort_key(env, pk, sk, value, expires, bucket):
    db, writer, data, form = env()
    it = item(bucket, pk, sk, value, expires=expires if value is not None else None)
    raw = it.encode()
    packed = writer.run_sync(lambda tx: form.pack(tx, it.tree_key(), raw))
    assert packed[0] == raw[0] | PACKED
    # the array header, the bucket id (bin 8) and the sort key go; a one-byte bucket number comes
    assert len(packed) == len(raw) - 1 - 34 - len(str_header(len(sk.encode()))) - len(sk.encode()) + 1
    assert form.unpack(it.tree_key(), packed) == raw
    assert form.unpack(it.tree_key(), raw) == raw  # stored before: read as it is


def test_what_does_not_fit_the_layout_is_stored_as_it_is(env):
    db, writer, data, form = env()
    it = item(B1, "p", "s")
    raw = it.encode()
    # a tree key whose sort key is not the item's, a foreign format, a short key
    for key, value in ((it.tree_key() + b"x", raw), (it.tree_key(), b"\x05" + raw[1:]), (b"short", raw)):
        assert writer.run_sync(lambda tx, k=key, v=value: form.pack(tx, k, v)) == value
    assert writer.run_sync(lambda tx: form.pack(tx, it.tree_key(), b"")) == b""


def test_a_malformed_packed_value_is_an_error(env):
    db, writer, data, form = env()
    it = item(B1, "p", "s")
    packed = writer.run_sync(lambda tx: form.pack(tx, it.tree_key(), it.encode()))
    with pytest.raises(StorageError, match="malformed"):
        form.unpack(it.tree_key(), packed[:2])
    with pytest.raises(StorageError, match="bucket number 99"):
        form.unpack(it.tree_key(), bytes([packed[0], 99]) + packed[2:])


def test_bucket_numbers_survive_a_restart_and_a_rolled_back_write(env, tmp_path):
    db, writer, data, form = env(name="a")
    a, b = item(B1, "p", "s"), item(B2, "p", "s")

    def fail(tx):
        form.pack(tx, a.tree_key(), a.encode())  # B1 gets a number here...
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        writer.run_sync(fail)
    # ... but its entry was rolled back with the write: the next write of B1 puts it again.
    writer.run_sync(lambda tx: data.merge_in(tx, a))
    writer.run_sync(lambda tx: data.merge_in(tx, b))
    assert stored(db, data, a.tree_key())[0] & PACKED and stored(db, data, b.tree_key())[0] & PACKED
    numbers = dict(form.buckets.by_id)
    assert len(set(numbers.values())) == 2
    writer.close()
    db.close()
    db2 = Database(tmp_path / "a", map_size=64 << 20, fsync=False)
    try:
        form2 = ItemStoredForm(BucketNumbers(db2))
        assert form2.buckets.by_id == numbers and form2.buckets.next > max(numbers.values())
        data2 = TableData(db2, GroupCommitWriter(db2), Schema(form2))
        assert data2.get_raw(a.tree_key()) == a.encode() and data2.get_raw(b.tree_key()) == b.encode()
        data2.writer.close()
    finally:
        db2.close()


async def test_every_read_gives_canonical_bytes_and_hashes_are_of_them(env):
    db, writer, data, form = env()
    items = [item(B1, "part", f"s{i:02d}", bytes([i]) * 10) for i in range(20)]
    await data.merge_many(items)
    old = item(B1, "part", "s99", b"old")  # written before packing existed: canonical bytes
    writer.run_sync(
        lambda tx: (
            tx.put(data.store, old.tree_key(), old.encode()),
            data.sums.change_in(tx, old.tree_key(), None, old.encode()),
        )
    )
    items.append(old)
    by_key = {it.tree_key(): it.encode() for it in items}
    for k, raw in by_key.items():
        s = stored(db, data, k)
        assert (s == raw) if k == old.tree_key() else (s[0] & PACKED and len(s) == len(raw) - 35 - 4 + 1)
        assert data.get_raw(k) == raw and data.get(k) == K2VItem.decode(raw)
        assert writer.run_sync(lambda tx, k=k: data.get_raw_in(tx, k)) == raw
        with db.read() as txn:
            assert data.get_raw_at(txn, k) == raw
    assert data.get_raw_many(list(by_key)) == list(by_key.values())
    ph = items[0].partition_hash()
    from garagekv.table.data import ScanRange

    assert dict(data.scan_raw(ScanRange(ph))) == {k[32:]: v for k, v in by_key.items()}
    assert [e for _, e in data.scan(ScanRange(ph, reverse=True, limit=3))] == [
        K2VItem.decode(by_key[k]) for k in sorted(by_key, reverse=True)[:3]
    ]
    assert {k: e.encode() for k, e in data.iter_all()} == by_key
    # The range sums count the canonical bytes; a rebuild reads them the same.
    sums = data.sums
    with db.read() as txn:
        root = sums.partition_sum(txn, ph[0])
        assert sums.elements_of(txn, list(by_key)) == [sums.hasher.element(k, v) for k, v in by_key.items()]
        assert sums.keys(txn, ph[0], None, None, 100) == [
            (k, sums.hasher.element(k, by_key[k])) for k in sorted(by_key)
        ]
    worker = RangeSumsWorker(data)
    await worker.rebuild()
    await worker.finish()
    with db.read() as txn:
        assert sums.partition_sum(txn, ph[0]) == root
    some = next(iter(by_key))
    # Deletion by hash (GC, offload) compares the canonical bytes' hash.
    assert await data.delete_if_equal_hash([(some, blake2sum(stored(db, data, some)))]) == 0
    assert await data.delete_if_equal_hash([(some, blake2sum(by_key[some]))]) == 1
    # An update merges into the unpacked entry and writes it packed again.
    newer = item(B1, "part", "s01", b"newer", node=8)
    await data.merge(newer)
    merged = K2VItem.decode(by_key[items[1].tree_key()])
    merged.merge(newer)
    assert data.get_raw(newer.tree_key()) == merged.encode()
    assert stored(db, data, newer.tree_key())[0] & PACKED


async def test_replicas_with_and_without_packing_agree(env):
    """A node that packs and one that does not (an earlier version) hold the same canonical
    bytes: equal range sums and equal anti-entropy digests."""
    _, wa, a, _ = env(packed=True, name="a")
    _, wc, c, _ = env(packed=True, name="c")
    _, wb, b, _ = env(packed=False, name="b")
    await c.merge(item(B1, "first", "x"))  # c numbers B1 first, a numbers B2 first
    items = [item(B2, f"p{i % 3}", f"s{i}", bytes([i])) for i in range(50)]
    for data in (a, b, c):
        await data.merge_many(items)
    assert stored(a.db, a, items[0].tree_key()) != stored(c.db, c, items[0].tree_key())  # other numbers
    await c.delete_if_equal_hash([(item(B1, "first", "x").tree_key(), blake2sum(item(B1, "first", "x").encode()))])
    syncers = [SimpleNamespace(data=data) for data in (a, b, c)]
    digests = [TableSyncer.local_digest(s) for s in syncers]  # what operators and tests compare
    assert digests[0] == digests[1] == digests[2] and digests[0]["items"] == 50
    ranges = [TableSyncer._read_range(s, b"", None, 100) for s in syncers]  # what offloading sends
    assert ranges[0] == ranges[1] == ranges[2] == sorted((it.tree_key(), it.encode()) for it in items)
