"""The coordinator's local K2V operations on a real LMDB: timestamps, counters, polls."""

from __future__ import annotations

import asyncio
import struct

import pytest

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.range import PAGE, RangeQuery
from garagekv.model.k2v.schema import ItemFilter
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.model.k2v.sub import Subscription
from garagekv.net.identity import node_number
from garagekv.rpc.layout import LayoutHistory
from garagekv.util.errors import ServiceUnavailable
from garagekv.util.time import now_ms
from tests.support import eventually
from tests.support.layouts import THREE, nid, with_nodes
from tests.support.seen_markers import claims_only_what_it_answered
from tests.support.standalone import NODE, StandaloneModel

BUCKET = b"\x07" * 32


class Opened(StandaloneModel):
    def __init__(self, path) -> None:
        super().__init__(path)
        self.store = self.model.k2v
        self.local = self.model.store


@pytest.fixture
def opened(tmp_path):
    o = Opened(tmp_path / "db")
    yield o
    o.close()


async def put(store, sk, value, ct=None, pk="p"):
    await store.insert(BUCKET, InsertedItem(pk, sk, ct, value))
    return await store.read_item(BUCKET, pk, sk)


async def test_timestamp_never_goes_back_across_restart_and_clock_steps(tmp_path):
    o = Opened(tmp_path / "db")
    future = now_ms() + 10**9  # as if the clock had been far ahead, then stepped back
    o.writer.run_sync(lambda tx: tx.put(o.local._local_ts, b"timestamp", struct.pack(">Q", future)))
    item = await put(o.store, "a", b"1")
    t1 = item.causal_context().get(NODE)
    assert t1 == future + 1
    o.close()

    o = Opened(tmp_path / "db")
    try:
        item = await put(o.store, "b", b"2")  # a different item still gets a later time
        assert item.causal_context().get(NODE) == t1 + 1
    finally:
        o.close()


async def test_counters_follow_items_in_the_same_transaction(opened):
    s = opened.store
    a = await put(s, "a", b"xyz")
    await put(s, "b", b"12")
    await put(s, "b", b"345")  # no token: a conflict
    await opened.model.counter_queue.flush()
    page, filt = await s.read_index(BUCKET, RangeQuery())
    ((pk, entry),) = page.entries
    assert pk == "p" and filt.nodes == (NODE,)
    assert s.counter_values(entry, filt) == {"entries": 2, "conflicts": 1, "values": 3, "bytes": 8}
    await put(s, "a", None, a.causal_context())  # delete a with its token
    b = await s.read_item(BUCKET, "p", "b")
    await put(s, "b", None, b.causal_context())
    await opened.model.counter_queue.flush()
    page, _ = await s.read_index(BUCKET, RangeQuery())
    assert page.entries == []  # all-zero counters are hidden
    assert await s.bucket_is_empty(BUCKET)


async def test_counter_queue_holds_the_latest_entry_per_partition(opened):
    s = opened.store
    for i in range(3):
        await put(s, f"k{i}", b"v" * (i + 1))
    q = opened.model.counter_queue
    assert len(q) == 1  # three writes, one queued entry: each supersedes the previous one
    ((_, raw),) = q._peek()
    entry = opened.model.counters.schema.decode(raw)
    # only counters that ever changed are present (no conflicts here)
    assert {n: regs[NODE][1] for n, regs in entry.values.items()} == {"entries": 3, "values": 3, "bytes": 6}
    await q.flush()
    assert len(q) == 0


