"""The client's extension calls against a real node: conditional writes, linearizable reads,
PollRanges (and the watch loop over it) and partition transactions (docs/client.md, docs/k2v-api.md)."""

from __future__ import annotations

import asyncio
import json

import pytest

from garagekv.client import (
    CausalityToken,
    Compare,
    Delete,
    InvalidRequest,
    K2VClient,
    K2VClientSync,
    K2VError,
    NoSuchKey,
    OpResult,
    PreconditionFailed,
    Put,
    RangeSpec,
    Read,
    ServiceUnavailable,
    TxnResult,
)
from tests.support.client import kwargs


@pytest.fixture
async def client(node, creds):
    async with K2VClient(**kwargs(node, creds)) as c:
        yield c


# --- conditional writes -----------------------------------------------------------------------


async def test_if_none_match_creates_once_and_chains_tokens(client, pk):
    t1 = await client.insert_item(pk, "k", b"v1", if_none_match=True)
    assert isinstance(t1, CausalityToken)
    item = await client.read_item(pk, "k")
    assert item.values == [b"v1"] and item.token == t1  # the answer's token is the item's token

    with pytest.raises(PreconditionFailed) as ei:
        await client.insert_item(pk, "k", b"again", if_none_match=True)
    assert ei.value.status == 412 and ei.value.code == "PreconditionFailed"
    assert ei.value.current_token == t1 and str(t1) in str(ei.value)

    t2 = await client.insert_item(pk, "k", b"v2", if_match=t1)  # chained without reading
    t3 = await client.insert_item(pk, "k", b"v3", if_match=str(t2))  # a string token works too
    assert len({t1, t2, t3}) == 3
    with pytest.raises(PreconditionFailed) as ei:
        await client.insert_item(pk, "k", b"stale", if_match=t1)
    assert ei.value.current_token == t3
    assert (await client.read_item(pk, "k")).values == [b"v3"]  # nothing written by the 412s


async def test_if_match_star_and_never_written_items(client, pk):
    with pytest.raises(PreconditionFailed) as ei:
        await client.insert_item(pk, "new", b"x", if_match="*")
    assert ei.value.current_token is None and "never written" in str(ei.value)
    with pytest.raises(NoSuchKey):
        await client.read_item(pk, "new")
    with pytest.raises(PreconditionFailed) as ei:
        await client.delete_item(pk, "new", if_match="*")
    assert ei.value.current_token is None

    await client.insert_item(pk, "k", b"a")
    await client.insert_item(pk, "k", b"b")  # two concurrent values
    t = await client.insert_item(pk, "k", b"merged", if_match="*")
    assert (await client.read_item(pk, "k")).values == [b"merged"]  # superseded both

    deleted = await client.delete_item(pk, "k", if_match=t)
    gone = await client.read_item(pk, "k")
    assert gone.values == [None] and gone.token == deleted
    # deleted: `*` no longer holds, If-None-Match does; the 412 carries the tombstone's token
    with pytest.raises(PreconditionFailed) as ei:
        await client.delete_item(pk, "k", if_match="*")
    assert ei.value.current_token == deleted
    back = await client.insert_item(pk, "k", b"back", if_none_match=True)
    assert (await client.read_item(pk, "k")).token == back


async def test_plain_writes_keep_returning_none(client, pk):
    assert await client.insert_item(pk, "k", b"x") is None
    token = (await client.read_item(pk, "k")).token
    assert await client.insert_item(pk, "k", b"y", token) is None
    assert await client.delete_item(pk, "k") is None


async def test_conditional_combinations_are_refused_before_sending(client, pk):
    for call in (
        lambda: client.insert_item(pk, "k", b"x", if_match="*", if_none_match=True),
        lambda: client.insert_item(pk, "k", b"x", "AAAAAAAAAAA", if_match="*"),
        lambda: client.insert_item(pk, "k", b"x", "AAAAAAAAAAA", if_none_match=True),
        lambda: client.delete_item(pk, "k", "AAAAAAAAAAA", if_match="*"),
    ):
        with pytest.raises(ValueError):
            await call()
    with pytest.raises(NoSuchKey):
        await client.read_item(pk, "k")
    # what only the server can judge: a malformed token in If-Match is its 400
    with pytest.raises(InvalidRequest) as ei:
        await client.insert_item(pk, "k", b"x", if_match="not a token!")
    assert ei.value.status == 400


async def test_linearizable_read(client, pk):
    with pytest.raises(NoSuchKey):
        await client.read_item(pk, "k", linearizable=True)
    t = await client.insert_item(pk, "k", b"v", if_none_match=True)
    item = await client.read_item(pk, "k", linearizable=True)
    assert item.values == [b"v"] and item.token == t
    await client.insert_item(pk, "k", b"plain")  # a plain write next to it: both are seen
    item = await client.read_item(pk, "k", linearizable=True)
    assert sorted(item.values) == [b"plain", b"v"] and item.is_conflict
    # the server refuses any other consistency value; the client sends exactly the one it knows
    bad = await client.request(
        "GET", pk, [("sort_key", "k")], headers={"X-Garage-Consistency": "eventual"}, check=False
    )
    assert bad.status == 400


