"""The K2V consensus adapter (model/k2v/conditional.py) on one standalone node and real LMDB."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.conditional import IF_MATCH, IF_MATCH_ANY, IF_NONE_MATCH_ANY, Condition
from garagekv.model.k2v.item import K2VItem, partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.txn import DELETE, EXISTS, PUT, READ, Compare, Txn, TxnOp, to_wire
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.util import codec
from tests.support.standalone import NODE, NODE_ID, StandaloneModel

BUCKET = b"\x07" * 32


class LoopbackTransport:
    """A standalone node's calls to itself, through its registry and the wire encoding."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    async def call(self, node: bytes, path: str, body: Any, timeout: float | None = None) -> Any:
        reply = await self.registry.dispatch(node, path, codec.decode(codec.encode(body)))
        return codec.decode(codec.encode(reply))


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


# ---- an attempt that lost its round after proposing -----------------------------------------------
#
# A scripted proposer stands in for the real one for the operation under test: it calls
# ``decide`` the way the real one would on each attempt, and does between attempts what other
# rounds could do meanwhile (complete the lost proposal, write the item). Other operations go
# through the real proposer.


class ScriptedProposer:
    def __init__(self, real: Any, script: list[Any]) -> None:
        self.real = real
        self.script = script
        self.calls = 0

    async def run(self, key: bytes, read_keys: Any, decide: Any, *, timeout: float | None = None) -> Any:
        self.calls += 1
        if not self.script:
            return await self.real.run(key, read_keys, decide, timeout=timeout)
        return await self.script.pop(0)(key, read_keys, decide)


def _states(node, key: bytes, read_keys: Any) -> dict[bytes, bytes | None]:
    m = node.model.acceptor.machine
    states = node.writer.run_sync(lambda tx: m.read_in(tx, key, list(read_keys)))
    return dict(zip(read_keys, states, strict=True))


def _apply(node, key: bytes, update: bytes) -> None:
    m = node.model.acceptor.machine
    node.writer.run_sync(lambda tx: m.apply_in(tx, key, update))


async def test_a_lost_write_completed_then_superseded_is_not_applied_again(node):
    from garagekv.util.errors import ServiceUnavailable

    c = node.model.conditional
    first = await c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"v0")
    other: list[Any] = []

    async def attempts(key, read_keys, decide):
        proposal = decide(_states(node, key, read_keys))  # attempt 1 proposes "mine", then loses
        assert proposal.update is not None
        _apply(node, key, proposal.update)  # another proposer completes it...
        mine = await c.read(BUCKET, "p", "k")
        assert mine.values() == [b"mine"]
        token = CausalContext.parse(mine.causal_context().serialize())
        other.append(await c.write(BUCKET, "p", "k", Condition(IF_MATCH, token), b"theirs"))  # ...and it is replaced
        again = decide(_states(node, key, read_keys))  # attempt 2: If-Match: * holds on "theirs"
        assert again.update is None, "the write would be applied a second time"
        return again.result

    c.proposer = ScriptedProposer(c.proposer, [attempts])
    assert first.applied
    with pytest.raises(ServiceUnavailable, match="may or may not"):
        await c.write(BUCKET, "p", "k", Condition(IF_MATCH_ANY), b"mine")
    assert other[0].applied
    item = await c.read(BUCKET, "p", "k")
    assert item.values() == [b"theirs"]  # "mine" applied once, then replaced: it stays replaced


async def test_a_write_reserved_before_another_of_its_node_keeps_its_own_dot(node):
    # Operation A reserves its timestamp, then B, on the same node, reserves a later one and
    # writes the item first. A's dot must not be bumped past B's: its later attempts look for
    # exactly its reserved dot to know whether it applied.
    c = node.model.conditional
    real = c.proposer

    async def attempts(key, read_keys, decide):
        c.proposer = real
        assert (await c.write(BUCKET, "p", "k", Condition(IF_NONE_MATCH_ANY), b"B")).applied
        proposal = decide(_states(node, key, read_keys))  # A's attempt 1 proposes, then loses
        _apply(node, key, proposal.update)  # completed by another proposer
        again = decide(_states(node, key, read_keys))  # A's attempt 2 must find its write applied
        assert again.update is None, "the write would be applied a second time"
        return again.result

    c.proposer = ScriptedProposer(real, [attempts])
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
        a = await c.read(BUCKET, "p", "a")
        tokens.append(a.causal_context().serialize())
        token = CausalContext.parse(tokens[0])
        assert (await c.write(BUCKET, "p", "a", Condition(IF_MATCH, token), b"a2")).applied
        again = decide(_states(node, key, read_keys))
        assert again.update is None
        return again.result

    c.proposer = ScriptedProposer(c.proposer, [attempts])
    res = await c.txn(BUCKET, "p", txn)
    assert res.succeeded
    assert res.results[0].item.causal_context().serialize() == tokens[0]
    assert res.results[0].item.values() == [b"a1"]
