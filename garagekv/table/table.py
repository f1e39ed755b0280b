"""A replicated table: quorum writes to every live write set, quorum reads with read repair.

Entries cross the wire as their canonical bytes; every replica merges what it receives with
the CRDT merge, so the order in which updates arrive never matters. The node calling these
methods need not store the entry itself: any node can serve any request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import replace
from typing import Any, Generic, Protocol, TypeVar

from garagekv.net.netapp import NetApp
from garagekv.rpc.batching import CallBatcher, forward_outcome
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.messages import malformed
from garagekv.rpc.quorum import QuorumError, describe_failure, try_call_many, wait_read_quorum, wait_write_quorum
from garagekv.table.data import ScanRange, TableData
from garagekv.table.messages import (
    LEFT_OUT,
    GetMany,
    GetManyAnswer,
    RangeAnswer,
    RangeRequest,
    TableRequest,
    Update,
    decode_entries,
    parse_table_request,
)
from garagekv.table.replication import FullReplication, ShardedReplication
from garagekv.table.schema import Entry

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Entry)

EMPTY_PARTITION = b"\x00" * 32
RANGE_PAGE = 1000
#: Bytes of entries a ``get_many`` answer carries before it leaves the rest out (see _get_future).
GET_MANY_BUDGET = 4 * 1024 * 1024
#: Bytes of entries a ``range`` answer carries before it stops early (see get_range).
RANGE_BUDGET = 4 * 1024 * 1024
#: Keys asked of each replica, at least, when a filter applies after the merge: a small limit
#: over many hidden entries (tombstones) would otherwise take a round trip per few keys.
FILTERED_RANGE_PAGE = 100


class PeerView(Protocol):
    """Liveness and latency of peers (the system layer), used to order requests."""

    def is_up(self, node_id: bytes) -> bool: ...

    def rtt_of(self, node_id: bytes) -> float | None: ...


class Table(Generic[E]):
    def __init__(
        self,
        data: TableData[E],
        replication: ShardedReplication | FullReplication,
        netapp: NetApp,
        registry: EndpointRegistry,
        peers: PeerView | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.data = data
        self.schema = data.schema
        self.replication = replication
        self.netapp = netapp
        self.peers = peers
        self.timeout = timeout
        self.endpoint = endpoint_path("table", "rpc", self.schema.name)
        registry.register(self.endpoint, self._handle)
        self._repairs: set[asyncio.Task[None]] = set()
        # Updates and single-key reads bound for the same peer in one loop turn share one RPC.
        self._updates: CallBatcher[bytes] = CallBatcher(lambda node, raws: self._send(node, Update(tuple(raws))))
        self._gets: CallBatcher[bytes] = CallBatcher(self._get_many)

    @property
    def node_id(self) -> bytes:
        return self.replication.node_id

    # ---- writes ------------------------------------------------------------------------------

    async def insert(self, entry: E) -> None:
        """Returns once every live write set has a write quorum of replicas holding ``entry``."""
        await self.insert_many([entry])

    async def insert_many(self, entries: list[E], *, stored_here: bool = False) -> None:
        """One ``update`` per node carrying everything it stores; quorum per entry's write sets.

        ``stored_here``: this node already holds exactly these entries (a K2V coordinator just
        wrote them), so its own copy counts as written without another local transaction.
        """
        if not entries:
            return
        with self.replication.layout.write_lock():
            await self._insert_many(entries, stored_here)

    async def _insert_many(self, entries: list[E], stored_here: bool) -> None:
        per_node: dict[bytes, list[bytes]] = defaultdict(list)
        all_sets: dict[tuple[bytes, ...], None] = {}
        for e in entries:
            sets = self.replication.write_sets(e.tree_key()[:32])
            raw = e.encode()
            for s in sets:
                all_sets[tuple(s)] = None
            for node in {n for s in sets for n in s}:
                per_node[node].append(raw)
        quorum = self.replication.write_quorum()
        if stored_here and quorum == 1 and per_node.keys() == {self.node_id}:
            return  # this node is the only replica (a single-node layout): already written
        calls: dict[bytes, asyncio.Future[Any]] = {}
        for node, raws in per_node.items():
            if node != self.node_id:
                calls[node] = self._updates.future(node, raws)
            elif stored_here:
                calls[node] = asyncio.get_running_loop().create_future()
                calls[node].set_result(None)
            else:
                calls[node] = asyncio.ensure_future(self._update(node, raws))
                calls[node].add_done_callback(_retrieve)
        await wait_write_quorum(calls, list(all_sets), quorum)
        own = calls.get(self.node_id)
        if own is not None and not own.done():
            # When this node is a replica, answer only once its own copy is written too: the
            # quorum may be met by others first, and a read served locally right after (full-copy
            # tables read locally only) must not miss the write just acknowledged here. A local
            # failure does not fail a write that already has its quorum.
            await asyncio.wait([own])

    async def _update(self, node: bytes, raws: list[bytes]) -> None:
        if node == self.node_id:
            await self._merge(tuple(raws))
        else:
            await self._updates.submit(node, raws)

    # ---- reads -------------------------------------------------------------------------------

    async def get(self, tree_key: bytes) -> E | None:
        """Merge the answers of a read quorum; repair replicas that answered something older."""
        nodes = self.replication.read_nodes(tree_key[:32])
        if nodes == [self.node_id]:
            return self.data.get(tree_key)
        # Ask every read node at once and keep the first quorum: a hung replica costs nothing.
        calls: dict[bytes, asyncio.Future[bytes | None]] = {}
        for node in nodes:
            if node == self.node_id:
                calls[node] = asyncio.get_running_loop().create_future()
                calls[node].set_result(self.data.get_raw(tree_key))
            else:
                calls[node] = self._get_future(node, tree_key)
        answers = await wait_read_quorum(calls, self.replication.read_quorum())
        merged = None
        for raw in answers:
            if raw is None:
                continue
            e = self.schema.decode(raw)
            if merged is None:
                merged = e
            else:
                merged.merge(e)
        if merged is not None:
            final = merged.encode()
            if any(raw != final for raw in answers):
                self._repair(nodes, [final])
        return merged

    def _get_future(self, node: bytes, tree_key: bytes) -> asyncio.Future[bytes | None]:
        """The raw entry at ``node`` through the batched ``get_many``.

        A replica leaves out (answers ``False`` for) entries past ``GET_MANY_BUDGET`` bytes of
        answer, so that big entries read together never exceed the frame limit; those are asked
        again on their own.
        """
        out: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def answered(raw: Any, alone: bool) -> None:
            if raw is False and not alone:
                again = asyncio.ensure_future(self._get_many(node, [tree_key]))
                forward_outcome(again, out, lambda answer: answered(answer[0], True))
            else:
                out.set_result(None if raw is None or raw is False else bytes(raw))

        forward_outcome(self._gets.item_future(node, tree_key), out, lambda raw: answered(raw, False))
        return out

    async def newer_elsewhere(self, tree_keys: list[bytes]) -> list[E]:
        """What a read quorum holds of ``tree_keys`` beyond this node's own copies: for each key
        that another node of the quorum stores differently, the merge of all the copies read
        (this node's included). A key stored alike costs a comparison of bytes, not a decode.

        Each group of keys with the same replicas is read, in one ``get_many``, from as many
        other replicas as a read quorum needs besides this node, the closest first (the next one
        when one fails). Raises ``QuorumError`` when too few of them answer.
        """
        groups: dict[tuple[bytes, ...], list[bytes]] = {}
        for key in tree_keys:
            groups.setdefault(tuple(self.replication.read_nodes(key[:32])), []).append(key)
        quorum = self.replication.read_quorum()
        out: list[E] = []
        for nodes, keys in groups.items():
            need = quorum - (1 if self.node_id in nodes else 0)
            if need <= 0:
                continue
            mine = self.data.get_raw_many(keys)
            answers: list[list[bytes | None]] = []
            errors: list[str] = []
            for node in self.order([n for n in nodes if n != self.node_id]):
                if len(answers) >= need:
                    break
                try:
                    answers.append(await self._get_all(node, keys))
                except Exception as e:  # noqa: BLE001 - that replica failed: ask the next one
                    errors.append(describe_failure(node, e))
            if len(answers) < need:
                raise QuorumError(quorum, len(answers), len(nodes), errors, operation="read")
            for i, mine_raw in enumerate(mine):
                raws = list({raw for a in answers if (raw := a[i]) is not None and raw != mine_raw})
                if not raws:
                    continue
                if mine_raw is not None:
                    raws.append(mine_raw)
                entry = self.schema.decode(raws[0])
                for raw in raws[1:]:
                    entry.merge(self.schema.decode(raw))
                out.append(entry)
        return out

    async def _get_all(self, node: bytes, keys: list[bytes]) -> list[bytes | None]:
        """``get_many`` of ``keys`` on ``node``; entries left out of its answer (for its size)
        are asked again alone."""
        raws = await self._get_many(node, keys)
        for i, raw in enumerate(raws):
            if raw is False:
                raws[i] = (await self._get_many(node, [keys[i]]))[0]
        return [None if raw is None or raw is False else bytes(raw) for raw in raws]

    async def get_shared(self, tree_key: bytes) -> E | None:
        """``get``, through the local decoded-entry cache when this node alone answers reads.

        For request-path lookups that never modify what they get (see ``TableData.get_shared``).
        """
        if self.replication.read_nodes(tree_key[:32]) == [self.node_id]:
            return self.data.get_shared(tree_key)
        return await self.get(tree_key)

    async def get_range(self, partition: bytes, start: bytes = b"", **opts: Any) -> list[tuple[bytes, E]]:
        """``range_all`` of ``ScanRange(partition, start, **opts)`` (prefix, end, reverse, ...)."""
        return await self.range_all(ScanRange(partition, start, **opts))

    async def get_range_page(
        self, partition: bytes, start: bytes = b"", **opts: Any
    ) -> tuple[list[tuple[bytes, E]], bytes | None]:
        """``range_page`` of ``ScanRange(partition, start, **opts)``: for callers that page with
        keyword arguments (the K2V range reader)."""
        return await self.range_page(ScanRange(partition, start, **opts))

    async def range_all(self, q: ScanRange) -> list[tuple[bytes, E]]:
        """Entries of one partition in key order, as (sort key, entry), merged over a read quorum.

        Up to ``q.limit`` entries that pass ``q.filt`` (all of them without a limit): the pages
        of ``range_page`` are followed until the limit is reached or nothing is left.
        """
        out: list[tuple[bytes, E]] = []
        while True:
            want = None if q.limit is None else q.limit - len(out)
            rows, resume = await self.range_page(replace(q, limit=want))
            out.extend(rows)
            if resume is None or (q.limit is not None and len(out) >= q.limit):
                return out
            q = q.after(resume)

    async def range_page(self, q: ScanRange) -> tuple[list[tuple[bytes, E]], bytes | None]:
        """One page of ``range_all`` and the key to continue after (None: nothing is left).

        Replicas answer unfiltered: a replica that filtered would leave out its tombstone for a
        key another, stale replica still holds alive, and the merge would bring the deleted
        entry back. The filter applies to merged entries only. Each replica returns up to
        ``limit`` keys; only the first ``limit`` merged keys are used, since keys past that
        point may not have been seen by a whole quorum. A replica also stops once its answer
        holds ``RANGE_BUDGET`` bytes (so big entries never make an answer too big for a frame):
        the page then ends at that key. The page ends where the replicas' keys end, not where
        the filtered entries do, so entries hidden by the merge never end the paging.
        """
        limit, filt, reverse = q.limit, q.filt, q.reverse
        nodes = self.replication.read_nodes(q.partition)
        if nodes == [self.node_id]:
            # One source: the scan filters as it goes and stops only at ``limit`` matches.
            rows = await self.data.scan_async(q)
            return rows, (rows[-1][0] if limit is not None and rows and len(rows) >= limit else None)
        ask = limit if limit is None or filt is None else max(limit, FILTERED_RANGE_PAGE)
        req = RangeRequest(replace(q, limit=ask, filt=None))
        answers = await try_call_many(
            lambda node: self._range(node, req),
            self.order(nodes),
            self.replication.read_quorum(),
            send_all_at_once=True,
            timeout=self.timeout,
        )
        # Replicas answer (sort key, stored bytes): where every answer holds the same bytes (the
        # usual case) one decode is enough; only keys that differ are merged and repaired.
        by_key: dict[bytes, list[bytes]] = defaultdict(list)
        cut: bytes | None = None
        for answer in answers:
            if answer.more:  # stopped at its byte budget
                last = answer.rows[-1][0]
                cut = last if cut is None else (max(cut, last) if reverse else min(cut, last))
            for sk, raw in answer.rows:
                by_key[sk].append(raw)
        keys = sorted(by_key, reverse=reverse)
        resume = None
        if cut is not None:  # a replica stopped at its byte budget: nothing is known past it
            keys = [k for k in keys if (k >= cut if reverse else k <= cut)]
            resume = cut
        if ask is not None and len(keys) >= ask:
            keys = keys[:ask]
            resume = keys[-1]
        out: list[tuple[bytes, E]] = []
        to_repair = []
        for sk in keys:
            raws = by_key[sk]
            entry = self.schema.decode(raws[0])
            if len(raws) < len(answers) or any(r != raws[0] for r in raws):
                for r in raws[1:]:
                    entry.merge(self.schema.decode(r))
                final = entry.encode()
                if len(raws) < len(answers) or any(r != final for r in raws):
                    to_repair.append(final)
            if filt is None or self.schema.matches_filter(entry, filt):
                out.append((sk, entry))
        if to_repair:
            self._repair(nodes, to_repair)
        if limit is not None and len(out) > limit:
            out = out[:limit]
            resume = out[-1][0]
        return out, resume

    # ---- plumbing ----------------------------------------------------------------------------

    def order(self, nodes: list[bytes]) -> list[bytes]:
        """Self first, then live peers by ping RTT, nodes believed down last."""
        if self.peers is None:
            return sorted(nodes, key=lambda n: n != self.node_id)
        p = self.peers
        return sorted(nodes, key=lambda n: (n != self.node_id, not p.is_up(n), p.rtt_of(n) or 10.0))

    def _repair(self, nodes: list[bytes], raws: list[bytes]) -> None:
        async def repair() -> None:
            try:
                await asyncio.gather(*(self._update(n, raws) for n in nodes), return_exceptions=True)
            except Exception:  # noqa: BLE001 - repair is best effort; anti-entropy catches the rest
                log.debug("read repair failed", exc_info=True)

        t = asyncio.create_task(repair())
        self._repairs.add(t)
        t.add_done_callback(self._repairs.discard)

    async def _send(self, node: bytes, req: TableRequest) -> Any:
        """``req`` to another node; its answer as it came off the wire."""
        return await self.netapp.call(node, self.endpoint, req.to_wire(), timeout=self.timeout)

    async def _get_many(self, node: bytes, keys: list[bytes]) -> list[bytes | None | bool]:
        req = GetMany(tuple(keys))
        if node == self.node_id:
            return list(self._serve_get_many(req).raws)
        return list(GetManyAnswer.from_wire(await self._send(node, req), len(keys)).raws)

    async def _range(self, node: bytes, req: RangeRequest) -> RangeAnswer:
        if node == self.node_id:
            return await self._serve_range(req)
        return RangeAnswer.from_wire(await self._send(node, req))

    async def _handle(self, from_node: bytes, msg: Any) -> Any:
        """The endpoint: the request is checked once here (``MalformedMessage`` if it is not one)."""
        req = parse_table_request(msg)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "table rpc %s",
                req.TAG,
                extra={"table": self.schema.name, "op": req.TAG, "from_node": from_node[:8].hex()},
            )
        if isinstance(req, Update):
            await self._merge(req.raws)
            return None
        if isinstance(req, GetMany):
            return self._serve_get_many(req).to_wire()
        return (await self._serve_range(req)).to_wire()

    async def _merge(self, raws: tuple[bytes, ...]) -> None:
        await self.data.merge_many(decode_entries(self.schema, raws, "table update"), list(raws))

    def _serve_get_many(self, req: GetMany) -> GetManyAnswer:
        out: list[bytes | None | bool] = []
        size = 0
        for raw in self.data.get_raw_many(list(req.keys)):
            size += 0 if raw is None else len(raw)
            out.append(LEFT_OUT if out and size > GET_MANY_BUDGET else raw)  # the first always fits
        return GetManyAnswer(tuple(out))

    async def _serve_range(self, req: RangeRequest) -> RangeAnswer:
        q = req.query
        if q.filt is not None:
            try:
                q = replace(q, filt=self.schema.filter_from_wire(q.filt))
            except (TypeError, ValueError, KeyError, IndexError) as e:
                raise malformed("table range", f"bad filter: {e}") from None
        rows = await self.data.scan_async(q, raw=True)
        out: list[tuple[bytes, bytes]] = []
        size = 0
        for sk, raw in rows:
            size += len(raw)
            if out and size > RANGE_BUDGET:  # the first always fits
                return RangeAnswer(tuple(out), more=True)
            out.append((sk, raw))
        return RangeAnswer(tuple(out))


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a local write's failure as seen: the quorum may not have needed it."""
    if not fut.cancelled():
        fut.exception()
