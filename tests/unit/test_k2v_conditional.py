"""The K2V consensus adapter (model/k2v/conditional.py) on one standalone node and real LMDB."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from garagekv.consensus import ReadTooLarge
from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.conditional import IF_MATCH, IF_MATCH_ANY, IF_NONE_MATCH_ANY, Condition
from garagekv.model.k2v.item import K2VItem, partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.txn import DELETE, EXISTS, PUT, READ, Compare, Txn, TxnOp, to_wire
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.util import codec
from garagekv.util.errors import ServiceUnavailable
from tests.support.standalone import NODE, NODE_ID, LoopbackTransport, StandaloneModel

BUCKET = b"\x07" * 32


@pytest.fixture
def node(tmp_path):
    o = StandaloneModel(tmp_path / "db")
    registry = EndpointRegistry()
    o.model.acceptor.register(registry)
    o.model.proposer.transport = LoopbackTransport(registry)
    yield o
    o.close()


def _item(sk: str, node: int, ts: int, value: bytes | None) -> K2VItem:
    item = K2VItem.new(BUCKET, "p", sk)
    item.update(node, None, value, ts - 1)
    return item


async def test_conditions_and_chained_tokens(node):
    c = node.model.conditional
    out = await c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"v1")
    assert out.applied and out.token is not None
    again = await c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"v2")
    assert not again.applied and again.token == out.token
    chained = await c.write(BUCKET, "p", "k", Condition(IF_MATCH, CausalContext.parse(out.token)), b"v2")
    assert chained.applied
    stale = await c.write(BUCKET, "p", "k", Condition(IF_MATCH, CausalContext.parse(out.token)), b"v3")
    assert not stale.applied and stale.token == chained.token
    missing = await c.write(BUCKET, "p", "none", Condition(IF_MATCH_ANY), b"x")
    assert missing == type(missing)(False, None)
    item = await c.read(BUCKET, "p", "k")
    assert item is not None and item.values() == [b"v2"]
    assert item.causal_context().serialize() == chained.token
    assert await c.read(BUCKET, "p", "none") is None


async def test_a_commit_reaches_counters_and_later_inserts_issue_above_it(node):
    c = node.model.conditional
    out = await c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"abc")
    ts = CausalContext.parse(out.token).get(NODE)
    await node.model.counter_queue.flush()
    page, filt = await node.model.k2v.read_index(BUCKET, RangeQuery())
    ((pk, entry),) = page.entries
    assert node.model.k2v.counter_values(entry, filt) == {"entries": 1, "conflicts": 0, "values": 1, "bytes": 3}
    # A plain insert on another item gets a later time than the conditional write's dot.
    await node.model.k2v.insert(BUCKET, InsertedItem("p", "other", None, b"x"))
    other = await node.model.k2v.read_item(BUCKET, "p", "other")
    assert other.causal_context().get(NODE) > ts


def test_merge_is_a_join(node):
    m = node.model.acceptor.machine
    a = _item("k", 1, 10, b"a").encode()
    b = _item("k", 2, 20, b"b").encode()
    ab = m.merge(b"k", [a, b])
    assert ab == m.merge(b"k", [b, a]) == m.merge(b"k", [a, None, b, a])
    assert m.merge(b"k", [None, None]) is None
    assert m.merge(b"k", [ab, a]) == ab
    assert sorted(K2VItem.decode(ab).values()) == [b"a", b"b"]


async def test_apply_in_is_idempotent_and_raises_the_local_clock(node):
    m = node.model.acceptor.machine
    far = 10**13  # a dot of this node's entry far beyond what it issued so far
    update = codec.encode_lists([_item("k", NODE, far, b"v").encode()])
    key = partition_hash(BUCKET, "p")
    for _ in range(2):
        node.writer.run_sync(lambda tx: m.apply_in(tx, key, update))
    item = await node.model.k2v.read_item(BUCKET, "p", "k")
    assert item.values() == [b"v"]
    with node.db.read() as txn:
        raw = txn.get(b"timestamp", db=node.model.store._local_ts)
    assert raw is not None and struct.unpack(">Q", raw)[0] >= far
    with pytest.raises(ValueError):
        wrong = codec.encode_lists([K2VItem.new(BUCKET, "elsewhere", "k").encode()])
        node.writer.run_sync(lambda tx: m.apply_in(tx, key, wrong))


async def test_consensus_counters_are_exported(node):
    from prometheus_client.core import Metric

    from garagekv.admin.cluster_metrics import consensus_families

    await node.model.conditional.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"v")
    families: dict[str, Metric] = {f.name: f for f in consensus_families(node.model)}
    assert families["garagekv_consensus_rounds"].samples[0].value == 1
    assert families["garagekv_consensus_commits"].samples[0].value == 1


async def test_a_node_without_layout_refuses_forwarded_operations(node):
    from garagekv.util.errors import ServiceUnavailable

    put = Txn(success=(TxnOp(PUT, "k", b"v"),))
    with pytest.raises(ServiceUnavailable):
        await node.model.conditional._handle(b"\x01" * 32, ["txn", BUCKET, "p", to_wire(put)])
    assert await node.model.conditional.read(BUCKET, "p", "k") is None


async def test_a_transaction_commits_its_branch_as_one_update(node):
    c = node.model.conditional
    txn = Txn(
        (Compare("a", EXISTS, exists=False), Compare("b", EXISTS, exists=False)),
        (TxnOp(PUT, "a", b"1"), TxnOp(PUT, "b", b"2"), TxnOp(DELETE, "c"), TxnOp(READ, "b")),
        (TxnOp(READ, "a"),),
    )
    res = await c.txn(BUCKET, "p", txn)
    assert res.succeeded and [r.op for r in res.results] == [PUT, PUT, DELETE, READ]
    assert res.results[3].item is not None and res.results[3].item.values() == [b"2"]
    # One round, one reserved timestamp: every write of the branch carries the same dot.
    dots = {r.sort_key: r.item.causal_context().get(NODE) for r in res.results if r.item is not None}
    assert len(set(dots.values())) == 1
    for sk, want in (("a", [b"1"]), ("b", [b"2"]), ("c", [None])):
        item = await node.model.k2v.read_item(BUCKET, "p", sk)
        assert item is not None and item.values() == want
    # Run again: the compares are false now, the failure branch reads.
    again = await c.txn(BUCKET, "p", txn)
    assert not again.succeeded and again.results[0].item.values() == [b"1"]
    assert node.model.consensus_metrics.rounds == 2


async def test_malformed_forwarded_transactions_are_refused(node):
    from garagekv.rpc.messages import MalformedMessage

    for msg in (
        ["write", BUCKET, "p", []],
        ["txn", BUCKET, "p"],
        ["txn", BUCKET, 5, [[], [], []]],
        ["txn", BUCKET, "p", [[["a", "size", None, False, b"", ""]], [], []]],
        ["txn", BUCKET, "p", [[], [["put", "a", None, None]], []]],
    ):
        with pytest.raises(MalformedMessage):
            await node.model.conditional._handle(NODE_ID, msg)


async def test_a_round_reserves_again_above_a_time_of_this_node_already_in_an_item(node):
    """An item may hold a time of this node beyond its clock (a client's token, recorded by
    another coordinator). The round's dot must still be one it reserved, never one past it that
    this node could issue again."""
    from garagekv.model.k2v.causality import now_ms

    far = now_ms() + 60_000
    seeded = K2VItem.new(BUCKET, "p", "k")
    seeded.update(2, CausalContext({NODE: far}), b"old", 10, others_limit=far)
    assert seeded.items[NODE].t_discard == far
    node.writer.run_sync(lambda tx: node.model.items.data.merge_in(tx, seeded))
    out = await node.model.conditional.write(BUCKET, "p", "k", Condition(IF_MATCH_ANY), b"new")
    assert out.applied
    dot = CausalContext.parse(out.token).get(NODE)
    assert dot > far
    # The reservation covered it: the next plain insert of this node is above it.
    await node.model.k2v.insert(BUCKET, InsertedItem("p", "other", None, b"x"))
    other = await node.model.k2v.read_item(BUCKET, "p", "other")
    assert other.causal_context().get(NODE) > dot


# ---- an attempt that lost its round after proposing -----------------------------------------------
#
# A scripted proposer stands in for the real one for the round under test: it calls ``decide``
# the way the real one would on each attempt, and does between attempts what other rounds could
# do meanwhile (complete the lost proposal, write the item). Those other rounds run directly
# (``_direct``), not through the key's queue, which the round under test holds.


class ScriptedProposer:
    def __init__(self, real: Any, script: list[Any]) -> None:
        self.real = real
        self.script = script

    async def run(self, key: bytes, read_keys: Any, decide: Any, *, timeout: float | None = None) -> Any:
        if not self.script:
            return await self.real.run(key, read_keys, decide, timeout=timeout)
        return await self.script.pop(0)(key, read_keys, decide)

    def contended(self, key: bytes) -> bool:
        return self.real.contended(key)


def _states(node, key: bytes, read_keys: Any) -> dict[bytes, bytes | None]:
    m = node.model.acceptor.machine
    states = node.writer.run_sync(lambda tx: m.read_in(tx, key, list(read_keys)))
    return dict(zip(read_keys, states, strict=True))


def _apply(node, key: bytes, update: bytes) -> None:
    m = node.model.acceptor.machine
    node.writer.run_sync(lambda tx: m.apply_in(tx, key, update))


def _stored(node, sk: str) -> K2VItem:
    key = partition_hash(BUCKET, "p")
    raw = _states(node, key, [sk.encode()])[sk.encode()]
    assert raw is not None
    return K2VItem.decode(raw)


async def _direct(c, txn: Txn):
    """Another round on the same key, run at once (the real proposer, no queue)."""
    from garagekv.model.k2v.conditional import _KeyQueue

    (out,) = await c._round(partition_hash(BUCKET, "p"), _KeyQueue(BUCKET, "p"), [txn])
    if isinstance(out, BaseException):
        raise out
    return out


def _cond_write(sk: str, cond: Condition, value: bytes) -> Txn:
    return Txn((cond.as_compare(sk),), (TxnOp(PUT, sk, value),), (TxnOp(READ, sk),))


async def test_a_lost_write_completed_then_superseded_is_not_applied_again(node):
    from garagekv.util.errors import ServiceUnavailable

    c = node.model.conditional
    assert (await c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"v0")).applied
    other: list[Any] = []

    async def attempts(key, read_keys, decide):
        proposal = decide(_states(node, key, read_keys))  # attempt 1 proposes "mine", then loses
        assert proposal.update is not None
        _apply(node, key, proposal.update)  # another proposer completes it...
        mine = _stored(node, "k")
        assert mine.values() == [b"mine"]
        replace = _cond_write("k", Condition(IF_MATCH, mine.causal_context()), b"theirs")
        other.append(await _direct(c, replace))  # ...and it is replaced
        again = decide(_states(node, key, read_keys))  # attempt 2: If-Match: * holds on "theirs"
        assert again.update is None, "the write would be applied a second time"
        return again.result

    c.proposer = ScriptedProposer(c.proposer, [attempts])
    with pytest.raises(ServiceUnavailable, match="may or may not"):
        await c.write(BUCKET, "p", "k", Condition(IF_MATCH_ANY), b"mine")
    assert other[0].succeeded
    assert (await c.read(BUCKET, "p", "k")).values() == [b"theirs"]  # applied once, replaced: stays so


async def test_a_write_reserved_before_another_of_its_node_keeps_its_own_dot(node):
    # Operation A reserves its times, then B, on the same node, reserves later ones and writes
    # the item first. A's dot must not be bumped past B's (its later attempts look for exactly a
    # dot it reserved): A's round reserves again and starts over.
    from garagekv.model.k2v.conditional import _Reserve

    c = node.model.conditional

    async def attempts(key, read_keys, decide):
        assert (await _direct(c, _cond_write("k", Condition(IF_NONE_MATCH_ANY), b"B"))).succeeded
        with pytest.raises(_Reserve):
            decide(_states(node, key, read_keys))
        raise _Reserve(_stored(node, "k").items[NODE].max_time())

    c.proposer = ScriptedProposer(c.proposer, [attempts])
    out = await c.write(BUCKET, "p", "k", Condition(IF_MATCH_ANY), b"A")
    assert out.applied
    item = await c.read(BUCKET, "p", "k")
    assert item.values() == [b"A"] and item.causal_context().serialize() == out.token
    assert len(item.items[NODE].values) == 1


async def test_a_lost_write_found_applied_answers_the_tokens_of_its_own_write(node):
    # A transaction writes a and b, loses its round after proposing; another proposer completes
    # it, then a conditional write replaces a. The next attempt finds the transaction applied (its
    # dot is still in b): the token it answers for a is the one right after its own write, not
    # the one after the write that replaced it (a client would take that for its own value's).
    c = node.model.conditional
    txn = Txn(
        (Compare("a", EXISTS, exists=False), Compare("b", EXISTS, exists=False)),
        (TxnOp(PUT, "a", b"a1"), TxnOp(PUT, "b", b"b1")),
    )
    tokens: list[str] = []

    async def attempts(key, read_keys, decide):
        proposal = decide(_states(node, key, read_keys))
        _apply(node, key, proposal.update)  # completed by another proposer
        a = _stored(node, "a")
        tokens.append(a.causal_context().serialize())
        assert (await _direct(c, _cond_write("a", Condition(IF_MATCH, a.causal_context()), b"a2"))).succeeded
        again = decide(_states(node, key, read_keys))
        assert again.update is None
        return again.result

    c.proposer = ScriptedProposer(c.proposer, [attempts])
    res = await c.txn(BUCKET, "p", txn)
    assert res.succeeded
    assert res.results[0].item.causal_context().serialize() == tokens[0]
    assert res.results[0].item.values() == [b"a1"]


async def test_reads_too_big_for_one_message(node, monkeypatch):
    """A round whose read states do not fit in an acceptor's answer ends before proposing: one
    operation alone gets the 413; operations batched into that round run again in rounds of
    their own; a round that had already proposed a write cannot say whether it applied (503)."""
    c = node.model.conditional
    real = c.proposer.run
    rounds: list[int] = []

    async def too_big_together(key, read_keys, decide, timeout=None):
        rounds.append(len(read_keys))
        if len(read_keys) > 1:
            raise ReadTooLarge("the answer is 17000000 bytes, over the RPC frame limit")
        return await real(key, read_keys, decide, timeout=timeout)

    monkeypatch.setattr(c.proposer, "run", too_big_together)
    a, b = await asyncio.gather(
        c.txn(BUCKET, "p", Txn(success=(TxnOp(PUT, "a", b"1"),))),
        c.txn(BUCKET, "p", Txn(success=(TxnOp(PUT, "b", b"2"),))),
    )
    assert a.succeeded and b.succeeded and rounds == [2, 1, 1]
    with pytest.raises(ReadTooLarge):
        await c.txn(BUCKET, "p", Txn(success=(TxnOp(READ, "a"), TxnOp(READ, "b"))))

    async def proposed_then_too_big(key, read_keys, decide, timeout=None):
        decide({k: None for k in read_keys})  # an attempt decided (and would have proposed) a write
        raise ReadTooLarge("the answer is 17000000 bytes, over the RPC frame limit")

    monkeypatch.setattr(c.proposer, "run", proposed_then_too_big)
    with pytest.raises(ServiceUnavailable, match="may or may not have been applied"):
        await c.txn(BUCKET, "p", Txn(success=(TxnOp(PUT, "c", b"3"),)))
