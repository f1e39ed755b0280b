"""PollRanges in the model (model/k2v/poll_ranges.py): one ``poll_ranges`` call per storage node
per PollRanges call, one subscription per call on a storage node, the PollRange quorum and marker
rules per range, and a storage node that refuses a malformed request cleanly."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from garagekv.model.k2v import rpc as k2v_rpc
from garagekv.model.k2v.item import K2VItem, partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.poll_ranges import RangePoll, merge_answers
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.rpc import ENDPOINT
from garagekv.model.k2v.schema import ItemFilter
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.model.k2v.sub import Subscription
from garagekv.net.identity import NodeKey
from garagekv.rpc.endpoint import NetApp
from garagekv.rpc.quorum import QuorumError
from garagekv.util.errors import BadRequest, ServiceUnavailable
from tests.support import eventually
from tests.support.seen_markers import claims_only_what_it_answered
from tests.support.standalone import NODE, StandaloneModel

BUCKET = b"\x07" * 32
SECRET = b"p" * 32
PKS = [f"p{i:02}" for i in range(64)]


async def put(o: StandaloneModel, pk: str, sk: str, value: bytes | None = b"v") -> K2VItem:
    """Write here (also once the tests below make other nodes the partition's storage nodes)."""
    old = await o.model.k2v.read_item(BUCKET, pk, sk)
    ct = None if old is None else old.causal_context()
    await o.model.k2v._coordinate_here("insert", BUCKET, [InsertedItem(pk, sk, ct, value)])
    item = await o.model.k2v.read_item(BUCKET, pk, sk)
    assert item is not None
    return item


def whole(pk: str, marker: RangeSeenMarker | None = None) -> RangePoll:
    return RangePoll(pk, RangeQuery(), marker)


async def first_markers(o: StandaloneModel, pks: list[str]) -> list[str]:
    """Every range's marker from a first call without markers (which answers at once)."""
    res = await o.model.k2v.poll_ranges(BUCKET, [whole(p) for p in pks], 1)
    assert res is not None and all(r is not None for r in res)
    return [r[1].encode() for r in res if r is not None]


def polls(pks: list[str], markers: list[str]) -> list[RangePoll]:
    return [whole(p, RangeSeenMarker.decode(m)) for p, m in zip(pks, markers, strict=True)]


def sort_keys(res: Any) -> list[list[str] | None]:
    return [None if r is None else [i.sort_key for i in r[0]] for r in res]


# ---- one node: one subscription per call, woken by any of its ranges ---------------------------


async def test_a_64_range_call_holds_one_subscription_and_any_range_wakes_it(standalone):
    for p in PKS:
        await put(standalone, p, "a")
    markers = await first_markers(standalone, PKS)
    for woken in (0, 37, 63):
        waiter = asyncio.create_task(standalone.model.k2v.poll_ranges(BUCKET, polls(PKS, markers), 30))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert standalone.model.subs.count() == 1, "one subscription for the whole call, not one per range"
        await put(standalone, PKS[woken], f"new{woken}")
        res = await asyncio.wait_for(waiter, 10)
        assert sort_keys(res) == [[f"new{woken}"] if i == woken else None for i in range(64)]
        await eventually(lambda: standalone.model.subs.count() == 0)
        markers[woken] = res[woken][1].encode()
    # Every marker sent back: nothing is new any more.
    assert await standalone.model.k2v.poll_ranges(BUCKET, polls(PKS, markers), 0.2) is None
    assert standalone.model.subs.count() == 0


async def test_ranges_without_a_marker_answer_at_once_with_the_others_news(standalone):
    await put(standalone, "a", "1")
    await put(standalone, "b", "1")
    (ma,) = await first_markers(standalone, ["a"])
    await put(standalone, "a", "2")
    ranges = [whole("a", RangeSeenMarker.decode(ma)), whole("b"), whole("empty"), whole("b")]
    res = await standalone.model.k2v.poll_ranges(BUCKET, ranges, 30)
    assert sort_keys(res) == [["2"], ["1"], [], ["1"]]


async def test_changes_outside_the_ranges_do_not_wake_the_call(standalone):
    markers = await first_markers(standalone, ["a", "b"])
    ranges = [
        RangePoll("a", RangeQuery(prefix="in/"), RangeSeenMarker.decode(markers[0])),
        RangePoll("b", RangeQuery(start="m"), RangeSeenMarker.decode(markers[1])),
    ]
    waiter = asyncio.create_task(standalone.model.k2v.poll_ranges(BUCKET, ranges, 30))
    await asyncio.sleep(0.05)
    await put(standalone, "a", "out/1")
    await put(standalone, "b", "a")
    await put(standalone, "c", "in/1")
    await asyncio.sleep(0.1)
    assert not waiter.done(), "woken by a change outside its ranges"
    await put(standalone, "b", "n")
    assert sort_keys(await asyncio.wait_for(waiter, 10)) == [None, ["n"]]


async def test_the_markers_sent_are_left_as_they_were(standalone):
    await put(standalone, "a", "1")
    (m,) = await first_markers(standalone, ["a"])
    await put(standalone, "a", "2")
    sent = RangeSeenMarker.decode(m)
    res = await standalone.model.k2v.poll_ranges(BUCKET, [whole("a", sent)], 30)
    assert sort_keys(res) == [["2"]]
    assert sent.encode() == m
    assert merge_answers(sent, []) is None and sent.encode() == m


async def test_a_wakeup_does_not_swallow_writes_committed_before_the_read(standalone, monkeypatch):
    """As for PollRange: the call wakes on ``b``; before it reads, ``a`` then ``b`` are written
    again. The answer must carry the newest ``a`` or leave it new to the marker it returns."""
    await put(standalone, "p", "a")
    await put(standalone, "p", "b")
    (m,) = await first_markers(standalone, ["p"])
    orig_wait = Subscription.wait
    injected = []

    async def wait_then_race(self):
        changed = await orig_wait(self)
        if not injected:
            injected.append(True)
            await put(standalone, "p", "a", b"3")
            await put(standalone, "p", "b", b"3")
        return changed

    monkeypatch.setattr(Subscription, "wait", wait_then_race)
    waiter = asyncio.create_task(standalone.model.k2v.poll_ranges(BUCKET, [whole("p", RangeSeenMarker.decode(m))], 30))
    await asyncio.sleep(0.05)
    await put(standalone, "p", "b", b"2")
    ((items, after),) = await asyncio.wait_for(waiter, 10)
    page = await standalone.model.k2v.read_range(BUCKET, "p", RangeQuery(), ItemFilter())
    claims_only_what_it_answered(RangeSeenMarker.decode(m), items, after, [e for _, e in page.entries])


async def test_a_big_answer_leaves_ranges_for_the_next_call_and_misses_nothing(standalone, monkeypatch):
    """A storage node's answer stops taking ranges with a marker past its byte budget (the RPC
    record limit): those stay new to their markers, so the next calls report them."""
    pks = ["a", "b", "c"]
    markers = await first_markers(standalone, pks)
    for p in pks:
        await put(standalone, p, "big", b"x" * 1000)
    monkeypatch.setattr(k2v_rpc, "REPLY_BUDGET", 1500)  # room for one range's item, not two
    seen: dict[str, list[str]] = {}
    for _ in range(3):
        res = await standalone.model.k2v.poll_ranges(BUCKET, polls(pks, markers), 30)
        assert res is not None
        changed = [i for i, r in enumerate(res) if r is not None]
        assert len(changed) == 1, "one range per answer within the budget"
        (i,) = changed
        seen[pks[i]] = [it.sort_key for it in res[i][0]]
        markers[i] = res[i][1].encode()
    assert seen == {"a": ["big"], "b": ["big"], "c": ["big"]}
    assert await standalone.model.k2v.poll_ranges(BUCKET, polls(pks, markers), 0.1) is None


# ---- the coordinator: one call per storage node, PollRange's quorum rules per range -------------


IDS = [bytes([i]) * 32 for i in range(1, 6)]


class FakePeers:
    """Storage nodes other than this one: each answers a ``poll_ranges`` as ``behave[node]`` says."""

    def __init__(self, o: StandaloneModel, behave: dict[bytes, str]) -> None:
        self.o = o
        self.behave = behave
        self.calls: list[tuple[bytes, list[str]]] = []
        self.cancelled: list[bytes] = []

    async def call(self, node: bytes, path: str, msg: Any, timeout: float | None = None) -> Any:
        assert path == ENDPOINT and msg[0] == "poll_ranges"
        self.calls.append((node, [r[0] for r in msg[2]]))
        how = self.behave.get(node, "serve")
        try:
            if how == "fail":
                raise ServiceUnavailable("connection lost")
            if how == "garbage":
                return ["not", "a reply"]
            if how == "hang":
                await asyncio.sleep(3600)
            # "serve": answer as this node's own storage side would (its node number is ours).
            return await self.o.model.k2v._handle(node, msg)
        except asyncio.CancelledError:
            self.cancelled.append(node)
            raise


def spread(o: StandaloneModel, monkeypatch, behave: dict[bytes, str], quorum: int = 2) -> FakePeers:
    """Partition ``pN`` lives on three of five nodes, chosen by N; this node is not among them."""
    peers = FakePeers(o, behave)
    owners = {}
    for i, p in enumerate(PKS):
        owners[partition_hash(BUCKET, p)] = [IDS[i % 5], IDS[(i + 1) % 5], IDS[(i + 2) % 5]]
    repl = o.model.k2v.replication
    monkeypatch.setattr(repl, "storage_nodes", lambda h: owners[h])
    monkeypatch.setattr(repl, "read_quorum", lambda: quorum)
    monkeypatch.setattr(o.model.k2v, "netapp", SimpleNamespace(call=peers.call))
    return peers


async def test_one_call_per_storage_node_carrying_exactly_its_ranges(standalone, monkeypatch):
    peers = spread(standalone, monkeypatch, {})
    res = await standalone.model.k2v.poll_ranges(BUCKET, [whole(p) for p in PKS], 30)
    assert res is not None and len(res) == 64
    assert sorted(n for n, _ in peers.calls) == sorted(IDS), "exactly one call per storage node"
    for node, pks in peers.calls:
        k = IDS.index(node)
        assert pks == [p for i, p in enumerate(PKS) if k in (i % 5, (i + 1) % 5, (i + 2) % 5)]


async def test_a_write_in_one_range_answers_once_a_quorum_of_its_nodes_has_answered(standalone, monkeypatch):
    for p in PKS:
        await put(standalone, p, "a")
    markers = await first_markers(standalone, PKS)
    # Range 5 lives on nodes 0, 1 and 2; node 2 never answers, nodes 3 and 4 have nothing new.
    peers = spread(standalone, monkeypatch, {IDS[2]: "hang"})
    waiter = asyncio.create_task(standalone.model.k2v.poll_ranges(BUCKET, polls(PKS, markers), 300))
    await asyncio.sleep(0.05)
    await put(standalone, PKS[5], "b")
    res = await asyncio.wait_for(waiter, 10)
    assert sort_keys(res)[5] == ["b"]
    assert all(r is None for i, r in enumerate(res) if i != 5)
    await eventually(lambda: sorted(peers.cancelled) == sorted([IDS[2], IDS[3], IDS[4]]))  # nothing left waiting
    await eventually(lambda: standalone.model.subs.count() == 0)


@pytest.mark.parametrize("how", ["fail", "garbage"])
async def test_one_failed_or_malformed_storage_node_is_tolerated(standalone, monkeypatch, how):
    await put(standalone, PKS[0], "a")
    spread(standalone, monkeypatch, {IDS[0]: how})
    res = await standalone.model.k2v.poll_ranges(BUCKET, [whole(p) for p in PKS], 30)
    assert res is not None and sort_keys(res)[0] == ["a"]


@pytest.mark.parametrize("how", ["fail", "garbage"])
async def test_a_range_without_a_read_quorum_fails_the_call_at_once(standalone, monkeypatch, how):
    markers = await first_markers(standalone, PKS)
    # Nodes 0 and 1 both hold ranges 0, 4, 5, 9...: those can no longer get 2 answers of 3.
    peers = spread(standalone, monkeypatch, {IDS[0]: how, IDS[1]: how})
    with pytest.raises(QuorumError) as info:
        await asyncio.wait_for(standalone.model.k2v.poll_ranges(BUCKET, polls(PKS, markers), 300), 10)
    assert info.value.status == 503
    await eventually(lambda: sorted(peers.cancelled) == sorted(IDS[2:]))


async def test_a_first_scan_needs_a_read_quorum(standalone, monkeypatch):
    spread(standalone, monkeypatch, {IDS[0]: "hang", IDS[1]: "hang"}, quorum=2)
    with pytest.raises(ServiceUnavailable, match=r"only 1 of 3 storage nodes of ranges\[0\] answered"):
        await standalone.model.k2v.poll_ranges(BUCKET, [whole(PKS[0])], 0.1)


# ---- a storage node refuses malformed requests cleanly over a real connection ----------------


@pytest.fixture
async def served(tmp_path):
    """The standalone node's endpoints served over a real NetApp, and a peer that calls them."""
    o = StandaloneModel(tmp_path / "db")
    server = NetApp(NodeKey.generate(), SECRET, o.registry.dispatch)
    client = NetApp(NodeKey.generate(), SECRET)
    addr = await server.listen("127.0.0.1", 0)
    await client.connect(server.node_id, addr)
    yield SimpleNamespace(o=o, call=lambda msg: client.call(server.node_id, ENDPOINT, msg, timeout=10))
    await client.close()
    await server.close()
    o.close()


GOOD = ["p", None, None, None, None]


@pytest.mark.parametrize(
    ("msg", "names"),
    [
        (["poll_ranges", BUCKET, [GOOD]], "malformed K2V poll_ranges"),
        (["poll_ranges", BUCKET, [], 30], "malformed K2V poll_ranges"),
        (["poll_ranges", BUCKET, [GOOD] * 65, 30], "1 to 64"),
        (["poll_ranges", BUCKET, [["p", None]], 30], "malformed K2V poll_ranges range"),
        (["poll_ranges", BUCKET, [["p", None, None, None, 7]], 30], "seen marker"),
        (["poll_ranges", BUCKET, [["p", None, None, None, "AAAA"]], 30], "Invalid seenMarker"),
        (["poll_ranges", BUCKET, [["p", "b", "a", None, None]], 30], "does not start with prefix"),
        (["poll_ranges", BUCKET, [GOOD], "soon"], "timeout"),
        (["poll_ranges", BUCKET, [GOOD], 30, 1], "malformed K2V poll_ranges"),
        (["poll_ranges", BUCKET, [[b"p", None, None, None, None]], 30], "partition key"),
    ],
)
async def test_a_malformed_poll_ranges_is_an_invalid_request_for_the_sender(served, msg, names):
    with pytest.raises(BadRequest) as info:
        await served.call(msg)
    assert info.value.code == "InvalidRequest" and names in info.value.message
    # The node goes on serving.
    reply = await served.call(["poll_ranges", BUCKET, [GOOD], 30])
    assert reply[0] == NODE and reply[2] == [[0, []]]
    await eventually(lambda: served.o.model.subs.count() == 0)


async def test_a_well_formed_poll_ranges_gets_its_answer(served):
    await put(served.o, "p", "a")
    reply = await served.call(["poll_ranges", BUCKET, [GOOD, ["q", None, None, None, None]], 30])
    assert reply[0] == NODE and [i for i, _ in reply[2]] == [0, 1]
    assert [K2VItem.decode(r).sort_key for r in reply[2][0][1]] == ["a"] and reply[2][1][1] == []
    (m,) = await first_markers(served.o, ["p"])
    marked = ["p", None, None, None, m]
    waiter = asyncio.create_task(served.call(["poll_ranges", BUCKET, [["q", None, None, None, m], marked], 30]))
    await eventually(lambda: served.o.model.subs.count() == 1)
    await put(served.o, "p", "b")
    reply = await asyncio.wait_for(waiter, 10)
    assert [(i, [K2VItem.decode(r).sort_key for r in raws]) for i, raws in reply[2]] == [(1, ["b"])]
    # Nothing new to the marker of "a" and "b" before the timeout: an answer listing no range.
    (m,) = await first_markers(served.o, ["p"])
    reply = await served.call(["poll_ranges", BUCKET, [["p", None, None, None, m]], 0.1])
    assert reply[0] == NODE and reply[2] == []
    await eventually(lambda: served.o.model.subs.count() == 0)