async def test_poll_item_wakes_on_commit_and_times_out(opened):
    s = opened.store
    first = await put(s, "k", b"1")
    ct = first.causal_context()
    waiter = asyncio.create_task(s.poll_item(BUCKET, "p", "k", ct, timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await put(s, "k", b"2", ct)
    woken = await asyncio.wait_for(waiter, 5)
    assert woken.values() == [b"2"]
    assert await s.poll_item(BUCKET, "p", "k", woken.causal_context(), timeout=0.1) is None
    # The storage-side poll task unwinds right after the timeout.
    await eventually(lambda: opened.model.subs.count() == 0)


async def test_poll_item_on_missing_key_waits_for_creation(opened):
    s = opened.store
    waiter = asyncio.create_task(s.poll_item(BUCKET, "p", "new", CausalContext(), timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await put(s, "new", b"v")
    assert (await asyncio.wait_for(waiter, 5)).values() == [b"v"]


async def test_poll_range_returns_only_unseen_items(opened):
    s = opened.store
    await put(s, "a", b"1")
    await put(s, "b", None)
    items, marker = await s.poll_range(BUCKET, "p", RangeQuery(), None, timeout=1)
    assert [(i.sort_key, i.values()) for i in items] == [("a", [b"1"]), ("b", [None])]
    encoded = marker.encode()
    assert await s.poll_range(BUCKET, "p", RangeQuery(), RangeSeenMarker.decode(encoded), timeout=0.1) is None
    waiter = asyncio.create_task(s.poll_range(BUCKET, "p", RangeQuery(), RangeSeenMarker.decode(encoded), 10))
    await asyncio.sleep(0.05)
    await put(s, "other", b"x", pk="q")  # another partition does not wake it
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await put(s, "c", b"3")
    items, _ = await asyncio.wait_for(waiter, 5)
    assert [i.sort_key for i in items] == ["c"]


async def test_a_causal_context_cannot_grow_past_its_bound(opened):
    """A token naming many nodes an item does not know adds entries only up to the soft cap, so
    no token can grow an item's context toward the hard bound; a context past the hard bound
    (which only a bug could build) is still refused with 413 before anything is written."""
    from garagekv.model.k2v.causality import ITEM_CLOCK_SOFT_CAP, MAX_CONTEXT_ENTRIES
    from garagekv.model.k2v.store import check_context
    from garagekv.util.errors import EntityTooLarge

    s = opened.store
    await put(s, "a", b"v")
    many = CausalContext({NODE + 1 + i: 5 for i in range(MAX_CONTEXT_ENTRIES)})
    item = await put(s, "a", b"w", ct=many)
    assert len(item.causal_context()) <= ITEM_CLOCK_SOFT_CAP + 1
    ins = InsertedItem("p", "a", None, b"w")
    with pytest.raises(EntityTooLarge, match=f"causal context would hold {MAX_CONTEXT_ENTRIES + 1} nodes"):
        check_context(ins, MAX_CONTEXT_ENTRIES, MAX_CONTEXT_ENTRIES + 1)
    check_context(ins, MAX_CONTEXT_ENTRIES, MAX_CONTEXT_ENTRIES)  # at the bound: accepted
    check_context(ins, MAX_CONTEXT_ENTRIES + 5, MAX_CONTEXT_ENTRIES + 2)  # shrinking: accepted


async def _stored(opened) -> list:
    page = await opened.store.read_range(BUCKET, "p", RangeQuery(), ItemFilter())
    return [e for _, e in page.entries]


async def test_poll_range_wakeup_does_not_swallow_writes_committed_before_the_read(opened, monkeypatch):
    """Writes committed between the wake-up and the answer's read are in the answer or still new.

    The poller wakes on ``b``; before it reads, ``a`` then ``b`` are written again (their
    notifications have not reached it). An answer carrying the newest ``b`` with a marker whose
    clock covers it would also cover the newer ``a``, which was never reported.
    """
    s = opened.store
    await put(s, "a", b"1")
    await put(s, "b", b"1")
    _, marker = await s.poll_range(BUCKET, "p", RangeQuery(), None, timeout=1)
    encoded = marker.encode()
    orig_wait = Subscription.wait
    injected = []

    async def wait_then_race(self):
        changed = await orig_wait(self)
        if not injected:
            injected.append(True)
            a = await s.read_item(BUCKET, "p", "a")
            b = await s.read_item(BUCKET, "p", "b")
            await put(s, "a", b"3", a.causal_context())
            await put(s, "b", b"3", b.causal_context())
        return changed

    monkeypatch.setattr(Subscription, "wait", wait_then_race)
    waiter = asyncio.create_task(s.poll_range(BUCKET, "p", RangeQuery(), RangeSeenMarker.decode(encoded), 10))
    await asyncio.sleep(0.05)
    b = await s.read_item(BUCKET, "p", "b")
    await put(s, "b", b"2", b.causal_context())
    items, after = await asyncio.wait_for(waiter, 5)
    claims_only_what_it_answered(RangeSeenMarker.decode(encoded), items, after, await _stored(opened))


async def test_poll_range_initial_scan_is_one_snapshot(opened, monkeypatch):
    """A scan read in several pages must not mix states: later pages would claim earlier keys' writes."""
    s = opened.store
    await s.insert_many(BUCKET, [InsertedItem("p", f"k{i:04}", None, b"v") for i in range(PAGE + 5)])
    data = opened.model.items.data
    orig_scan = data.scan_async
    calls = []

    async def scan_then_write(*args, **kw):
        rows = await orig_scan(*args, **kw)
        if not calls:
            calls.append(True)
            first = await s.read_item(BUCKET, "p", "k0000")
            await put(s, "k0000", b"new", first.causal_context())  # inside the first page
            await put(s, "z", b"new")  # past it
        return rows

    monkeypatch.setattr(data, "scan_async", scan_then_write)
    items, after = await s.poll_range(BUCKET, "p", RangeQuery(), None, timeout=1)
    monkeypatch.undo()
    claims_only_what_it_answered(None, items, after, await _stored(opened))


async def test_poll_item_storage_nodes_answer_before_the_coordinator_gives_up(opened, monkeypatch):
    """One storage node has the new item, the rest of the quorum answers "nothing" at its deadline.

    If the storage nodes waited as long as the coordinator, the coordinator would give up just
    before the quorum's second answer and report nothing although a node had the item.
    """
    s = opened.store
    old = await put(s, "k", b"1")
    new = await put(s, "k", b"2", old.causal_context())
    ids = [bytes([i]) * 32 for i in (1, 2, 3)]

    async def call(node, msg, timeout=None):
        if node == ids[0]:
            return new.encode()
        await asyncio.sleep(float(msg[-1]) + 0.05)  # its own deadline, then the way back
        return None

    monkeypatch.setattr(s, "_call", call)
    monkeypatch.setattr(s.replication, "storage_nodes", lambda h: ids)
    monkeypatch.setattr(s.replication, "read_quorum", lambda: 2)
    got = await s.poll_item(BUCKET, "p", "k", old.causal_context(), timeout=1.0)
    assert got is not None and got.values() == [b"2"]


def test_counters_are_read_from_the_storage_nodes_of_every_live_layout_version(opened):
    """While node 3's partitions move to node 4, node 3 still has the full counts."""
    v1 = with_nodes(LayoutHistory.new(3), THREE)
    v2 = with_nodes(v1.clone(), {3: None, 4: ("dc3", 10**9)})
    assert len(v2.versions) == 2
    opened.model.items.replication.layout.history = v2
    assert set(opened.store.counter_filter().nodes) == {node_number(nid(i)) for i in (1, 2, 3, 4)}


async def test_a_node_without_a_layout_refuses_to_coordinate_inserts_for_others(opened):
    """Another node may send it inserts (it is a storage node in their layout); with no layout of
    its own it would replicate to itself alone and report a quorum, so it refuses instead."""
    s = opened.store
    wire = InsertedItem("p", "k", None, b"v").to_wire()
    with pytest.raises(ServiceUnavailable, match="no cluster layout"):
        await s._handle(b"\x09" * 32, ["insert", BUCKET, [wire]])
    assert await s.read_item(BUCKET, "p", "k") is None
    await put(s, "k", b"local")  # its own clients' writes (a lone node) are not affected
    assert (await s.read_item(BUCKET, "p", "k")).values() == [b"local"]
