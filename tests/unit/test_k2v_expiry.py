"""Expiring values on one node's real LMDB: the expiry index follows every item change in the same
transaction, and the expiry worker turns due values into tombstones (counters drop, pollers wake)
without touching anything else, and sleeps until the next expiry."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.expiry import FALLBACK_STEP_MS, LINGER_MS, ExpiryWorker
from garagekv.model.k2v.expiry_index import ALWAYS, SCAN_LIMIT, index_key
from garagekv.model.k2v.item import K2VItem, partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.schema import ItemFilter
from garagekv.model.k2v.txn import EXISTS, PUT, READ, VALUE, Compare, Txn, TxnOp, evaluate
from garagekv.util.background import WorkerState
from garagekv.util.codec import blake2sum
from garagekv.util.time import now_ms
from tests.support.standalone import NODE, NODE_ID, StandaloneModel

BUCKET = b"\x07" * 32
PK = "p"


class Opened(StandaloneModel):
    def __init__(self, path) -> None:
        super().__init__(path)
        self.k2v = self.model.k2v
        self.index = self.model.expiry_index
        self.clock_ms = now_ms()
        # The model's worker, on a clock the test moves (it is not started: steps run by hand).
        self.worker = ExpiryWorker(self.index, self.model.store, self.model.items, clock=lambda: self.clock_ms)

    def entries(self) -> list[tuple[int, bytes]]:
        with self.db.read() as txn:
            return [(int.from_bytes(k[:8], "big"), bytes(v)) for k, v in txn.cursor(db=self.index.tree)]

    def raw_item(self, sk: str) -> K2VItem:
        item = self.model.items.data.get(partition_hash(BUCKET, PK) + sk.encode())
        assert item is not None
        return item


@pytest.fixture
def opened(tmp_path):
    o = Opened(tmp_path / "db")
    yield o
    o.close()


async def put(o: Opened, sk: str, value: bytes | None, ct=None, ttl: int | None = None) -> K2VItem:
    await o.k2v.insert(BUCKET, InsertedItem(PK, sk, ct, value, ttl))
    item = await o.k2v.read_item(BUCKET, PK, sk)
    assert item is not None
    return item


async def counters(o: Opened) -> dict[str, int]:
    await o.model.counter_queue.flush()
    page, filt = await o.k2v.read_index(BUCKET, RangeQuery())
    if not page.entries:
        return {}
    ((_, entry),) = page.entries
    return o.k2v.counter_values(entry, filt)


def tree_key(sk: str) -> bytes:
    return partition_hash(BUCKET, PK) + sk.encode()


# ---- the index ----------------------------------------------------------------------------------


async def test_index_follows_the_item_in_every_kind_of_change(opened):
    o = opened
    before = now_ms()
    item = await put(o, "a", b"v", ttl=60)
    ((exp, tk),) = o.entries()
    assert tk == tree_key("a") and before + 60_000 <= exp <= now_ms() + 60_000
    assert item.expires() == exp

    await put(o, "b", b"w")  # no TTL: no entry
    assert len(o.entries()) == 1 and len(o.index) == 1

    # A write with the token and no TTL replaces the value: it no longer expires.
    fresh = await put(o, "a", b"forever", ct=item.causal_context())
    assert o.entries() == [] and fresh.expires() is None

    # A replica's copy arriving (replication, repair, anti-entropy) is indexed the same way.
    other = K2VItem.new(BUCKET, PK, "c")
    other.update(99, None, b"x", 1000, expires=123_456)
    await o.model.items.data.merge(other)
    assert o.entries() == [(123_456, tree_key("c"))]

    # Tombstone GC (or an offload) deleting the item drops its entries.
    raw = o.model.items.data.get_raw(tree_key("c"))
    assert raw is not None
    assert await o.model.items.data.delete_if_equal_hash([(tree_key("c"), blake2sum(raw))]) == 1
    assert o.entries() == []


async def test_long_keys_fit_in_the_index(opened):
    sk = "k" * 479  # the longest sort key: the tree key is LMDB's whole key size
    await put(opened, sk, b"v", ttl=5)
    assert opened.entries()[0][1] == tree_key(sk)
    assert len(index_key(1, tree_key(sk))) == 40


# ---- reads ----------------------------------------------------------------------------------------


async def test_reads_hide_an_expired_value_before_its_tombstone_is_written(opened, monkeypatch):
    o = opened
    await put(o, "a", b"ttl", ttl=1)
    await put(o, "b", b"ttl", ttl=1)
    await put(o, "b", b"plain")  # concurrent, no TTL
    later = now_ms() + 1_500
    monkeypatch.setattr("garagekv.model.k2v.rpc.now_ms", lambda: later)
    a = await o.k2v.read_item(BUCKET, PK, "a")
    b = await o.k2v.read_item(BUCKET, PK, "b")
    assert a is not None and a.values() == [None] and a.expires() is None
    assert b is not None and b.values() == [None, b"plain"]
    page = await o.k2v.read_range(BUCKET, PK, RangeQuery(), ItemFilter(exclude_only_tombstones=True))
    assert [(sk, i.values()) for sk, i in page.entries] == [("b", [None, b"plain"])]
    page = await o.k2v.read_range(BUCKET, PK, RangeQuery(), ItemFilter(conflicts_only=True))
    assert [sk for sk, _ in page.entries] == ["b"]
    assert o.raw_item("a").values() == [b"ttl"]  # nothing written yet


# ---- the worker -----------------------------------------------------------------------------------


async def test_worker_expires_exactly_the_due_values_and_counters_drop(opened):
    o = opened
    await put(o, "a", b"ttl", ttl=1)
    await put(o, "b", b"before")
    await put(o, "b", b"ttl-b", ttl=1)  # same node, later dot: the earlier value must survive
    await put(o, "b", b"after")
    await put(o, "c", b"long", ttl=100)
    token_a = o.raw_item("a").causal_context()
    assert await counters(o) == {"entries": 3, "conflicts": 1, "values": 5, "bytes": 23}

    assert await o.worker.work() is not None
    assert o.worker.expired == 0 and o.worker._next_ms == min(e for e, _ in o.entries())

    o.clock_ms += 1_000 + 1_000  # past the 1 s TTLs (write times are at most the test's start + 1 s)
    await o.worker.work()
    assert o.worker.expired == 2
    a, b, c = o.raw_item("a"), o.raw_item("b"), o.raw_item("c")
    assert a.values() == [None] and a.is_tombstone()
    assert a.causal_context().is_newer_than(token_a)  # the worker's own tombstone dot
    assert b.values() == [b"before", None, b"after"]
    assert c.values() == [b"long"]
    assert [tk for _, tk in o.entries()] == [tree_key("c")]
    assert await counters(o) == {"entries": 2, "conflicts": 1, "values": 3, "bytes": 15}

    await o.worker.work()  # nothing left due: nothing written again
    assert o.worker.expired == 2


async def test_pollers_wake_when_the_worker_expires_the_value(opened):
    o = opened
    item = await put(o, "a", b"ttl", ttl=1)
    waiter = asyncio.create_task(o.k2v.poll_item(BUCKET, PK, "a", item.causal_context(), timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    o.clock_ms += 2_000
    await o.worker.work()
    woken = await asyncio.wait_for(waiter, 5)
    assert woken is not None and woken.values() == [None]


async def test_worker_leaves_the_tombstone_to_the_first_live_storage_node(opened, monkeypatch):
    o = opened
    other = b"\x01" * 32
    await put(o, "a", b"ttl", ttl=1)
    replication = o.model.items.replication
    monkeypatch.setattr(replication, "storage_nodes", lambda ph: [other, NODE_ID])
    up = {other: True}
    o.model.items.peers = SimpleNamespace(is_up=lambda n: up.get(n, True), rtt_of=lambda n: None)
    assert o.worker.rank(tree_key("a")[:32]) == 1

    o.clock_ms += 2_000
    await o.worker.work()
    assert o.worker.expired == 0 and o.worker.deferred == 1
    exp = o.entries()[0][0]
    assert o.worker._next_ms == exp + FALLBACK_STEP_MS

    o.clock_ms = exp + FALLBACK_STEP_MS  # the first node did not do it: this one does
    await o.worker.work()
    assert o.worker.expired == 1 and o.entries() == []

    await put(o, "b", b"ttl", ttl=1)
    up[other] = False  # the first node is down: this one acts at once
    o.clock_ms += 2_000
    await o.worker.work()
    assert o.worker.expired == 2


async def test_worker_sleeps_until_the_first_expiry_and_only_an_earlier_one_wakes_it(opened):
    o = opened
    woken: list[int] = []
    o.index.on_earlier = lambda: woken.append(1)
    await o.k2v.insert_many(BUCKET, [InsertedItem(PK, f"k{i}", None, b"v", 10 + i) for i in range(200)])
    await o.worker.work()
    first = min(e for e, _ in o.entries())
    assert o.worker._next_ms == first
    # What wait_for_work arms before sleeping: wake at the first expiry.
    sleeper = asyncio.create_task(o.worker.wait_for_work())
    await asyncio.sleep(0)
    assert o.index.wake_before_ms == first
    woken.clear()
    await put(o, "later", b"v", ttl=1000)  # after the first one: nobody is woken
    assert woken == []
    await put(o, "sooner", b"v", ttl=1)  # before it: the worker is woken
    assert woken == [1]
    sleeper.cancel()
    o.index.wake_before_ms = ALWAYS


async def test_pending_expiries_survive_a_restart(tmp_path):
    o = Opened(tmp_path / "db")
    try:
        await put(o, "a", b"ttl", ttl=1)
        await put(o, "b", b"ttl", ttl=3600)
    finally:
        o.close()
    o = Opened(tmp_path / "db")
    try:
        assert [tk for _, tk in o.entries()] == [tree_key("a"), tree_key("b")]
        o.clock_ms += 2_000
        await o.worker.work()
        assert o.raw_item("a").values() == [None] and o.raw_item("b").values() == [b"ttl"]
        assert [tk for _, tk in o.entries()] == [tree_key("b")]
    finally:
        o.close()


async def test_stale_entries_are_dropped_without_writing(opened):
    o = opened

    def add_stale(tx):
        tx.put(o.index.tree, index_key(5, tree_key("gone")), tree_key("gone"))

    await o.model.store.writer.submit(add_stale)
    await o.worker.work()
    assert o.entries() == [] and o.worker.expired == 0


async def test_expiry_on_a_delete_is_refused():
    with pytest.raises(ValueError):
        K2VItem.new(BUCKET, PK, "a").update(NODE, CausalContext(), None, 0, expires=5)


async def test_entries_left_to_another_node_do_not_hide_this_nodes_own(opened, monkeypatch):
    """More due entries than a step takes wait for another node: this node's own due entry,
    behind them in the index, is still expired in the same step."""
    o = opened
    other = b"\x01" * 32
    mine = partition_hash(BUCKET, PK)
    monkeypatch.setattr(
        o.model.items.replication, "storage_nodes", lambda ph: [NODE_ID] if ph[0] == mine[0] else [other, NODE_ID]
    )
    pks = [f"d{i}" for i in range(3000) if partition_hash(BUCKET, f"d{i}")[0] != mine[0]][:2000]
    await o.k2v.insert_many(BUCKET, [InsertedItem(pk, "x", None, b"v", 1) for pk in pks])
    await asyncio.sleep(0.01)
    await put(o, "a", b"mine", ttl=1)  # written later: its index entry comes after all of them
    o.clock_ms += 2_000
    await o.worker.work()
    assert o.raw_item("a").values() == [None]
    assert o.worker.expired == 1 and o.worker.deferred == 2000


# ---- transactions (the consensus path of conditional writes, reads and txn) -------------------------


def test_transactions_see_expired_values_as_tombstones_and_apply_a_puts_ttl():
    it = K2VItem.new(BUCKET, PK, "a")
    it.update(1, None, b"ttl", 100, expires=5_000)
    it.update(2, None, b"kept", 100)
    only = K2VItem.new(BUCKET, PK, "b")
    only.update(1, None, b"ttl", 100, expires=5_000)
    state = {"a": it, "b": only}

    def run(txn: Txn, now: int):
        return evaluate(txn, state, BUCKET, PK, 9, 10_000, 1 << 20, {}, now)

    before = run(Txn((Compare("b", EXISTS, exists=True),), (TxnOp(READ, "a"),)), 4_999)
    assert before.succeeded and before.results[0].item.values() == [b"ttl", b"kept"]
    compares = (Compare("b", EXISTS, exists=False), Compare("a", VALUE, value=b"kept"))
    after = run(Txn(compares, (TxnOp(READ, "a"),)), 5_000)
    assert after.succeeded and after.results[0].item.values() == [None, b"kept"]

    put = run(Txn(success=(TxnOp(PUT, "b", b"new", 60), TxnOp(READ, "b"))), 7_000)
    (written,) = put.written
    assert written.values() == [b"new"] and written.expires() == 7_000 + 60_000
    assert put.results[1].item.expires() == 67_000
    plain = run(Txn(success=(TxnOp(PUT, "b", b"new"),)), 7_000)
    assert plain.written[0].expires() is None


# ---- batches ---------------------------------------------------------------------------------------


async def test_many_values_expiring_together_are_written_in_one_step_and_one_replication(opened):
    """500 values due in the same second: one step writes every tombstone in one transaction and
    hands them to replication in one call; counters drop by all of them, and no entry is left."""
    o = opened
    pks = [f"p{i % 7}" for i in range(500)]  # a few partitions, many items each
    await o.k2v.insert_many(BUCKET, [InsertedItem(pk, f"k{i:04d}", None, b"v", 1) for i, pk in enumerate(pks)])
    await o.model.counter_queue.flush()
    page, filt = await o.k2v.read_index(BUCKET, RangeQuery())
    assert sum(o.k2v.counter_values(e, filt)["entries"] for _, e in page.entries) == 500
    commits = o.model.store.writer.commits
    sent: list[list[K2VItem]] = []
    o.worker._replicate = sent.append

    o.clock_ms += 2_000
    assert await o.worker.work() is WorkerState.IDLE
    assert o.worker.expired == 500 and len(sent) == 1 and len(sent[0]) == 500
    assert o.model.store.writer.commits == commits + 1
    assert o.entries() == []
    for i, pk in enumerate(pks):
        item = o.model.items.data.get(partition_hash(BUCKET, pk) + f"k{i:04d}".encode())
        assert item is not None and item.is_tombstone() and item.values() == [None]
    await o.model.counter_queue.flush()
    page, _ = await o.k2v.read_index(BUCKET, RangeQuery())
    assert page.entries == []  # every partition's counters are back to zero


async def test_a_full_batch_is_written_at_once_and_the_rest_follows(opened):
    """More due values than one step takes: the worker says it is busy and the next step writes
    the rest, without waiting for the linger delay."""
    o = opened
    n = SCAN_LIMIT + 10
    await o.k2v.insert_many(BUCKET, [InsertedItem(f"q{i % 3}", f"k{i:05d}", None, b"v", 1) for i in range(n)])
    sent: list[list[K2VItem]] = []
    o.worker._replicate = sent.append
    o.clock_ms += 2_000
    assert await o.worker.work() is WorkerState.BUSY
    assert await o.worker.work() is WorkerState.IDLE
    assert [len(s) for s in sent] == [SCAN_LIMIT, 10] and o.entries() == []


async def test_the_first_due_value_waits_for_later_ones_before_a_step(opened):
    """A value that has just come due waits up to ``LINGER_MS`` so that those due right after it
    share its step; a value due for that long is written at once."""
    o = opened
    await put(o, "a", b"v", ttl=1)
    (exp, _) = o.entries()[0]
    o.clock_ms = exp  # due, but only just
    await o.worker.work()
    assert o.worker.expired == 0 and o.raw_item("a").values() == [b"v"]
    assert o.worker._next_ms == exp + LINGER_MS
    await put(o, "b", b"w", ttl=1)  # comes due during the wait: same step
    await put(o, "c", b"x", ttl=60)  # not due by then: left for later
    o.clock_ms = exp + LINGER_MS
    await o.worker.work()
    assert o.worker.expired == 2
    assert o.raw_item("a").values() == [None] and o.raw_item("b").values() == [None]
    assert o.raw_item("c").values() == [b"x"] and [tk for _, tk in o.entries()] == [tree_key("c")]


async def test_counters_sum_every_change_of_a_transaction(opened):
    """Counter deltas are summed per partition over a transaction and written once at its end:
    items written, rewritten and deleted in one job count as if changed one by one."""
    o = opened
    await o.k2v.insert_many(BUCKET, [InsertedItem(PK, f"k{i}", None, b"abc", None) for i in range(10)])
    ct = (await o.k2v.read_item(BUCKET, PK, "k0")).causal_context()
    changes = [InsertedItem(PK, "k0", ct, None, None), InsertedItem(PK, "k1", None, b"second", None)]
    changes += [InsertedItem("other", f"o{i}", None, b"xy", None) for i in range(3)]
    await o.k2v.insert_many(BUCKET, changes)
    await o.model.counter_queue.flush()
    page, filt = await o.k2v.read_index(BUCKET, RangeQuery())
    got = {e.partition_key: o.k2v.counter_values(e, filt) for _, e in page.entries}
    assert got[PK] == {"entries": 9, "conflicts": 1, "values": 10, "bytes": 33}
    assert got["other"] == {"entries": 3, "conflicts": 0, "values": 3, "bytes": 6}