# --- PollRanges -------------------------------------------------------------------------------


async def test_poll_ranges_initial_change_and_304(client, pk):
    p1, p2 = pk + "-1", pk + "-2"
    await client.insert_batch([(p1, "a", b"1"), (p2, "x/1", b"2"), (p2, "y", b"3")])
    first = await client.poll_ranges([p1, RangeSpec(p2, prefix="x/")])
    assert first is not None
    assert [r.partition_key for r in first.ranges] == [p1, p2] and [r.index for r in first.ranges] == [0, 1]
    assert [[i.sort_key for i in r.items] for r in first.ranges] == [["a"], ["x/1"]]
    assert all(r.changed and r.seen_marker for r in first.ranges)
    assert first.ranges[0].items[0].values == [b"1"] and first.ranges[0].items[0].partition_key == p1

    nxt = first.next_ranges()
    assert nxt[1] == RangeSpec(p2, prefix="x/", seen_marker=first.ranges[1].seen_marker)
    assert await client.poll_ranges(nxt, timeout=1) is None  # nothing new: 304

    waiter = asyncio.create_task(client.poll_ranges(nxt, timeout=20))
    await asyncio.sleep(0.2)
    await client.insert_item(p2, "y", b"outside the prefix")
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await client.insert_item(p2, "x/2", b"new")
    res = await asyncio.wait_for(waiter, 15)
    assert res is not None
    unchanged, changed = res.ranges
    assert not unchanged.changed and unchanged.items == [] and unchanged.seen_marker == nxt[0].seen_marker
    assert changed.changed and [(i.sort_key, i.values) for i in changed.items] == [("x/2", [b"new"])]
    assert res.changed == [changed]
    assert await client.poll_ranges(res.next_ranges(), timeout=1) is None


async def test_poll_ranges_refuses_bad_ranges(client, pk):
    with pytest.raises(ValueError):
        await client.poll_ranges([])
    with pytest.raises(ValueError):
        await client.poll_ranges([pk] * 65)
    with pytest.raises(InvalidRequest) as ei:  # the server judges markers
        await client.poll_ranges([RangeSpec(pk, seen_marker="not a marker")], timeout=1)
    assert "ranges[0]" in ei.value.message


async def test_watch_yields_per_range_changes_and_resumes_from_saved_markers(client, pk):
    p1, p2 = pk + "-1", pk + "-2"
    await client.insert_item(p1, "a", b"1")
    saved: dict[int, str | None] = {}
    seen: list[tuple[int, str, bytes | None]] = []

    async def writer():
        await asyncio.sleep(0.2)
        await client.insert_item(p2, "b", b"2")
        await asyncio.sleep(0.3)
        await client.insert_item(p1, "c", b"3")

    task = asyncio.create_task(writer())
    watch = client.watch([p1, p2], timeout=20)
    async for ch in watch:
        saved[ch.index] = ch.seen_marker
        seen.extend((ch.index, i.sort_key, i.values[0]) for i in ch.items)
        if {(1, "b", b"2"), (0, "c", b"3")} <= set(seen):
            break
    await watch.aclose()
    await task
    # the initial scans (p2's is empty: it still has news, its first marker), then each change, once
    assert sorted(seen) == [(0, "a", b"1"), (0, "c", b"3"), (1, "b", b"2")]
    assert saved.keys() == {0, 1} and all(saved.values())

    # written while nobody watches: a watch resumed from the saved markers sees exactly that
    await client.insert_item(p2, "d", b"4")
    resumed = client.watch([RangeSpec(p1, seen_marker=saved[0]), RangeSpec(p2, seen_marker=saved[1])], timeout=20)
    ch = await asyncio.wait_for(resumed.__anext__(), 15)
    await resumed.aclose()
    assert (ch.index, [(i.sort_key, i.values) for i in ch.items]) == (1, [("d", [b"4"])])


async def test_watch_without_initial_state(client, pk):
    await client.insert_item(pk, "old", b"0")
    watch = client.watch([pk], timeout=20, include_initial=False)
    nxt = asyncio.ensure_future(watch.__anext__())
    await asyncio.sleep(0.3)
    assert not nxt.done()
    await client.insert_item(pk, "new", b"1")
    ch = await asyncio.wait_for(nxt, 15)
    await watch.aclose()
    assert [i.sort_key for i in ch.items] == ["new"] and ch.range.seen_marker is not None


# --- transactions -----------------------------------------------------------------------------


