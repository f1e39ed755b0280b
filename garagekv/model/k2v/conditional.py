"""Conditional K2V writes and linearizable reads, decided by a consensus round.

This is the K2V adapter of docs/consensus.md §10: ``K2VMachine`` gives the consensus layer's
opaque states their meaning (a state is an encoded item, merge is the DVVS merge, a committed
update is a list of items merged into the item table like a replica's write), and
``ConditionalK2V`` runs the operations. An operation always runs on a storage node of its
partition; any other node forwards it to one (``RPC_PATH``), so the DVVS node number of a
conditional write is a storage node's and the round's view is a layout member's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from garagekv.consensus import Decision, Proposer, ReadTooLarge
from garagekv.db.writer import TxnReader, WriteTxn
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
    Attempt,
    BatchOutcome,
    Compare,
    Deferred,
    OpResult,
    Txn,
    TxnOp,
    TxnResult,
    decide_batch,
    from_wire,
    to_wire,
)
from garagekv.net.netapp import NetApp
from garagekv.rpc.batching import MAX_BATCH_BYTES, CallBatcher, HeldAnswers, answer_each, resolve_held, unwrap_answer
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.messages import as_bytes, as_opt_bytes, malformed
from garagekv.rpc.readiness import has_ring
from garagekv.table.data import TableData
from garagekv.util import codec
from garagekv.util.codec import blake2sum
from garagekv.util.errors import GarageKVError, ServiceUnavailable

log = logging.getLogger(__name__)

RPC_PATH = endpoint_path("model/k2v", "conditional")
#: Several operations forwarded to one coordinator in one call (those of one loop turn):
#: ``[msgpack(RPC_PATH message), ...]``, answered per operation (``rpc.batching.answer_each``).
RPC_BATCH_PATH = endpoint_path("model/k2v", "conditional_batch")
#: Fetches an answer too big to travel with the rest of its batch (``rpc.batching.HeldAnswers``).
RPC_BATCH_HELD_PATH = endpoint_path("model/k2v", "conditional_batch_held")
MAX_FORWARD_BATCH = 4096
#: Seconds a forwarded operation may go unanswered, with nothing else heard from its storage
#: node, before that node is passed over as the coordinator of new operations, and how long
#: that lasts at most (it ends as soon as the node answers anything): a node that hangs is only
#: marked down after several missed pings (docs/consensus.md §9).
FORWARD_PATIENCE = 2.0
SLOW_COORDINATOR_MEMORY = 30.0

#: The kinds of condition a write may carry.
IF_MATCH = "if-match"  # token: the item's causal context is exactly this
IF_MATCH_ANY = "if-match-any"  # the item has a live value
IF_NONE_MATCH_ANY = "if-none-match-any"  # the item has no live value


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

    def read_in(self, tx: TxnReader, key: bytes, read_keys: Sequence[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for rk in read_keys:
            raw = tx.get(self.item_data.store, key + rk)
            out.append(None if raw is None else self.item_data.canonical(key + rk, raw))
        return out

    def merge(self, read_key: bytes, states: Sequence[bytes | None]) -> bytes | None:
        merged = merge_encoded(states)
        return None if merged is None else merged.encode()

    def apply_in(self, tx: WriteTxn, key: bytes, update: bytes) -> None:
        raws = codec.decode(update)
        if not isinstance(raws, list):
            raise ValueError("a K2V consensus update is a list of encoded items")
        top = dot = 0
        for raw in raws:
            item = K2VItem.decode(bytes(raw))
            if item.partition_hash() != key[:32]:
                raise ValueError("a committed item outside its consensus key's partition")
            # The table's own merge path: counters, Merkle queue and poll wake-ups follow.
            self.item_data.merge_in(tx, item)
            own = item.items.get(self.node)
            if own is not None:
                top = max(top, own.max_time())
                dot = max([dot, *(ts for ts, _ in own.values)])
        if top:
            # Dots of this node's entry applied here: later plain inserts must issue above them.
            self.clock.raise_in(tx, top)
        if dot:
            # A value of this node's own is one of its rounds' writes: that round's times are
            # settled (LocalClock.settle_in), in this transaction.
            self.clock.settle_in(tx, key, dot)


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
        is_up: Callable[[bytes], bool] = lambda _node: True,
    ) -> None:
        self.store = store
        self.proposer = proposer
        self.replication = replication
        self.order = order
        self.netapp = netapp
        self.node_id = node_id
        self.timeout = timeout
        self.is_up = is_up
        # Operations on one consensus key coordinated here are decided by one round at a time,
        # several per round: rounds of this node would otherwise only take each other's ballots
        # away (docs/consensus.md §9).
        self._queues: dict[bytes, _KeyQueue] = {}
        # Storage nodes that left a forwarded operation unanswered for FORWARD_PATIENCE while
        # sending nothing else, and since when: new operations go to the next coordinator.
        self._slow: dict[bytes, float] = {}
        registry.register(RPC_PATH, self._handle)
        registry.register(RPC_BATCH_PATH, self._handle_batch)
        registry.register(RPC_BATCH_HELD_PATH, self._handle_batch_held)
        self._held_answers = HeldAnswers()
        self._forwards: CallBatcher[bytes] = CallBatcher(self._send_batch)

    # ---- entry points (any node) -----------------------------------------------------------------

    async def write(
        self, bucket_id: bytes, pk: str, sk: str, cond: Condition, value: Value, ttl: int | None = None
    ) -> WriteOutcome:
        """A conditional InsertItem (``value``, expiring after ``ttl`` seconds if given) or
        DeleteItem (``None``): a transaction of one compare, the write on success and a read of
        the item (its current token) on failure."""
        write = TxnOp(PUT, sk, value, ttl) if value is not None else TxnOp(DELETE, sk)
        res = await self.txn(bucket_id, pk, Txn((cond.as_compare(sk),), (write,), (TxnOp(READ, sk),)))
        item = res.results[0].item
        return WriteOutcome(res.succeeded, None if item is None else item.causal_context().serialize())

    async def read(self, bucket_id: bytes, pk: str, sk: str) -> K2VItem | None:
        res = await self.txn(bucket_id, pk, Txn(success=(TxnOp(READ, sk),)))
        return res.results[0].item

    async def txn(self, bucket_id: bytes, pk: str, txn: Txn) -> TxnResult:
        key = partition_hash(bucket_id, pk)
        nodes = self.replication.storage_nodes(key)
        if self.node_id in nodes and not self.proposer.contended(key):
            # A storage node runs the rounds of a key nobody else proposes on: no hop. Once
            # another proposer took a ballot from it, the key goes to its coordinator
            # (docs/consensus.md §9).
            target: bytes | None = self.node_id
        else:
            target = self.coordinator(key, nodes)
        if target is None or target == self.node_id:
            return await self._txn_here(bucket_id, pk, txn)
        return _result_from_wire(await self._forward(target, ["txn", bucket_id, pk, to_wire(txn)]))

    async def _forward(self, target: bytes, msg: list[Any]) -> Any:
        # One storage node only: retrying elsewhere after a failure could run the operation
        # twice and answer the second run's view (a 412 for a write that applied).
        item = codec.encode_lists(msg)  # a request is lists, strings and bytes only: no map to sort
        # This operation waits for its answer whatever happens; the next ones avoid a node
        # that leaves it waiting too long while sending nothing else (it may be hung, and
        # pings take a while to tell).
        slow = asyncio.get_running_loop().call_later(FORWARD_PATIENCE, self._mark_slow, target)
        try:
            if len(item) > MAX_BATCH_BYTES:
                answer = await self.netapp.call(target, RPC_PATH, msg, timeout=self.timeout + 5.0)
            else:
                answer = unwrap_answer(
                    await resolve_held(
                        self._forwards.item_future(target, item),
                        lambda token: self.netapp.call(target, RPC_BATCH_HELD_PATH, token, timeout=self.timeout + 5.0),
                    )
                )
        except GarageKVError:
            raise
        except Exception as e:  # noqa: BLE001 - transport failure: the operation may or may not have run
            raise ServiceUnavailable(f"the storage node coordinating this operation failed: {e}") from None
        finally:
            slow.cancel()
        return answer

    def _mark_slow(self, node: bytes) -> None:
        now = time.monotonic()
        if now - self.netapp.last_heard(node) < FORWARD_PATIENCE:
            return  # it sends other answers meanwhile: a slow link or a long round, not a hung node
        if node not in self._slow:  # said once, not once per operation left waiting
            log.info(
                "storage node %s left a forwarded consensus operation unanswered for %.0fs: "
                "new operations go to another coordinator until it answers again (%.0fs at most)",
                node[:8].hex(), FORWARD_PATIENCE, SLOW_COORDINATOR_MEMORY,
            )  # fmt: skip
        self._slow[node] = now

    def _responsive(self, node: bytes) -> bool:
        """Not passed over: never marked slow, or it sent something since (a node that resumes
        answers pings and the consensus calls of this node's rounds at once), or the mark is old."""
        since = self._slow.get(node)
        if since is None:
            return True
        if self.netapp.last_heard(node) > since or time.monotonic() - since > SLOW_COORDINATOR_MEMORY:
            del self._slow[node]
            return True
        return False

    async def _send_batch(self, target: bytes, items: list[Any]) -> list[Any]:
        answers = await self.netapp.call(target, RPC_BATCH_PATH, items, timeout=self.timeout + 5.0)
        if not isinstance(answers, list) or len(answers) != len(items):
            raise ServiceUnavailable("malformed answer to forwarded conditional operations")
        return answers

    async def _handle_batch_held(self, from_node: bytes, token: Any) -> Any:
        return self._held_answers.take(token)

    async def _handle_batch(self, from_node: bytes, body: Any) -> Any:
        def handle(msg: Any) -> Any:
            return self._handle(from_node, msg)

        return await answer_each("conditional K2V batch", body, handle, MAX_FORWARD_BATCH, self._held_answers)

    def coordinator(self, key: bytes, nodes: Sequence[bytes]) -> bytes | None:
        """The storage node that runs a partition key's operations: the first one that is up in
        an order drawn from the key (rendezvous hashing), the same for every node that agrees on
        the layout and on who is up. Operations on a hot key then meet in one node's queue
        instead of taking each other's ballots (any node may run them safely; this choice only
        avoids the duels), and the keys of a partition spread over all its storage nodes
        instead of loading the first one with all of them."""
        ranked = sorted(nodes, key=lambda node: blake2sum(key + node))
        for node in ranked:
            if self.is_up(node) and self._responsive(node):
                return node
        for node in ranked:
            if self.is_up(node):
                return node  # every node that is up has been slow: the first of them after all
        return self.order(ranked)[0] if ranked else None

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

    async def _reserve_ts(self, queue: _KeyQueue, count: int, above: int) -> int:
        """Timestamps above every one this node issued (and at least ``above``), persisted before
        the round: decide is pure, so it cannot raise the clock itself. The round's dots are
        ``ts + 1`` to ``ts + count``, unsettled until the round's commit is applied here or the
        round ends without proposing them (``LocalClock``)."""

        def reserve(tx: WriteTxn) -> int:
            return self.store.clock.reserve_in(tx, count, above, queue.bucket_id, queue.pk)

        ts = await self.store.writer.submit(reserve)
        queue.reserved.append(ts + 1)
        return ts

    async def settle_round(self, bucket_id: bytes, pk: str) -> None:
        """A round that writes nothing on the partition key, run here after every round of this
        node on it that is still running: it settles what those rounds proposed and left in
        flight (model/k2v/reservations.py)."""
        await self._txn_here(bucket_id, pk, Txn())

    async def _txn_here(self, bucket_id: bytes, pk: str, txn: Txn) -> TxnResult:
        """Queue the operation on its key; the key's runner decides it in the next round."""
        key = partition_hash(bucket_id, pk)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _KeyQueue(bucket_id, pk)
        op = _Queued(txn, asyncio.get_running_loop().create_future())
        queue.pending.append(op)
        if queue.runner is None:
            queue.runner = asyncio.create_task(self._run_queue(key, queue))
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(op.result)
        except TimeoutError:
            op.abandoned = True  # a round that has not taken it yet leaves it out
            raise ServiceUnavailable(
                f"no consensus round decided the operation within {self.timeout}s: it may or may not have been applied"
            ) from None

    async def _run_queue(self, key: bytes, queue: _KeyQueue) -> None:
        try:
            while queue.pending:
                batch = queue.take()
                if not batch:
                    continue
                outcomes: Sequence[BatchOutcome | Exception]
                try:
                    outcomes = await self._round(key, queue, [op.txn for op in batch])
                except ReadTooLarge as e:
                    # Nothing was proposed. Together the operations read too much for one message:
                    # each runs again in a round of its own, and only one too big alone fails.
                    if len(batch) > 1:
                        queue.alone = max(queue.alone, len(batch))
                        outcomes = [Deferred()] * len(batch)
                    else:
                        outcomes = [e]
                except Exception as e:  # noqa: BLE001 - the round failed: every operation in it answers so
                    outcomes = [e] * len(batch)
                finally:
                    queue.end_round(self.store)
                for op, out in reversed(list(zip(batch, outcomes, strict=True))):
                    if isinstance(out, Deferred):
                        queue.pending.appendleft(op)  # first in the next round, in its order
                    elif isinstance(out, BaseException):
                        _settle(op.result, exc=out)
                    else:
                        _settle(op.result, value=out)
        finally:
            queue.runner = None
            if not queue.pending and self._queues.get(key) is queue:
                del self._queues[key]

    async def _round(self, key: bytes, queue: _KeyQueue, txns: list[Txn]) -> list[BatchOutcome]:
        """One consensus round deciding ``txns`` in order.

        Its writes get the dots it reserved, exactly: a dot is how a later attempt tells whether
        an earlier one applied (docs/consensus.md §10), and one past the reservation could be
        issued again by this node. So when an item already holds a time of this node above the
        reservation (written by this node since), the round reserves again above it and starts
        over, keeping what its earlier attempts proposed.
        """
        sort_keys = list(dict.fromkeys(sk for t in txns for sk in t.read_keys()))
        writers = sum(1 for t in txns if any(o.writes for o in (*t.success, *t.failure)))
        node = self.store.node
        max_bytes = self.store.max_item_bytes
        attempts: list[Attempt] = []  # what the earlier attempts proposed, each with its own dots
        above = 0
        for _ in range(MAX_RESERVATIONS):
            node_ts = await self._reserve_ts(queue, writers, above) if writers else 0

            def decide(merged: Mapping[bytes, bytes | None], node_ts: int = node_ts) -> Decision[list[BatchOutcome]]:
                raws = {sk: merged[sk.encode()] for sk in sort_keys}
                state = {sk: None if raw is None else K2VItem.decode(raw) for sk, raw in raws.items()}
                sizes = {sk: None if raw is None else len(raw) for sk, raw in raws.items()}
                outcomes, written, proposed = decide_batch(
                    txns, state, sizes, queue.bucket_id, queue.pk, node, node_ts, max_bytes, attempts
                )
                if proposed is None:
                    return Decision(None, outcomes)
                if any(not node_ts < dot <= node_ts + writers for dot in proposed.dots.values()):
                    raise _Reserve(max(_own_time(state.get(sk), node) for sk in proposed.dots))
                used = max((d for att in attempts for d in att.dots.values()), default=0)
                if min(proposed.dots.values()) <= used:
                    # A new proposal after one that was never applied: under new dots, so that a
                    # dot found later names exactly one attempt.
                    raise _Reserve(used)
                attempts.append(proposed)
                queue.proposed.add(node_ts + 1)
                return Decision(codec.encode_lists([i.encode() for i in written]), outcomes)

            try:
                return await self.proposer.run(key, [sk.encode() for sk in sort_keys], decide, timeout=self.timeout)
            except _Reserve as r:
                above = r.above
            except ReadTooLarge:
                if attempts:  # an earlier attempt's writes may still be chosen
                    raise ServiceUnavailable(
                        "a consensus round could not read its items again (too large for one message): "
                        "the operation may or may not have been applied"
                    ) from None
                raise
        raise ServiceUnavailable("this node kept writing the items of the round faster than it could reserve times")


class _Reserve(Exception):
    """The round must reserve its times again, at least ``above``."""

    def __init__(self, above: int) -> None:
        super().__init__(above)
        self.above = above


#: How many times a round reserves its times before giving up (each one is a write of this node
#: to one of its items in between: a handful at most).
MAX_RESERVATIONS = 8


def _own_time(item: K2VItem | None, node: int) -> int:
    entry = None if item is None else item.items.get(node)
    return 0 if entry is None else entry.max_time()


@dataclass
class _Queued:
    txn: Txn
    result: asyncio.Future[TxnResult]
    abandoned: bool = False


class _KeyQueue:
    """The operations waiting for a round on one consensus key, and the task running them."""

    #: At most this many operations, and sort keys, per round (a promise carries every item read).
    MAX_OPS = 32
    MAX_SORT_KEYS = 128

    def __init__(self, bucket_id: bytes, pk: str) -> None:
        self.bucket_id = bucket_id
        self.pk = pk
        self.pending: deque[_Queued] = deque()
        self.runner: asyncio.Task[None] | None = None
        # The current round's reservations (their first dots) and those an attempt proposed.
        self.reserved: list[int] = []
        self.proposed: set[int] = set()
        #: The next operations to run in rounds of their own (their reads were too big together).
        self.alone = 0

    def end_round(self, store: K2VStore) -> None:
        """Settle the round's reservations that no attempt proposed; the others are settled when
        a commit holding their dots is applied here, or by the sweep (model/k2v/reservations.py)."""
        if unproposed := [first for first in self.reserved if first not in self.proposed]:
            store.release_reservations(unproposed)
        self.reserved, self.proposed = [], set()

    def take(self) -> list[_Queued]:
        """The next round's operations, in arrival order: the first always, then as many as fit."""
        batch: list[_Queued] = []
        keys: set[str] = set()
        most = self.MAX_OPS
        if self.alone:
            self.alone -= 1
            most = 1
        while self.pending and len(batch) < most:
            op = self.pending[0]
            if op.abandoned or op.result.done():
                self.pending.popleft()
                continue
            more = set(op.txn.read_keys()) - keys
            if batch and len(keys) + len(more) > self.MAX_SORT_KEYS:
                break
            keys |= more
            batch.append(self.pending.popleft())
        return batch


def _settle(fut: asyncio.Future[TxnResult], *, value: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
        fut.exception()  # retrieved here: its caller may have given up waiting
    else:
        fut.set_result(value)


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
