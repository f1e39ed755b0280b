"""PollRange and conditional writes on one standalone node and real LMDB.

A conditional write's dot is reserved before its round and only shows up on the node at the
round's Commit, possibly after a plain insert of the same node got a later dot and was already
reported. A node's poll answers must not move a seen marker past a dot it reserved but does not
hold yet (docs/k2v-compat.md, "PollRange and conditional writes").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from garagekv.consensus.acceptor import COMMIT, PROPOSE
from garagekv.model.k2v.conditional import IF_NONE_MATCH_ANY, Condition
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.poll_ranges import RangePoll
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.util.errors import ServiceUnavailable
from tests.support.standalone import LoopbackTransport, StandaloneModel

BUCKET = b"\x07" * 32


class GatedTransport(LoopbackTransport):
    """Loopback calls; the messages of one endpoint can be held (``hold``) or made to fail
    (``fail``) until ``release``."""

    def __init__(self, registry: Any) -> None:
        super().__init__(registry)
        self.path: str | None = None
        self.failing = False
        self.reached = asyncio.Event()
        self._gate = asyncio.Event()

    def hold(self, path: str) -> None:
        self.path, self.failing = path, False
        self.reached.clear()
        self._gate.clear()

    def fail(self, path: str) -> None:
        self.path, self.failing = path, True

    def release(self) -> None:
        self.path = None
        self._gate.set()

    async def call(self, node: bytes, path: str, body: Any, timeout: float | None = None) -> Any:
        if path == self.path:
            self.reached.set()
            if self.failing:
                raise ConnectionError("cut off")
            await self._gate.wait()
        return await super().call(node, path, body, timeout)


def opened(path: Any) -> tuple[StandaloneModel, GatedTransport]:
    o = StandaloneModel(path, rpc_timeout_msec=2000)
    registry = EndpointRegistry()
    o.model.acceptor.register(registry)
    transport = GatedTransport(registry)
    o.model.proposer.transport = transport
    o.model.proposer.local = None  # this node's acceptor through the transport too
    return o, transport


@pytest.fixture
def node(tmp_path):
    o, transport = opened(tmp_path / "db")
    yield o, transport
    o.close()


async def poll(o: StandaloneModel, marker: RangeSeenMarker | None, timeout: float = 0.3) -> Any:
    return await o.model.k2v.poll_range(BUCKET, "p", RangeQuery(), marker, timeout)


async def poll_ranges(o: StandaloneModel, marker: RangeSeenMarker | None, timeout: float = 0.3) -> Any:
    res = await o.model.k2v.poll_ranges(BUCKET, [RangePoll("p", RangeQuery(), marker)], timeout)
    return None if res is None else res[0]


def keys(res: Any) -> list[str]:
    return [] if res is None else [i.sort_key for i in res[0]]


@pytest.mark.parametrize("poller", [poll, poll_ranges])
async def test_a_conditional_write_committed_after_a_later_plain_insert_is_reported(node, poller):
    o, transport = node
    await o.model.k2v.insert(BUCKET, InsertedItem("p", "first", None, b"0"))
    res = await poller(o, None)
    assert keys(res) == ["first"]
    marker = res[1]
    # The conditional write reserves its dot, is decided and proposed; its Commit is held back.
    transport.hold(COMMIT)
    cond = asyncio.create_task(o.model.conditional.write(BUCKET, "p", "cond", Condition(IF_NONE_MATCH_ANY), b"c"))
    await asyncio.wait_for(transport.reached.wait(), 5)
    # A plain insert of the same node meanwhile gets a later dot, visible at once.
    await o.model.k2v.insert(BUCKET, InsertedItem("p", "plain", None, b"p"))
    res = await poller(o, marker)
    assert keys(res) == ["plain"]
    marker = res[1]
    transport.release()
    assert (await asyncio.wait_for(cond, 5)).applied
    res = await poller(o, marker)
    assert keys(res) == ["cond"], "the conditional write's item was swallowed by the marker"
    assert await poller(o, res[1]) is None  # and reported once


async def test_a_failed_round_completed_later_is_reported_also_across_a_restart(tmp_path):
    """The round's proposal is accepted but its Commit fails (503); the node restarts; a plain
    insert is reported; the next round on the key completes the old proposal."""
    o, transport = opened(tmp_path / "db")
    try:
        res = await poll(o, None)
        marker = res[1]
        transport.fail(COMMIT)
        with pytest.raises(ServiceUnavailable):
            await o.model.conditional.write(BUCKET, "p", "cond", Condition(IF_NONE_MATCH_ANY), b"c")
        transport.release()
        assert await o.model.k2v.read_item(BUCKET, "p", "cond") is None  # accepted, not committed
    finally:
        o.close()
    o, transport = opened(tmp_path / "db")
    try:
        await o.model.k2v.insert(BUCKET, InsertedItem("p", "plain", None, b"p"))
        res = await poll(o, marker)
        assert keys(res) == ["plain"]
        marker = res[1]
        # Any later round on the key completes the accepted proposal first (a read will do).
        assert (await o.model.conditional.read(BUCKET, "p", "cond")).values() == [b"c"]
        res = await poll(o, marker)
        assert keys(res) == ["cond"], "the completed write's item was swallowed by the marker"
    finally:
        o.close()


async def settled(o: StandaloneModel) -> None:
    """Reservations released in the background are gone (boundedly waited for)."""
    for _ in range(200):
        if not o.model.store.clock.reservations():
            break
        await asyncio.sleep(0.01)
    assert o.model.store.clock.reservations() == []
    assert o.model.store.stable_clock() == o.model.store.issued_clock()


async def test_every_round_settles_its_reservations(node):
    o, _ = node
    c = o.model.conditional
    assert (await c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"v")).applied  # its commit
    await settled(o)
    assert not (await c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"w")).applied  # 412: never proposed
    await settled(o)
    # Many writers on one key: one round decides them all with one reservation per writer.
    outs = await asyncio.gather(
        *(c.write(BUCKET, "p", f"k{i}", Condition(IF_NONE_MATCH_ANY), b"v") for i in range(10)),
        *(c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"v") for _ in range(3)),
    )
    assert [out.applied for out in outs] == [True] * 10 + [False] * 3
    await settled(o)


async def test_a_failed_round_holds_the_bound_until_a_later_round_on_its_key_commits(node):
    o, transport = node
    c = o.model.conditional
    transport.fail(PROPOSE)
    with pytest.raises(ServiceUnavailable):
        await c.write(BUCKET, "p", "cond", Condition(IF_NONE_MATCH_ANY), b"c")
    transport.release()
    # It proposed: an acceptor may have accepted it, and it may yet be completed.
    (r,) = o.model.store.clock.reservations()
    assert (r.bucket_id, r.partition_key, r.count) == (BUCKET, "p", 1)
    await o.model.k2v.insert(BUCKET, InsertedItem("p", "plain", None, b"p"))
    assert o.model.store.stable_clock() == r.first - 1 < o.model.store.issued_clock()
    # A write on another key settles nothing; the next write on its key settles it.
    assert (await c.write(BUCKET, "q", "k", Condition(IF_NONE_MATCH_ANY), b"x")).applied
    assert [x.first for x in o.model.store.clock.reservations()] == [r.first]
    assert (await c.write(BUCKET, "p", "cond", Condition(IF_NONE_MATCH_ANY), b"d")).applied
    await settled(o)


@pytest.mark.parametrize("cut", [PROPOSE, COMMIT])
async def test_the_sweep_settles_what_a_failed_round_left(node, cut):
    from garagekv.model.k2v.reservations import ReservationSweeper

    o, transport = node
    res = await poll(o, None)
    transport.fail(cut)
    with pytest.raises(ServiceUnavailable):
        await o.model.conditional.write(BUCKET, "p", "cond", Condition(IF_NONE_MATCH_ANY), b"c")
    transport.release()
    assert len(o.model.store.clock.reservations()) == 1
    sweeper = ReservationSweeper(o.model.store.clock, o.writer, o.model.conditional.settle_round, interval=0.05)
    await sweeper.work()  # first seen
    assert sweeper.progress() == {"done": 0, "queue": 1}
    await asyncio.sleep(0.06)
    await sweeper.work()  # still there: its round is over
    assert sweeper.swept == 1
    await settled(o)
    # An accepted proposal was completed by the sweep's round; either way the poll misses nothing.
    res = await poll(o, res[1])
    assert keys(res) == (["cond"] if cut == COMMIT else [])
    if cut == PROPOSE:
        assert res is None