async def test_txn_compare_and_branches(client, pk):
    await client.insert_item(pk, "a", b"A")
    a = await client.read_item(pk, "a")
    res = await client.txn(
        pk,
        compare=[
            Compare.token("a", a.token),
            Compare.exists("b", False),
            Compare.value("a", "A"),
            Compare.md5("a", "7FC56270E7A70FA81A5935B72EACBE29"),  # MD5("A"), any case
        ],
        success=[Put("a", b"A2"), Put("b", "B"), Read("a"), Read("never")],
        failure=[Read("a")],
    )
    assert isinstance(res, TxnResult) and res.succeeded
    put_a, put_b, read_a, never = res.results
    assert [r.sort_key for r in res.results] == ["a", "b", "a", "never"]
    assert put_a.values is None and put_a.token is not None and put_b.token is not None
    assert read_a.values == [b"A2"] and read_a.token == put_a.token  # reads see the branch's writes
    assert never == OpResult("never", None, [])
    assert (await client.read_item(pk, "a")).token == put_a.token
    assert (await client.read_item(pk, "b")).values == [b"B"]

    # the same compares again: the token moved on, the failure branch runs
    res = await client.txn(
        pk, [Compare.token("a", a.token)], [Delete("a")], failure=[Read("a"), Read("b"), Delete("b")]
    )
    assert not res.succeeded and [r.sort_key for r in res.results] == ["a", "b", "b"]
    assert res.results[0].values == [b"A2"] and res.results[1].values == [b"B"]
    assert res.results[2].values is None
    assert (await client.read_item(pk, "a")).values == [b"A2"]  # success branch did not run
    assert (await client.read_item(pk, "b")).values == [None]


async def test_txn_compare_and_set_loop(client, pk):
    """Concurrent compare-and-set loops, each appending its id to a list: none lost, none twice.

    A 503 leaves the outcome unknown; the next linearizable read (a read-only transaction)
    settles it, which is why the loop looks for its own id before trying again.
    """

    async def append(me: str) -> None:
        while True:
            cur = (await client.txn(pk, success=[Read("ids")])).results[0]
            ids = json.loads(cur.values[0]) if cur.values else []
            if me in ids:
                return  # an attempt that answered 503 had applied
            cond = Compare.exists("ids", False) if cur.token is None else Compare.token("ids", cur.token)
            try:
                if (await client.txn(pk, [cond], [Put("ids", json.dumps([*ids, me]))])).succeeded:
                    return
            except ServiceUnavailable:
                pass

    await asyncio.gather(*(append(f"w{i}") for i in range(5)))
    final = json.loads((await client.read_item(pk, "ids", linearizable=True)).value or b"")
    assert sorted(final) == [f"w{i}" for i in range(5)]


async def test_txn_limits_are_checked_before_sending(client, pk):
    with pytest.raises(ValueError, match="written twice"):
        await client.txn(pk, success=[Put("a", b"1"), Delete("a")])
    with pytest.raises(ValueError):
        await client.txn(pk, compare=[Compare.exists(f"k{i}") for i in range(65)])
    with pytest.raises(ValueError):
        await client.txn(pk, success=[Read(f"k{i}") for i in range(129)])
    with pytest.raises(NoSuchKey):
        await client.read_item(pk, "a")


async def test_empty_sort_key_conditional_and_linearizable(client, pk):
    """`?sort_key=` cannot name the empty sort key: these go through a transaction instead."""
    with pytest.raises(NoSuchKey):
        await client.read_item(pk, "", linearizable=True)
    t1 = await client.insert_item(pk, "", b"root", if_none_match=True)
    item = await client.read_item(pk, "", linearizable=True)
    assert item.values == [b"root"] and item.token == t1 and item.sort_key == ""
    with pytest.raises(PreconditionFailed) as ei:
        await client.insert_item(pk, "", b"again", if_none_match=True)
    assert ei.value.current_token == t1
    t2 = await client.delete_item(pk, "", if_match=t1)
    assert (await client.read_item(pk, "")).values == [None]
    with pytest.raises(PreconditionFailed) as ei:
        await client.insert_item(pk, "", b"x", if_match="*")
    assert ei.value.current_token == t2


# --- the blocking client ----------------------------------------------------------------------


def test_sync_client_extensions(node, creds, pk):
    with K2VClientSync(**kwargs(node, creds)) as k2v:
        t = k2v.insert_item(pk, "s", b"1", if_none_match=True)
        t2 = k2v.insert_item(pk, "s", b"2", if_match=t)
        with pytest.raises(PreconditionFailed) as ei:
            k2v.delete_item(pk, "s", if_match=t)
        assert ei.value.current_token == t2
        assert k2v.read_item(pk, "s", linearizable=True).values == [b"2"]
        t3 = k2v.delete_item(pk, "s", if_match=t2)
        assert k2v.read_item(pk, "s").token == t3

        first = k2v.poll_ranges([pk])
        assert first is not None and [i.sort_key for i in first.ranges[0].items] == ["s"]
        assert k2v.poll_ranges(first.next_ranges(), timeout=1) is None
        k2v.insert_item(pk, "w", b"x")
        watch = k2v.watch(first.next_ranges(), timeout=10)
        ch = next(watch)
        watch.close()
        assert [i.sort_key for i in ch.items] == ["w"]

        res = k2v.txn(pk, [Compare.exists("w")], [Read("w")])
        assert res.succeeded and res.results[0].values == [b"x"]
        with pytest.raises(K2VError):
            k2v.txn(pk, [Compare.token("w", "not a token!")])
