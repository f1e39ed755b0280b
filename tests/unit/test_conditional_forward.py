"""Where a node that does not run a consensus key's rounds sends its operations, when the usual
coordinator hangs (docs/consensus.md §9, "A node that hangs").

One node on real LMDB that stores nothing (a gateway) in a layout of three storage nodes; the
network is a fake on which any of them can be made to hang. A hung node is only marked down
after several missed pings, so the forwarding node passes it over itself once a forwarded
operation has gone unanswered for ``FORWARD_PATIENCE``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from garagekv.model.k2v import conditional
from garagekv.model.k2v.conditional import RPC_BATCH_PATH
from garagekv.model.k2v.item import partition_hash
from garagekv.model.k2v.txn import READ, Txn, TxnOp
from garagekv.rpc.layout import LayoutHistory, NodeRole
from tests.support import eventually
from tests.support.standalone import StandaloneModel

BUCKET = b"\x07" * 32
HERE = b"\x01" * 32
STORAGE = [bytes([i]) * 32 for i in (2, 3, 4)]
READ_A = Txn(success=(TxnOp(READ, "a"),))
KEY = partition_hash(BUCKET, "p")


class Peers:
    """The storage nodes: a forwarded batch gets one answer per operation (the item ``a`` is
    absent), except from the nodes in ``hung`` and the calls numbered in ``held``, which are
    answered only once ``released`` is set. ``heard`` is what a connection records of them."""

    on_connect: list[Any] = []

    def __init__(self) -> None:
        self.hung: set[bytes] = set()
        self.held: set[int] = set()
        self.released = asyncio.Event()
        self.asked: list[bytes] = []
        self.heard: dict[bytes, float] = {}

    def last_heard(self, node: bytes) -> float:
        return self.heard.get(node, float("-inf"))

    async def call(self, node: bytes, path: str, msg: Any, timeout: float | None = None) -> Any:
        assert path == RPC_BATCH_PATH, path
        self.asked.append(node)
        if node in self.hung or len(self.asked) - 1 in self.held:
            await self.released.wait()
        self.heard[node] = time.monotonic()
        return [[True, [True, [[READ, "a", None]]]] for _ in msg]


@pytest.fixture
def peers() -> Peers:
    return Peers()


@pytest.fixture
def cond(tmp_path, peers, monkeypatch):
    """The gateway's ConditionalK2V, patient for 50 ms only."""
    monkeypatch.setattr(conditional, "FORWARD_PATIENCE", 0.05)
    history = LayoutHistory.new(3)
    for i, n in enumerate(STORAGE):
        history.stage_role(n, NodeRole(f"dc{i}", 10**9))
    history, _ = history.apply_staged_changes(history.current().version + 1)
    o = StandaloneModel(tmp_path / "db", node_id=HERE, history=history, netapp=peers)
    yield o.model.conditional
    o.close()


async def passed_over(cond, peers: Peers) -> tuple[bytes, asyncio.Task[Any]]:
    """Hang ``KEY``'s usual coordinator under an operation until new ones go elsewhere: that
    coordinator, and the operation (still waiting)."""
    first = cond.coordinator(KEY, STORAGE)
    peers.hung = {first}
    stuck = asyncio.create_task(cond.txn(BUCKET, "p", READ_A))
    await eventually(lambda: cond.coordinator(KEY, STORAGE) != first)
    return first, stuck


async def test_a_coordinator_that_leaves_an_operation_unanswered_is_passed_over_until_it_answers(cond, peers):
    first, stuck = await passed_over(cond, peers)
    second = cond.coordinator(KEY, STORAGE)
    res = await cond.txn(BUCKET, "p", READ_A)  # the next operation does not wait for the hung node
    assert res.succeeded and peers.asked == [first, second]
    assert not stuck.done()  # the first one waits for its own answer: it may have run there

    peers.released.set()  # the node answers again
    assert (await stuck).succeeded
    assert cond.coordinator(KEY, STORAGE) == first  # and gets its keys back


async def test_without_an_answering_alternative_the_usual_coordinator_is_kept(cond, peers):
    first = cond.coordinator(KEY, STORAGE)
    peers.hung = set(STORAGE)
    waiting = [asyncio.create_task(cond.txn(BUCKET, f"p{i}", READ_A)) for i in range(30)]
    await eventually(lambda: len(cond._slow) == 3)  # every storage node left one unanswered
    assert cond.coordinator(KEY, STORAGE) == first  # none is better: the usual one after all
    peers.released.set()
    assert all(r.succeeded for r in await asyncio.gather(*waiting))


async def test_a_coordinator_that_answers_other_operations_meanwhile_is_kept(cond, peers, monkeypatch):
    """One operation waiting long on a node that keeps answering others is a long round or a slow
    link, not a hung node: its keys stay where they are (moving them would make coordinators duel)."""
    monkeypatch.setattr(conditional, "FORWARD_PATIENCE", 0.2)
    first = cond.coordinator(KEY, STORAGE)
    same = next(
        pk for pk in (f"q{i}" for i in range(100)) if cond.coordinator(partition_hash(BUCKET, pk), STORAGE) == first
    )
    peers.held = {0}  # the first call waits
    waiting = asyncio.create_task(cond.txn(BUCKET, "p", READ_A))
    await eventually(lambda: len(peers.asked) == 1)  # its call left alone, not batched with the next
    for _ in range(40):  # 0.4 s of other operations, answered, through the same node
        assert (await cond.txn(BUCKET, same, READ_A)).succeeded
        await asyncio.sleep(0.01)
    assert not waiting.done() and cond.coordinator(KEY, STORAGE) == first
    peers.released.set()
    assert (await waiting).succeeded


async def test_a_passed_over_coordinator_is_back_once_it_sends_anything(cond, peers):
    """After a pause nobody forwards to the node any more, but it answers pings and the Prepares
    and Commits of other nodes' rounds at once (as one of their acceptors): that is enough."""
    first, stuck = await passed_over(cond, peers)
    peers.heard[first] = time.monotonic()  # what any frame from it records on its connection
    assert cond.coordinator(KEY, STORAGE) == first
    peers.released.set()
    assert (await stuck).succeeded
