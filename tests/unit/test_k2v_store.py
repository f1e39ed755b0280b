"""The coordinator's local K2V operations on a real LMDB: timestamps, counters, polls."""

from __future__ import annotations

import asyncio
import struct

import pytest

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.model.k2v.store import InsertedItem
from garagekv.util.time import now_ms
from tests.standalone import NODE, StandaloneModel

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
    await asyncio.sleep(0.05)  # the storage-side poll task unwinds right after the timeout
    assert opened.model.subs.count() == 0


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
    """A token naming many nodes would give the item a context entry for each: bounded, 413."""
    from garagekv.model.k2v.causality import MAX_CONTEXT_ENTRIES
    from garagekv.util.errors import EntityTooLarge

    s = opened.store
    await put(s, "a", b"v")
    many = CausalContext({NODE + 1 + i: 5 for i in range(MAX_CONTEXT_ENTRIES)})
    with pytest.raises(EntityTooLarge, match=f"causal context would hold {MAX_CONTEXT_ENTRIES + 1} nodes"):
        await put(s, "a", b"w", ct=many)
    with pytest.raises(EntityTooLarge, match="causal context"):  # the multi-coordinator pre-check agrees
        await asyncio.to_thread(opened.local.check_sizes, BUCKET, [InsertedItem("p", "a", many, b"w")])
    item = await s.read_item(BUCKET, "p", "a")
    assert item.values() == [b"v"] and len(item.causal_context()) == 1
    fewer = CausalContext({NODE + 1 + i: 5 for i in range(MAX_CONTEXT_ENTRIES - 1)})
    item = await put(s, "a", b"w", ct=fewer)  # exactly at the bound: accepted
    assert len(item.causal_context()) == MAX_CONTEXT_ENTRIES
