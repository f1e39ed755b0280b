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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from garagekv.consensus import Decision, Proposer
from garagekv.db.writer import WriteTxn
from garagekv.model.k2v.causality import CLOCK_HORIZON_MS, CausalContext
from garagekv.model.k2v.item import MAX_TTL_SEC, ClockExhausted, K2VItem, Value, merge_encoded, partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.store import K2VStore, LocalClock, check_context
from garagekv.net.netapp import NetApp
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.messages import as_bytes, as_int, as_opt_bytes, malformed
from garagekv.rpc.readiness import has_ring
from garagekv.table.data import TableData, check_size
from garagekv.util import codec
from garagekv.util.errors import GarageKVError, ServiceUnavailable
from garagekv.util.time import now_ms

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

    def holds(self, item: K2VItem | None) -> bool:
        if self.kind == IF_MATCH:
            assert self.token is not None
            return item is not None and dict(item.causal_context().items()) == dict(self.token.items())
        live = item is not None and not item.at(now_ms()).is_tombstone()  # an expired value is not live
        return live if self.kind == IF_MATCH_ANY else not live


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

    async def write(
        self, bucket_id: bytes, pk: str, sk: str, cond: Condition, value: Value, ttl: int | None = None
    ) -> WriteOutcome:
        """``ttl``: the new value expires that many seconds after the storage node decides it."""
        token = None if cond.token is None else cond.token.serialize()
        msg = ["write", bucket_id, pk, sk, cond.kind, token, value]
        if ttl is not None:
            msg.append(ttl)
        ok, tok = await self._forward(bucket_id, pk, msg)
        return WriteOutcome(bool(ok), tok)

    async def read(self, bucket_id: bytes, pk: str, sk: str) -> K2VItem | None:
        raw = await self._forward(bucket_id, pk, ["read", bucket_id, pk, sk, None, None, None])
        return None if raw is None else K2VItem.decode(raw).at(now_ms())

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
        op, bucket_id, pk, sk, kind, token, value = _fields7(what, msg)[:7]
        ttl = None if len(msg) == 7 else as_int(what, "ttl", msg[7], 1, MAX_TTL_SEC)
        bucket_id = as_bytes(what, "bucket", bucket_id, 32)
        if not isinstance(pk, str) or not isinstance(sk, str):
            raise malformed(what, "keys must be strings")
        if op == "read":
            item = await self._read_here(bucket_id, pk, sk)
            return None if item is None else item.encode()
        if op != "write" or kind not in CONDITIONS:
            raise malformed(what, "unknown operation or condition")
        if kind == IF_MATCH:
            if not isinstance(token, str):
                raise malformed(what, "If-Match needs a token")
            cond = Condition(kind, CausalContext.parse_client(token))
        else:
            cond = Condition(kind)
        value = as_opt_bytes(what, "value", value)
        if ttl is not None and value is None:
            raise malformed(what, "a deletion cannot have a TTL")
        outcome = await self._write_here(bucket_id, pk, sk, cond, value, ttl)
        return [outcome.applied, outcome.token]

    async def _reserve_ts(self) -> int:
        """A timestamp above every one this node issued, persisted before the round (decide is
        pure, so it cannot raise the clock itself); the new dot gets exactly ``ts + 1``."""
        return await self.store.writer.submit(self.store.clock.reserve_in)

    async def _write_here(
        self, bucket_id: bytes, pk: str, sk: str, cond: Condition, value: Value, ttl: int | None = None
    ) -> WriteOutcome:
        node_ts = await self._reserve_ts()
        rk = sk.encode()
        node = self.store.node
        max_bytes = self.store.max_item_bytes
        proposed = False  # an earlier attempt of this operation proposed its write

        def decide(merged: Mapping[bytes, bytes | None]) -> Decision[WriteOutcome]:
            nonlocal proposed
            raw = merged[rk]
            item = None if raw is None else K2VItem.decode(raw)
            if item is not None and _has_own_write(item, node, node_ts + 1):
                # An earlier attempt of this operation was chosen and completed by another
                # proposer (this attempt lost its ballot after proposing): it applied.
                return Decision(None, WriteOutcome(True, item.causal_context().serialize()))
            if not cond.holds(item):
                if proposed:
                    # The earlier proposal may have been accepted, completed by another
                    # proposer and superseded since: a 412 could deny a write that applied.
                    raise ServiceUnavailable(
                        "the conditional write lost its round to a concurrent one after proposing: "
                        "it may or may not have been applied (read the item to know)"
                    )
                return Decision(None, WriteOutcome(False, None if item is None else item.causal_context().serialize()))
            new = item.copy() if item is not None else K2VItem.new(bucket_id, pk, sk)
            ctx = None if item is None else item.causal_context()
            before = len(new.items)
            expires = None if ttl is None else now_ms() + ttl * 1000
            try:
                new.update(node, ctx, value, node_ts, node_ts + CLOCK_HORIZON_MS, expires)
            except ClockExhausted as e:  # only data stored before clocks were bounded
                raise ServiceUnavailable(str(e)) from None
            check_context(InsertedItem(pk, sk, ctx, value), before, len(new.items))
            new_raw = new.encode()
            check_size(len(new_raw), None if raw is None else len(raw), max_bytes)
            update = codec.encode_lists([new_raw])
            proposed = True
            return Decision(update, WriteOutcome(True, new.causal_context().serialize()))

        key = partition_hash(bucket_id, pk)
        return await self.proposer.run(key, [rk], decide, timeout=self.timeout)

    async def _read_here(self, bucket_id: bytes, pk: str, sk: str) -> K2VItem | None:
        rk = sk.encode()

        def decide(merged: Mapping[bytes, bytes | None]) -> Decision[bytes | None]:
            return Decision(None, merged[rk])

        raw = await self.proposer.run(partition_hash(bucket_id, pk), [rk], decide, timeout=self.timeout)
        return None if raw is None else K2VItem.decode(raw)


def _has_own_write(item: K2VItem, node: int, ts: int) -> bool:
    """The dot ``(node, ts)`` this operation creates is in ``item``: the timestamp was reserved
    for this one operation, so no other write of this node carries it.

    (A discard time past ``ts`` is not taken as proof: another coordinator may record a
    client-supplied time for this node. So a write completed by another proposer *and*
    superseded before this proposer's next attempt is judged on the newer state.)
    """
    entry = item.items.get(node)
    return entry is not None and any(t == ts for t, _ in entry.values)


def _fields7(what: str, msg: Any) -> list[Any]:
    """The 7 fields of a request, and an eighth for a write's TTL."""
    if not isinstance(msg, list) or len(msg) not in (7, 8) or (len(msg) == 8 and msg[0] != "write"):
        raise malformed(what, "expected 7 fields (8 for a write with a TTL)")
    return msg
