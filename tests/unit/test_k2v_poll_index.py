"""The poll index (model/k2v/poll_index.py): a poll with a seen marker reads only the items that
may be new to it, and never misses one, on one standalone node and real LMDB."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from garagekv.db.writer import WriteTxn
from garagekv.model.k2v import poll_index as poll_index_mod
from garagekv.model.k2v.item import K2VItem, partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.poll_index import _Partition
from garagekv.model.k2v.poll_ranges import RangePoll
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.schema import ItemFilter
from garagekv.model.k2v.seen import RangeSeenMarker
from tests.support.seen_markers import claims_only_what_it_answered
from tests.support.standalone import StandaloneModel

BUCKET = b"\x07" * 32
PKS = [f"p{i}" for i in range(4)]


async def put(o: StandaloneModel, pk: str, sk: str, value: bytes = b"v") -> None:
    old = await o.model.k2v.read_item(BUCKET, pk, sk)
    await o.model.k2v.insert(BUCKET, InsertedItem(pk, sk, None if old is None else old.causal_context(), value))


async def call(o: StandaloneModel, markers: list[RangeSeenMarker | None], timeout: float = 0.2) -> Any:
    return await o.model.k2v.poll_ranges(
        BUCKET, [RangePoll(pk, RangeQuery(), m) for pk, m in zip(PKS, markers, strict=True)], timeout
    )


async def first(o: StandaloneModel) -> list[RangeSeenMarker]:
    res = await call(o, [None] * len(PKS))
    return [r[1] for r in res]


def no_scans(o: StandaloneModel, monkeypatch: Any) -> None:
    def refuse(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a range with a marker was read whole")

    monkeypatch.setattr(o.model.items.data, "scan", refuse)
    monkeypatch.setattr(o.model.items.data, "scan_async", refuse)


async def test_polls_with_markers_read_only_what_may_be_new(standalone, monkeypatch):
    for pk in PKS:
        for i in range(50):
            await put(standalone, pk, f"k{i:03}")
    markers = await first(standalone)
    assert await call(standalone, markers) is None  # builds the index of every partition
    assert len(standalone.model.store.poll_index) == 200
    no_scans(standalone, monkeypatch)
    decoded = 0
    schema = standalone.model.items.data.schema
    orig = schema.decode

    def counting(raw: bytes) -> K2VItem:
        nonlocal decoded
        decoded += 1
        return orig(raw)

    monkeypatch.setattr(schema, "decode", counting)
    await put(standalone, PKS[2], "k007", b"again")
    await put(standalone, PKS[2], "new")
    decoded = 0
    res = await call(standalone, markers)
    assert [None if r is None else sorted(i.sort_key for i in r[0]) for r in res] == [None, None, ["k007", "new"], None]
    assert decoded <= 4, "the poll decoded more than the changed items"
    markers[2] = res[2][1]
    assert await call(standalone, markers) is None
    # PollRange reads the same way.
    await put(standalone, PKS[0], "k010", b"again")
    items, marker = await standalone.model.k2v.poll_range(BUCKET, PKS[0], RangeQuery(), markers[0], 1)
    assert [i.sort_key for i in items] == ["k010"]
    assert await standalone.model.k2v.poll_range(BUCKET, PKS[0], RangeQuery(), marker, 0.1) is None


async def test_a_change_not_notified_yet_is_answered_or_left_new(standalone, monkeypatch):
    """The index is kept in the writer's transactions: a change committed before a poll looks,
    whose notification has not reached the poll yet, is still found. (Kept from notifications
    instead, the poll would answer without it while its marker claims the node's dots up to the
    node's stable time, which includes it.)"""
    await put(standalone, PKS[0], "a")
    markers = await first(standalone)
    assert await call(standalone, markers) is None
    # What runs once a transaction is durable (the notifications among it) is held back.
    held: list[Any] = []
    monkeypatch.setattr(WriteTxn, "on_commit", lambda self, fn: held.append(fn))
    await put(standalone, PKS[0], "b")
    await put(standalone, PKS[1], "c")
    await put(standalone, PKS[0], "a", b"2")
    assert held
    res = await call(standalone, markers)
    monkeypatch.undo()
    for fn in held:
        fn()
    assert res is not None
    for i, pk in enumerate(PKS):
        page = await standalone.model.k2v.read_range(BUCKET, pk, RangeQuery(), ItemFilter())
        items, after = ([], markers[i]) if res[i] is None else res[i]
        claims_only_what_it_answered(markers[i], items, after, [e for _, e in page.entries])
    assert sorted(i.sort_key for i in res[0][0]) == ["a", "b"] and [i.sort_key for i in res[1][0]] == ["c"]


async def test_a_partition_too_big_for_the_index_is_read_whole(standalone, monkeypatch):
    monkeypatch.setattr(poll_index_mod, "MAX_PARTITION_ITEMS", 10)
    for i in range(12):
        await put(standalone, PKS[0], f"k{i:02}")
    await put(standalone, PKS[1], "x")
    markers = await first(standalone)
    assert await call(standalone, markers) is None
    index = standalone.model.store.poll_index
    assert len(index) == 1 and index.candidates(partition_hash(BUCKET, PKS[0]), RangeQuery(), markers[0]) is None
    await put(standalone, PKS[0], "k03", b"2")
    res = await call(standalone, markers)
    assert [i.sort_key for i in res[0][0]] == ["k03"]


async def test_partitions_polled_least_recently_leave_the_index(standalone, monkeypatch):
    monkeypatch.setattr(poll_index_mod, "MAX_ITEMS", 5)
    for pk in PKS:
        for i in range(3):
            await put(standalone, pk, f"k{i}")
    markers = await first(standalone)
    assert await call(standalone, markers) is None
    index = standalone.model.store.poll_index
    assert len(index) <= 5 and index.builds == 4
    for pk, m in zip(PKS, markers, strict=True):  # every partition in turn: each read again, each answer right
        await put(standalone, pk, "k1", b"2")
        items, _ = await standalone.model.k2v.poll_range(BUCKET, pk, RangeQuery(), m, 1)
        assert [i.sort_key for i in items] == ["k1"]
    assert len(index) <= 5


async def test_a_wakeup_reads_only_the_changed_items(standalone, monkeypatch):
    for i in range(30):
        await put(standalone, PKS[0], f"k{i:02}")
    markers = await first(standalone)
    waiter = asyncio.create_task(call(standalone, markers, 30))
    await asyncio.sleep(0.05)
    no_scans(standalone, monkeypatch)
    await put(standalone, PKS[0], "k05", b"2")
    res = await asyncio.wait_for(waiter, 10)
    assert [i.sort_key for i in res[0][0]] == ["k05"] and res[1:] == [None] * 3


# ---- the index itself: its candidates include every item new to a marker -------------------------

CLOCKS = st.dictionaries(st.integers(1, 4), st.integers(1, 30), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), CLOCKS), max_size=25),
    st.dictionaries(st.integers(1, 4), st.integers(0, 30), max_size=4),
    st.dictionaries(st.sampled_from("abcdef"), CLOCKS, max_size=3),
)
def test_candidates_cover_every_item_new_to_the_marker(updates, vc, per_item):
    part = _Partition()
    clocks: dict[str, dict[int, int]] = {}
    for sk, clock in updates:
        part.update(sk, clock)
        old = clocks.get(sk, {})
        clocks[sk] = {n: max(t, old.get(n, 0)) for n, t in {**old, **clock}.items()}
    assert part.clocks == clocks
    for node, times in part.by_node.items():  # one entry per item and node, at its current time
        assert sorted(times) == sorted((c[node], sk) for sk, c in clocks.items() if node in c)
    marker = RangeSeenMarker(vc, per_item)
    new = {sk for sk, c in clocks.items() if marker.is_new_clock(sk, c)}
    assert new <= set(part.candidates(vc))
