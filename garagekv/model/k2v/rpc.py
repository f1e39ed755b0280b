"""K2V across the cluster: what the API calls, whichever node it runs on.

Inserts go to one coordinator among the partition's storage nodes (self first, then the
fastest; the next one only if that call fails), which applies the DVVS update and replicates the
merged item with a quorum write. Reads are quorum reads of the item and counter tables. Polls go
to the storage nodes, which answer as soon as they see something newer than the client has; a
PollRanges call sends each storage node one poll with all its ranges (model/k2v/poll_ranges.py).
Every item handed back is as a reader sees it now: values past their expiry read as tombstones
(``K2VItem.at``), whether or not the expiry worker has written their tombstone yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from garagekv.model.index_counter import COUNTER_NAMES, CounterEntry
from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import K2VItem, merge_encoded, partition_hash
from garagekv.model.k2v.messages import (
    FlushCountersRequest,
    InsertedItem,
    InsertRequest,
    PollItemRequest,
    PollRangeReply,
    PollRangeRequest,
    PollRangesReply,
    PollRangesRequest,
    WatchedRange,
    parse_request,
)
from garagekv.model.k2v.outcomes import CONDITIONAL_WRITE_OUTCOMES, TRANSACTION_OUTCOMES, Outcomes
from garagekv.model.k2v.poll_ranges import (
    POLL_ANSWER_GRACE,
    POLL_RANGE_EXTRA_DELAY,
    REPLY_BUDGET,
    RangePoll,
    RangeResult,
    RangesTally,
    collect,
    merge_answers,
    poll_too_large,
)
from garagekv.model.k2v.range import RangePage, RangeQuery, read_range
from garagekv.model.k2v.schema import CounterFilter, ItemFilter
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.model.k2v.store import K2VStore, LocalRange
from garagekv.net.errors import NetError, NotConnected
from garagekv.net.identity import node_number
from garagekv.net.netapp import NetApp
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.messages import MalformedMessage
from garagekv.rpc.quorum import QuorumError, describe_failure, node_label, try_call_many
from garagekv.rpc.readiness import has_ring
from garagekv.table.table import Table
from garagekv.util.errors import EntityTooLarge, GarageKVError, ServiceUnavailable, WrittenWithoutQuorum
from garagekv.util.time import now_ms

log = logging.getLogger(__name__)

ENDPOINT = endpoint_path("model/k2v", "rpc")


class K2VService:
    def __init__(
        self,
        store: K2VStore,
        items: Table[K2VItem],
        counters: Table[CounterEntry],
        netapp: NetApp,
        registry: EndpointRegistry,
        timeout: float = 30.0,
    ) -> None:
        self.store = store
        self.items = items
        self.counters = counters
        self.netapp = netapp
        self.timeout = timeout
        self.node_id = items.node_id
        self._ring_of: Any = None  # the layout history last checked by _has_ring, and its answer
        self._ring = False
        #: Conditional writes and linearizable reads (set by the model once consensus is wired).
        self.conditional: Any = None
        #: Sends this node's queued index counter entries (set by the model, which owns the queue).
        self.flush_counters: Callable[[], Awaitable[None]] | None = None
        #: How the conditional writes this node answered ended (counted by the API handlers).
        self.conditional_outcomes = Outcomes(CONDITIONAL_WRITE_OUTCOMES)
        self.transaction_outcomes = Outcomes(TRANSACTION_OUTCOMES)
        registry.register(ENDPOINT, self._handle)

    @property
    def replication(self) -> Any:
        return self.items.replication

    async def _call(self, node: bytes, msg: list[Any], timeout: float | None = None) -> Any:
        if node == self.node_id:
            return await self._handle(node, msg)
        return await self.netapp.call(node, ENDPOINT, msg, timeout=timeout)

    # ---- writes ---------------------------------------------------------------------------------

    async def insert(self, bucket_id: bytes, ins: InsertedItem) -> None:
        await self.insert_many(bucket_id, [ins])

    async def insert_many(self, bucket_id: bytes, items: list[InsertedItem]) -> None:
        """One coordinator call per group of items sharing the same storage nodes.

        A coordinator refuses its whole group if one item would grow past ``max_item_bytes``
        (``EntityTooLarge``). With several groups, each coordinator first checks its group
        without writing, so a refused batch writes nothing anywhere (short of a concurrent write
        growing an item between the check and the insert).
        """
        groups: dict[tuple[bytes, ...], list[InsertedItem]] = defaultdict(list)
        for ins in items:
            nodes = self.replication.storage_nodes(partition_hash(bucket_id, ins.partition_key))
            groups[tuple(nodes)].append(ins)
        if len(groups) == 1:
            ((nodes, group),) = groups.items()
            await self._coordinate(bucket_id, list(nodes), group)
        else:
            await asyncio.gather(*(self._coordinate(bucket_id, list(n), g, "check") for n, g in groups.items()))
            await asyncio.gather(*(self._coordinate(bucket_id, list(n), g) for n, g in groups.items()))

    async def _coordinate(
        self, bucket_id: bytes, nodes: list[bytes], items: list[InsertedItem], kind: str = "insert"
    ) -> None:
        """Have one of ``nodes`` coordinate the inserts (``kind="check"``: only check their size):
        this node when it is one of them.

        Coordinating here skips the RPC layer and the quorum helper's tasks; only if that fails
        do the other storage nodes get the request, in the usual order, and only while nothing
        may have been stored: the next node is asked after a failure to store or to connect, never
        after a coordinator stored the inserts but could not replicate them to a quorum, nor after
        a request went out and got no answer (a timeout, a lost connection). Another coordinator
        would store them again under its own dot, and that second copy could later surface next
        to values written over the first one (docs/testing.md, "The checkers"). The first copy
        spreads by anti-entropy; the client gets a 503, the outcome unknown. A refusal
        (``EntityTooLarge``) is final too: another coordinator would refuse as well.
        """
        others = nodes
        failures: list[str] = []
        if self.node_id in nodes:
            # No timeout here: giving up waiting would not stop a local write that is queued.
            try:
                merged = await self._store_here(kind, bucket_id, items)
            except EntityTooLarge:
                raise
            except Exception as e:  # noqa: BLE001 - nothing stored: the next storage node may take it
                failures.append(describe_failure(self.node_id, e))
                if len(nodes) > 1:
                    log.warning("local K2V %s failed, trying other storage nodes: %s", kind, e)
                others = [n for n in nodes if n != self.node_id]
            else:
                try:
                    await self.items.insert_many(merged, stored_here=True)
                except ServiceUnavailable as e:
                    raise self._without_quorum(self.node_id, nodes, e.message) from None
                return
        if not others:
            raise self._no_coordinator(nodes, failures)
        order = self.items.order(others)
        msg = InsertRequest(kind, bucket_id, tuple(items)).to_wire()

        async def call(n: bytes) -> tuple[bytes, GarageKVError] | None:
            try:
                await self._call(n, msg, self.timeout)  # its own deadline: RpcTimeout, a NetError
            except NotConnected:
                raise  # never sent: the next storage node may take it
            except (EntityTooLarge, WrittenWithoutQuorum, NetError) as e:
                # A refusal, a stored copy, or a request that went out and whose fate is
                # unknown (a timeout, a lost connection): don't ask the next node.
                return n, e
            return None

        try:
            (final,) = await try_call_many(call, order, 1, operation="k2v_insert")
        except QuorumError as e:
            raise self._no_coordinator(nodes, failures + e.errors) from None
        if final is not None:
            node, err = final
            if isinstance(err, WrittenWithoutQuorum):
                raise self._without_quorum(node, nodes, err.message)
            if isinstance(err, NetError):
                summary = (
                    f"The write may be stored on {node_label(node)}, which took it but did not answer (it is not "
                    "handed to another storage node, which would store it a second time)"
                )
                raise self._insert_failed(nodes, [*failures, describe_failure(node, err)], summary)
            raise err

    def _without_quorum(self, coordinator: bytes, nodes: list[bytes], why: str) -> QuorumError:
        summary = (
            f"The write is stored on {node_label(coordinator)} but not on a quorum ({self._needs(nodes)}; "
            "it spreads once they are back)"
        )
        return self._insert_failed(nodes, [why], summary)

    def _no_coordinator(self, nodes: list[bytes], failures: list[str]) -> QuorumError:
        """Every storage node failed to coordinate: say what a write needs and why each failed
        (each coordinator's own error names the replicas it could not reach)."""
        return self._insert_failed(nodes, failures, f"No storage node could take the write ({self._needs(nodes)})")

    def _needs(self, nodes: list[bytes]) -> str:
        return f"it needs {self.replication.write_quorum()} of the {len(nodes)} replicas of its partition"

    def _insert_failed(self, nodes: list[bytes], errors: list[str], summary: str) -> QuorumError:
        """A failed K2V write as the node that received it reports it (``k2v_insert`` in metrics)."""
        wq = self.replication.write_quorum()
        return QuorumError(wq, 0, len(nodes), errors, operation="k2v_insert", summary=summary)

    async def _store_here(self, kind: str, bucket_id: bytes, items: list[InsertedItem]) -> list[K2VItem]:
        """Apply the inserts to this node's copy (none for a check); the items as stored."""
        if kind == "check":
            await asyncio.to_thread(self.store.check_sizes, bucket_id, items)
            return []
        return await self.store.insert_many(bucket_id, items)

    async def _coordinate_here(self, kind: str, bucket_id: bytes, items: list[InsertedItem]) -> None:
        """Another node's request: store, then replicate what was stored."""
        merged = await self._store_here(kind, bucket_id, items)
        try:
            await self.items.insert_many(merged, stored_here=True)
        except Exception as e:
            raise WrittenWithoutQuorum(e.message if isinstance(e, GarageKVError) else repr(e)) from e

    # ---- reads ----------------------------------------------------------------------------------

    async def read_item(self, bucket_id: bytes, pk: str, sk: str) -> K2VItem | None:
        item = await self.items.get(partition_hash(bucket_id, pk) + sk.encode())
        return None if item is None else item.at(now_ms())

    async def read_range(self, bucket_id: bytes, pk: str, q: RangeQuery, filt: ItemFilter) -> RangePage[K2VItem]:
        ph = partition_hash(bucket_id, pk)
        now = now_ms()
        filt = replace(filt, now=now)  # the filter sees the values as they are returned
        page = await read_range(lambda start, **kw: self.items.get_range_page(ph, start, **kw), q, filt)
        page.entries = [(sk, item.at(now)) for sk, item in page.entries]
        return page

    def counter_filter(self) -> CounterFilter:
        """Counters count from the storage nodes of every live layout version.

        While partitions move, the new version's nodes hold partial counts until they have
        synced; the old version's nodes still count everything, and the max over both never
        under-counts. Nodes of retired versions (departed nodes) are ignored.
        """
        h = self.replication.layout.history
        nodes = h.all_storage_nodes() or [self.node_id]
        return CounterFilter(tuple(sorted(node_number(n) for n in nodes)))

    async def read_index(self, bucket_id: bytes, q: RangeQuery) -> tuple[RangePage[CounterEntry], CounterFilter]:
        filt = self.counter_filter()
        page = await read_range(lambda start, **kw: self.counters.get_range_page(bucket_id, start, **kw), q, filt)
        return page, filt

    @staticmethod
    def counter_values(entry: CounterEntry, filt: CounterFilter) -> dict[str, int]:
        vals = entry.filtered_values(filt.nodes)
        return {n: vals.get(n, 0) for n in COUNTER_NAMES}

    async def bucket_is_empty(self, bucket_id: bytes) -> bool:
        """Through ReadIndex's own path (same counters, same filter, merged then filtered), once
        every storage node that answers has sent its queued counter entries: an item acknowledged
        just before is then counted by at least one of the replicas that stored it."""
        nodes = sorted({n for sp in self.items.replication.sync_partitions() for n in sp.storage_nodes})
        msg = FlushCountersRequest().to_wire()
        flushed = await asyncio.gather(*(self._call(n, msg, self.timeout) for n in nodes), return_exceptions=True)
        for node, outcome in zip(nodes, flushed, strict=True):
            if isinstance(outcome, BaseException):  # down: the other replicas of its items count them
                log.info("bucket emptiness: %s did not flush its counters: %s", node_label(node), outcome)
        page, _ = await self.read_index(bucket_id, RangeQuery(limit=1))
        return not page.entries

    # ---- polls ----------------------------------------------------------------------------------

    async def poll_item(self, bucket_id: bytes, pk: str, sk: str, ct: CausalContext, timeout: float) -> K2VItem | None:
        """The item once a read quorum of its storage nodes have answered; None on timeout."""
        nodes = self.replication.storage_nodes(partition_hash(bucket_id, pk))
        msg = PollItemRequest(bucket_id, pk, sk, ct, timeout).to_wire()
        try:
            async with asyncio.timeout(timeout + POLL_ANSWER_GRACE):
                answers = await try_call_many(
                    lambda n: self._call(n, msg, None),
                    self.items.order(nodes),
                    self.replication.read_quorum(),
                    send_all_at_once=True,
                    operation="k2v_poll_item",
                )
        except TimeoutError:
            return None
        item = merge_encoded(answers)
        return None if item is None else item.at(now_ms())

    async def poll_range(
        self, bucket_id: bytes, pk: str, q: RangeQuery, marker: RangeSeenMarker | None, timeout: float
    ) -> tuple[list[K2VItem], RangeSeenMarker] | None:
        """New items of the range over all storage nodes, and the marker that covers them.

        Waits for every storage node, but no more than a short grace once a read quorum has
        answered. None when a marker was given and nothing new arrived before the timeout.
        """
        nodes = self.replication.storage_nodes(partition_hash(bucket_id, pk))
        quorum = self.replication.read_quorum()
        if marker is not None:
            marker.restrict(q.prefix, q.start, q.end)
        seen = None if marker is None else marker.encode()
        msg = PollRangeRequest(bucket_id, pk, q.prefix, q.start, q.end, seen, timeout).to_wire()
        tasks = [asyncio.ensure_future(self._call(n, msg, None)) for n in nodes]
        deadline = time.monotonic() + timeout + POLL_ANSWER_GRACE
        replies: list[PollRangeReply] = []
        errors: list[str] = []
        pending = set(tasks)
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if (exc := t.exception()) is not None:
                        if isinstance(exc, EntityTooLarge):
                            raise poll_too_large(exc)
                        errors.append(str(exc))
                    else:
                        try:
                            replies.append(PollRangeReply.from_wire(t.result()))
                        except MalformedMessage as e:  # that storage node failed
                            errors.append(str(e))
                if len(replies) >= quorum:
                    deadline = min(deadline, time.monotonic() + POLL_RANGE_EXTRA_DELAY)
        finally:
            for t in pending:
                t.cancel()
        if len(errors) > len(nodes) - quorum:
            raise QuorumError(quorum, len(replies), len(nodes), errors, operation="k2v_poll_range")
        if len(replies) < quorum and marker is None:
            raise ServiceUnavailable(f"PollRange: only {len(replies)} of {len(nodes)} storage nodes answered")
        return merge_answers(marker, ((r.node, r.raws, r.issued) for r in replies))

    async def poll_ranges(self, bucket_id: bytes, ranges: list[RangePoll], timeout: float) -> list[RangeResult] | None:
        """Each range's new items and marker (None: unchanged), in order; None if none changed.

        One ``poll_ranges`` call per storage node, carrying every range of the call that the node
        holds (see model/k2v/poll_ranges.py). This node's own share runs in-process, with the
        markers as decoded; the others get each marker encoded once, whatever their number.
        """
        quorum = self.replication.read_quorum()
        hashes = [partition_hash(bucket_id, r.partition_key) for r in ranges]
        nodes_of = [self.replication.storage_nodes(h) for h in hashes]
        asks: dict[bytes, list[int]] = {}
        for i, (r, nodes) in enumerate(zip(ranges, nodes_of, strict=True)):
            if r.marker is not None:
                before = len(r.marker.items)
                r.marker.restrict(r.query.prefix, r.query.start, r.query.end)
                if len(r.marker.items) != before:
                    r.text = None
            for n in nodes:
                asks.setdefault(n, []).append(i)
        wire: list[WatchedRange] = []

        async def ask(node: bytes, indices: list[int]) -> PollRangesReply:
            if node == self.node_id:
                local = [LocalRange(hashes[i], ranges[i].query, ranges[i].marker) for i in indices]
                return await self._poll_ranges_here(local, timeout)
            if not wire:
                for r in ranges:
                    # The client's own text when it still says the same: encoding costs more.
                    q, marker = r.query, None if r.marker is None else r.text or r.marker.encode()
                    wire.append(WatchedRange(r.partition_key, q.prefix, q.start, q.end, marker))
            msg = PollRangesRequest(bucket_id, tuple(wire[i] for i in indices), timeout).to_wire()
            return PollRangesReply.from_wire(await self.netapp.call(node, ENDPOINT, msg, timeout=None), len(indices))

        return await collect(asks, ask, RangesTally(ranges, nodes_of, quorum), timeout)

    # ---- storage node side ------------------------------------------------------------------------

    def _has_ring(self) -> bool:
        h = self.replication.layout.history
        if h is not self._ring_of:  # a published history never changes: check each one once
            self._ring_of, self._ring = h, has_ring(h)
        return self._ring

    async def _handle(self, from_node: bytes, msg: Any) -> Any:
        req = parse_request(msg)
        if log.isEnabledFor(logging.DEBUG):
            kind = msg[0]
            log.debug("k2v rpc %s", kind, extra={"op": kind, "from_node": from_node[:8].hex()})
        if isinstance(req, InsertRequest):
            if not self._has_ring():
                # Another node sees this one as a storage node, but it has no layout (lost
                # file, not gossiped yet): coordinating here would replicate to itself alone
                # and report a quorum. Failing sends the caller to the next storage node.
                raise ServiceUnavailable("this node has no cluster layout yet: it cannot coordinate inserts")
            await self._coordinate_here(req.kind, req.bucket_id, list(req.items))
            return None
        if isinstance(req, FlushCountersRequest):
            if self.flush_counters is not None:
                await self.flush_counters()
            return None
        if isinstance(req, PollItemRequest):
            item = await self.store.poll_item(
                req.bucket_id, req.partition_key, req.sort_key, req.causal_context, req.timeout
            )
            return None if item is None else item.encode()
        if isinstance(req, PollRangesRequest):
            local = []
            for r in req.ranges:
                q = RangeQuery(r.prefix, r.start, r.end)
                q.check()
                marker = None if r.seen_marker is None else RangeSeenMarker.decode_shared(r.seen_marker)
                local.append(LocalRange(partition_hash(req.bucket_id, r.partition_key), q, marker))
            return (await self._poll_ranges_here(local, req.timeout)).to_wire()
        marker = None if req.seen_marker is None else RangeSeenMarker.decode_shared(req.seen_marker)
        issued = self.store.stable_clock()  # before the scan: the marker's bound for this node
        q = RangeQuery(req.prefix, req.start, req.end)
        items = await self.store.poll_range(req.bucket_id, req.partition_key, q, marker, req.timeout)
        return PollRangeReply(self.store.node, tuple(i.encode() for i in items or []), issued).to_wire()

    async def _poll_ranges_here(self, ranges: list[LocalRange], timeout: float) -> PollRangesReply:
        issued = self.store.stable_clock()  # before the first scan: the marker's bound for this node
        news = await self.store.poll_ranges(ranges, timeout)
        listed: list[tuple[int, tuple[bytes, ...]]] = []
        size = 0
        for i, items in sorted(news.items()):
            raws = tuple(item.encode() for item in items)
            n = sum(len(r) for r in raws)
            if listed and ranges[i].marker is not None and size + n > REPLY_BUDGET:
                continue  # still new to its marker: the client's next call gets it
            listed.append((i, raws))
            size += n
        return PollRangesReply(self.store.node, issued, tuple(listed))
