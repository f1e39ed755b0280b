"""Conditional K2V writes and linearizable reads, decided by a consensus round.

This is the K2V adapter of docs/consensus.md §10: ``K2VMachine`` gives the consensus layer's
opaque states their meaning (a state is an encoded item, merge is the DVVS merge, a committed
update is a list of items merged into the item table like a replica's write), and
``ConditionalK2V`` runs the operations. An operation always runs on a storage node of its
partition; any other node forwards it to one (``RPC_PATH``), so the DVVS node number of a
conditional write is a storage node's and the round's view is a layout member's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from garagekv.consensus import Decision, Proposer
from garagekv.db.writer import WriteTxn
from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import K2VItem, Value, merge_encoded, partition_hash
from garagekv.model.k2v.store import K2VStore, LocalClock
from garagekv.model.k2v.txn import (
    DELETE,
    EXISTS,
    OPS,
    PUT,
    READ,
    TOKEN,
    Compare,
    OpResult,
    Txn,
    TxnOp,
    TxnResult,
    evaluate,
    from_wire,
    has_dot,
    to_wire,
)
from garagekv.net.netapp import NetApp
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.messages import as_bytes, as_opt_bytes, malformed
from garagekv.rpc.readiness import has_ring
from garagekv.table.data import TableData
from garagekv.util import codec
from garagekv.util.errors import GarageKVError, ServiceUnavailable

log = logging.getLogger(__name__)

RPC_PATH = endpoint_path("model/k2v", "conditional")

#: The kinds of condition a write may carry.
IF_MATCH = "if-match"  # token: the item's causal context is exactly this
IF_MATCH_ANY = "if-match-any"  # the item has a live value
IF_NONE_MATCH_ANY = "if-none-match-any"  # the item has no live value
CONDITIONS = (IF_MATCH, IF_MATCH_ANY, IF_NONE_MATCH_ANY)


@dataclass(frozen=True)
class Condition:
    kind: str
    token: CausalContext | None = None

    def as_compare(self, sort_key: str) -> Compare:
        if self.kind == IF_MATCH:
            return Compare(sort_key, TOKEN, self.token)
        return Compare(sort_key, EXISTS, exists=self.kind == IF_MATCH_ANY)


@dataclass(frozen=True)
class WriteOutcome:
    """``applied``: the condition held and the write is durable; ``token``: the item's token
    after the write, or its current one when the condition was false (None: never written)."""

    applied: bool
    token: str | None


class K2VMachine:
    """The consensus ``StateMachine`` for K2V items (read keys are UTF-8 sort keys)."""

    def __init__(self, item_data: TableData[K2VItem], clock: LocalClock, node: int) -> None:
        self.item_data = item_data
        self.node = node
        self.clock = clock

    def read_in(self, tx: WriteTxn, key: bytes, read_keys: Sequence[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for rk in read_keys:
            raw = tx.get(self.item_data.store, key + rk)
            out.append(None if raw is None else bytes(raw))
        return out

    def merge(self, read_key: bytes, states: Sequence[bytes | None]) -> bytes | None:
        merged = merge_encoded(states)
        return None if merged is None else merged.encode()

    def apply_in(self, tx: WriteTxn, key: bytes, update: bytes) -> None:
        raws = codec.decode(update)
        if not isinstance(raws, list):
            raise ValueError("a K2V consensus update is a list of encoded items")
        top = 0
        for raw in raws:
            item = K2VItem.decode(bytes(raw))
            if item.partition_hash() != key[:32]:
                raise ValueError("a committed item outside its consensus key's partition")
            # The table's own merge path: counters, Merkle queue and poll wake-ups follow.
            self.item_data.merge_in(tx, item)
            own = item.items.get(self.node)
            if own is not None:
                top = max(top, own.max_time())
        if top:
            # Dots of this node's entry applied here: later plain inserts must issue above them.
            self.clock.raise_in(tx, top)


class ConditionalK2V:
    """Conditional writes and linearizable reads of K2V items, forwarded to a storage node."""

    def __init__(
        self,
        store: K2VStore,
        proposer: Proposer,
        replication: Any,
        order: Any,
        netapp: NetApp,
        registry: EndpointRegistry,
        node_id: bytes,
        timeout: float,
    ) -> None:
        self.store = store
        self.proposer = proposer
        self.replication = replication
        self.order = order
        self.netapp = netapp
        self.node_id = node_id
        self.timeout = timeout
        registry.register(RPC_PATH, self._handle)

    # ---- entry points (any node) -----------------------------------------------------------------

    async def write(self, bucket_id: bytes, pk: str, sk: str, cond: Condition, value: Value) -> WriteOutcome:
        """A conditional InsertItem (``value``) or DeleteItem (``None``): a transaction of one
        compare, the write on success and a read of the item (its current token) on failure."""
        write = TxnOp(PUT, sk, value) if value is not None else TxnOp(DELETE, sk)
        res = await self.txn(bucket_id, pk, Txn((cond.as_compare(sk),), (write,), (TxnOp(READ, sk),)))
        item = res.results[0].item
        return WriteOutcome(res.succeeded, None if item is None else item.causal_context().serialize())

    async def read(self, bucket_id: bytes, pk: str, sk: str) -> K2VItem | None:
        res = await self.txn(bucket_id, pk, Txn(success=(TxnOp(READ, sk),)))
        return res.results[0].item

    async def txn(self, bucket_id: bytes, pk: str, txn: Txn) -> TxnResult:
        raw = await self._forward(bucket_id, pk, ["txn", bucket_id, pk, to_wire(txn)])
        return _result_from_wire(raw)

    async def _forward(self, bucket_id: bytes, pk: str, msg: list[Any]) -> Any:
        nodes = self.replication.storage_nodes(partition_hash(bucket_id, pk))
        if self.node_id in nodes or not nodes:
            return await self._handle(self.node_id, msg)
        # One storage node only: retrying elsewhere after a failure could run the operation
        # twice and answer the second run's view (a 412 for a write that applied).
        target = self.order(nodes)[0]
        try:
            return await self.netapp.call(target, RPC_PATH, msg, timeout=self.timeout + 5.0)
        except GarageKVError:
            raise
        except Exception as e:  # noqa: BLE001 - transport failure: the operation may or may not have run
            raise ServiceUnavailable(f"the storage node coordinating this operation failed: {e}") from None

    # ---- on a storage node -----------------------------------------------------------------------

    async def _handle(self, from_node: bytes, msg: Any) -> Any:
        what = "conditional K2V request"
        if from_node != self.node_id and not has_ring(self.replication.layout.history):
            # Another node sees this one as a storage node but it has no layout yet: alone, it
            # would be its own quorum and decide against nobody. The caller gets a 503.
            raise ServiceUnavailable("this node has no cluster layout yet: it cannot run a consensus round")
        if not isinstance(msg, list) or len(msg) != 4 or msg[0] != "txn":
            raise malformed(what, 'expected ["txn", bucket, partition key, transaction]')
        _, bucket_id, pk, raw_txn = msg
        bucket_id = as_bytes(what, "bucket", bucket_id, 32)
        if not isinstance(pk, str):
            raise malformed(what, "the partition key must be a string")
        res = await self._txn_here(bucket_id, pk, from_wire(what, raw_txn))
        return [res.succeeded, [[r.op, r.sort_key, None if r.item is None else r.item.encode()] for r in res.results]]

    async def _reserve_ts(self, above: int = 0) -> int:
        """A timestamp above every one this node issued (and above ``above``), persisted before
        the round (decide is pure, so it cannot raise the clock itself); the new dots get exactly
        ``ts + 1``."""
        clock = self.store.clock

        def reserve(tx: WriteTxn) -> int:
            clock.raise_in(tx, above)
            return clock.reserve_in(tx)

        return await self.store.writer.submit(reserve)

    async def _txn_here(self, bucket_id: bytes, pk: str, txn: Txn) -> TxnResult:
        """Run ``txn`` as one consensus round, its writes all at the dot ``(node, ts + 1)``.

        That dot is what tells a later attempt of this operation whether an earlier one applied
        (docs/consensus.md §10), so it must be exactly ``ts + 1``, never bumped past a newer dot
        of this node already in an item: when an operation of this node that reserved later has
        written one of the items first, the round is run again with a new reservation.
        """
        sort_keys = txn.read_keys()
        writes = any(o.writes for o in (*txn.success, *txn.failure))
        node = self.store.node
        max_bytes = self.store.max_item_bytes
        key = partition_hash(bucket_id, pk)
        deadline = time.monotonic() + self.timeout
        proposed: bool | None = None  # the branch an earlier attempt of this operation proposed
        dot = 0  # the time of that attempt's dot
        outcome: TxnResult | None = None  # and its results, the written items' tokens among them
        above = 0
        for _ in range(MAX_RESERVATIONS):
            node_ts = await self._reserve_ts(above) if writes else 0

            def decide(merged: Mapping[bytes, bytes | None], node_ts: int = node_ts) -> Decision[TxnResult]:
                nonlocal proposed, dot, outcome
                raws = {sk: merged[sk.encode()] for sk in sort_keys}
                state = {sk: None if raw is None else K2VItem.decode(raw) for sk, raw in raws.items()}
                if proposed is not None:
                    branch = txn.branch(proposed)
                    written = [o.sort_key for o in branch if o.writes]
                    if any(has_dot(state[sk], node, dot) for sk in written):
                        # An earlier attempt was chosen and completed by another proposer (this
                        # one lost its ballot after proposing): it applied. Its writes' tokens are
                        # those it computed (the items now may hold later writes on top of it);
                        # its reads' results are not trusted.
                        if any(not o.writes for o in branch):
                            raise ServiceUnavailable(
                                "the transaction was applied by a concurrent round, but its read results are "
                                "unknown (read the items again)"
                            )
                        assert outcome is not None
                        return Decision(None, outcome)
                    if any(_seen(state[sk], node) >= dot for sk in written):
                        # The items' clocks have passed the dot without showing it: the earlier
                        # attempt may have applied and been superseded since. Deciding again on
                        # this state could apply the operation a second time.
                        raise ServiceUnavailable(
                            "the transaction lost its round to a concurrent one after proposing and the items "
                            "changed since: it may or may not have been applied (read the items to know)"
                        )
                    # Below the dot: the earlier attempt has not applied. It may still be completed
                    # later, but only in this same instance (no commit came after it), where at
                    # most one proposal is chosen: that one, or the one made now, with the same
                    # branch and dot. Either way the operation applies once.
                sizes = {sk: None if raw is None else len(raw) for sk, raw in raws.items()}
                ev = evaluate(txn, state, bucket_id, pk, node, node_ts, max_bytes, sizes)
                if proposed is not None and ev.succeeded != proposed:
                    # The earlier proposal may have been accepted, completed by another proposer and
                    # superseded since: answering the other branch could deny a write that applied.
                    raise ServiceUnavailable(
                        "the transaction lost its round to a concurrent one after proposing: it may or may "
                        "not have been applied (read the items to know)"
                    )
                if not ev.written:
                    return Decision(None, TxnResult(ev.succeeded, ev.results))
                seen = max(_seen(state[i.sort_key], node) for i in ev.written)
                if seen > node_ts:
                    # A later reservation of this node wrote here first: a dot at node_ts + 1
                    # would not be above the item's clock (update would bump it past, where
                    # another operation's reserved dot may lie).
                    assert proposed is None  # else the checks above raised
                    raise _StaleReservation(seen)
                proposed, dot = ev.succeeded, node_ts + 1
                outcome = TxnResult(ev.succeeded, ev.results)
                update = codec.encode_lists([i.encode() for i in ev.written])
                return Decision(update, outcome)

            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return await self.proposer.run(key, [sk.encode() for sk in sort_keys], decide, timeout=remaining)
            except _StaleReservation as e:
                above = e.seen
        raise ServiceUnavailable("the transaction could not reserve a timestamp above its items' clocks in time")


#: Rounds one operation may start over with a new timestamp (each time, another operation of
#: this node wrote one of its items between its reservation and its round).
MAX_RESERVATIONS = 8


class _StaleReservation(Exception):
    """``decide`` found a newer dot of this node in an item than the operation's reservation."""

    def __init__(self, seen: int) -> None:
        super().__init__(seen)
        self.seen = seen


def _seen(item: K2VItem | None, node: int) -> int:
    """The latest time of ``node`` that ``item`` has seen (its token's entry for the node)."""
    entry = None if item is None else item.items.get(node)
    return 0 if entry is None else entry.max_time()


def _result_from_wire(raw: Any) -> TxnResult:
    what = "transaction result"
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], bool) or not isinstance(raw[1], list):
        raise malformed(what, "expected [succeeded, results]")
    out = []
    for r in raw[1]:
        if not isinstance(r, list) or len(r) != 3 or r[0] not in OPS or not isinstance(r[1], str):
            raise malformed(what, "a result is [op, sort key, item]")
        item = as_opt_bytes(what, "item", r[2])
        out.append(OpResult(r[0], r[1], None if item is None else K2VItem.decode(item)))
    return TxnResult(raw[0], out)
