"""Anti-entropy: replicas of a partition compare Merkle tries and push each other what differs.

One ``TableSyncer`` per table runs as a background worker. A **full sync** goes through every
sync partition of the table (256 for sharded tables, 1 for full-copy ones), in random order,
one partition per ``work()`` step:

- if this node stores the partition, for every other storage node (the union over live layout
  versions) it runs ``do_sync_with``: compare root hashes, then walk the trie breadth-first,
  asking the peer for its node at the same position and descending only where the hashes
  differ, and push the differing entries in batches of at most ``SYNC_BATCH``. Sync is
  **push-only**: each side sends what it has; the other direction is the peer's own sync. The
  partition fails if, in some write set, more peers failed than the write quorum tolerates;
- if this node does not store the partition (any more), it **offloads** it: sends its entries to
  all of the partition's storage nodes (all must accept), then deletes them locally, each only if
  it did not change meanwhile.

A partition that fails goes to the back of the queue and the worker backs off; it never blocks
the others. An entry too big for one RPC message (``unsyncable_entry_bytes``: only items stored
before ``max_item_bytes`` existed can be) is never sent: it is skipped, logged and reported per
partition (``unsyncable`` in ``progress()``, the worker list and the metrics), and the rest of
its partition syncs, so one such entry can never hold a full sync, and a layout change, forever.
Offloading keeps a skipped entry here.

A full sync starts a few seconds after start-up (``sync_startup_delay_sec``), every
``sync_interval_sec`` (10 minutes) while idle, whenever the layout's sync digest (current
version, ack_map_min, oldest live version) changes, on demand (``add_full_sync``: ``garagekv
repair tables``), and, unlike Garage, shortly after a layout member (re)connects, so a node that
was down catches up in seconds instead of waiting for the next periodic sync. A new request
replaces a full sync in progress (the partitions' storage sets may have changed).

A full sync is tagged with ``ack_map_min`` when it starts. When it completes, the table reports
the tag to the ``SyncCoordinator``; once every table of the node has completed a full sync for
version V, the node's sync tracker is raised to V (``LayoutManager.mark_synced``), which lets
reads move to the new layout and old layout versions retire.

The RPC endpoint ``garagekv/table/sync:<table>`` answers ``["root", partition, hash]`` (does our
root differ?), ``["node", partition, prefix]`` (our node there), ``["items", [bytes...]]``
(CRDT-merge these entries) and ``["digest"]`` (a summary of the local data, for operators and
tests); each has its class in garagekv/table/messages.py, checked once on receipt.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from garagekv.net.channel import MAX_RECORD_SIZE
from garagekv.net.conn import Connection
from garagekv.net.identity import short_id
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.layout.history import LayoutHistory
from garagekv.rpc.layout.manager import LayoutManager
from garagekv.rpc.quorum import try_call_many
from garagekv.table.messages import (
    ElementsRequest,
    ItemsPush,
    SumsRequest,
    SyncRequest,
    decode_entries,
    parse_sync_request,
)
from garagekv.table.range_sums import LEVELS, pack_sum
from garagekv.table.replication import SyncPartition
from garagekv.table.table import Table
from garagekv.util.background import Notify, WorkerState
from garagekv.util.codec import blake2sum
from garagekv.util.errors import ServiceUnavailable

log = logging.getLogger(__name__)

#: Entries per ``items`` message, when syncing and when offloading.
SYNC_BATCH = 256
#: ... and at most this many bytes of entries (well under the RPC frame limit).
SYNC_BATCH_BYTES = 4 * 1024 * 1024
#: Default seconds between periodic full syncs (Garage's ANTI_ENTROPY_INTERVAL).
DEFAULT_INTERVAL = 600.0
#: Default seconds between start-up and the first full sync.
DEFAULT_STARTUP_DELAY = 10.0
#: A (re)connected layout member triggers a full sync this many seconds later (coalescing bursts).
RECONNECT_DELAY = 1.0
#: Room left in a frame for the envelope of an ``items`` message carrying one entry.
ITEMS_MESSAGE_OVERHEAD = 4096
#: Unsyncable entries remembered per partition for the report (the count is always exact).
UNSYNCABLE_KEYS_SHOWN = 8


def unsyncable_entry_bytes(max_record: int = MAX_RECORD_SIZE) -> int:
    """Entries above this many bytes cannot be sent in an ``items`` message of their own."""
    return max_record - ITEMS_MESSAGE_OVERHEAD


class SyncError(ServiceUnavailable):
    """A partition could not be synced with enough of its replicas (retried later)."""


def sync_endpoint(table_name: str) -> str:
    return endpoint_path("table", "sync", table_name)


def chunks(raws: list[bytes], max_items: int = SYNC_BATCH, max_bytes: int = SYNC_BATCH_BYTES) -> list[list[bytes]]:
    """Split entries into ``items`` messages of at most ``max_items`` entries and ``max_bytes``
    (a bigger entry travels alone)."""
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    size = 0
    for raw in raws:
        if cur and (len(cur) >= max_items or size + len(raw) > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(raw)
        size += len(raw)
    if cur:
        out.append(cur)
    return out


def layout_sync_digest(h: LayoutHistory) -> tuple[int, int, int]:
    """What makes a full sync necessary when it changes (Garage's ``SyncLayoutDigest``)."""
    return (h.current().version, h.ack_map_min(), h.min_stored())


class SyncCoordinator:
    """Raises this node's sync tracker once every table completed a full sync for a version."""

    def __init__(self, layout: LayoutManager) -> None:
        self.layout = layout
        self.synced: dict[str, int] = {}

    def register(self, table_name: str) -> None:
        self.synced.setdefault(table_name, 0)

    def table_synced(self, table_name: str, version: int) -> None:
        self.synced[table_name] = max(self.synced.get(table_name, 0), version)
        until = self.synced_version()
        mark = getattr(self.layout, "mark_synced", None)
        if mark is not None and mark(until):
            log.info("all tables synced: sync tracker raised to layout version %d", until)

    def synced_version(self) -> int:
        """The highest version every table completed a full sync for (0 if one never did)."""
        return min(self.synced.values(), default=0)


class TableSyncer:
    """Anti-entropy of one table: the sync RPC endpoint, and a background worker."""

    def __init__(
        self,
        table: Table[Any],
        layout: LayoutManager,
        registry: EndpointRegistry,
        coordinator: SyncCoordinator | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        startup_delay: float = DEFAULT_STARTUP_DELAY,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.data = table.data
        self.replication = table.replication
        self.layout = layout
        self.coordinator = coordinator
        self.interval = interval
        self.timeout = table.timeout if timeout is None else timeout
        self.clock = clock
        self.table_name = table.schema.name
        self.endpoint = sync_endpoint(self.table_name)
        registry.register(self.endpoint, self._handle)
        if coordinator is not None:
            coordinator.register(self.table_name)

        self._wake = Notify()
        # When to (re)start a full sync; None: nothing requested (periodic syncs aside).
        self._requested_at: float | None = self.clock() + startup_delay
        self._next_periodic = self.clock() + startup_delay + interval
        self._layout_digest = layout_sync_digest(layout.history)
        self._todo: deque[SyncPartition] | None = None
        self._version = 0
        self._total = 0
        self._done = 0
        self.full_syncs = 0  # completed
        self.items_sent = 0
        self.items_offloaded = 0
        self.last_full_sync_at: float | None = None  # wall clock of the last completed full sync
        self.max_entry_bytes = unsyncable_entry_bytes(getattr(table.netapp, "max_record", MAX_RECORD_SIZE))
        # partition -> {tree key: size} of entries found too big to send at its last sync.
        self.unsyncable: dict[int, dict[bytes, int]] = {}
        # (Bare test doubles of the layout or the network may lack these hooks.)
        listeners = getattr(layout, "listeners", None)
        if listeners is not None:
            listeners.append(self._on_layout_change)
        on_connect = getattr(table.netapp, "on_connect", None)
        if on_connect is not None:
            on_connect.append(self._on_connect)

    @property
    def node_id(self) -> bytes:
        return self.replication.node_id

    # ---- triggers ----------------------------------------------------------------------------

    def add_full_sync(self) -> None:
        """Start a full sync now (replacing one in progress): ``garagekv repair tables``."""
        self._request(0.0)

    def _request(self, delay: float) -> None:
        at = self.clock() + delay
        if self._requested_at is None or at < self._requested_at:
            self._requested_at = at
        self._wake.notify()

    def _on_layout_change(self, history: LayoutHistory) -> None:
        digest = layout_sync_digest(history)
        if digest != self._layout_digest:
            log.info("%s: layout changed (version, ack_map_min, min_stored = %s): full sync", self.table_name, digest)
            self._layout_digest = digest
            self.add_full_sync()

    def _on_connect(self, conn: Connection) -> None:
        if conn.peer_id in self.layout.history.all_nodes() and self._requested_at is None:
            self._request(RECONNECT_DELAY)

    # ---- Worker ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self.table_name} sync"

    def _start_full_sync(self) -> None:
        partitions = self.replication.sync_partitions()
        random.shuffle(partitions)
        self._version = self.layout.history.ack_map_min()
        self._todo = deque(partitions)
        self._total, self._done = len(partitions), 0
        self._requested_at = None
        self._next_periodic = self.clock() + self.interval
        log.debug(
            "%s: full sync of %d partitions for layout version %d", self.table_name, len(partitions), self._version
        )

    async def work(self) -> WorkerState:
        now = self.clock()
        if self._requested_at is not None and now >= self._requested_at:
            self._start_full_sync()
        todo = self._todo
        if todo is None:
            return WorkerState.IDLE
        if todo:
            sp = todo.popleft()
            try:
                await self.sync_partition(sp)
            except Exception:
                todo.append(sp)  # retried after the others (and after the backoff)
                raise
            self._done += 1
        if not todo and todo is self._todo:
            self._finish_full_sync()
        return WorkerState.BUSY

    def _finish_full_sync(self) -> None:
        self._todo = None
        self.full_syncs += 1
        self.last_full_sync_at = time.time()
        log.info("%s: completed full sync for layout version %d", self.table_name, self._version)
        report = self.unsyncable_report()
        if report is not None:
            log.warning("%s: full sync completed without some entries: %s", self.table_name, report)
        if self.coordinator is not None:
            self.coordinator.table_synced(self.table_name, self._version)

    async def wait_for_work(self) -> None:
        now = self.clock()
        if self._requested_at is None and now >= self._next_periodic:
            self._requested_at = now
            return
        deadline = self._next_periodic if self._requested_at is None else self._requested_at
        await self._wake.wait(max(0.0, deadline - now))

    def progress(self) -> dict[str, Any]:
        todo = self._todo
        running = todo is not None
        return {
            "done": self._done if running else 0,
            "total": self._total if running else 0,
            "queue": len(todo) if todo is not None else 0,
            "version": self._version,
            "full_syncs": self.full_syncs,
            "last_full_sync_secs_ago": None
            if self.last_full_sync_at is None
            else round(time.time() - self.last_full_sync_at),
            "unsyncable": self.unsyncable_report(),
        }

    def unsyncable_report(self) -> str | None:
        """``partitions 3, 17: 2 entries over N bytes skipped``, or None when there are none."""
        if not self.unsyncable:
            return None
        parts = sorted(self.unsyncable)
        shown = ", ".join(str(p) for p in parts[:16]) + (", ..." if len(parts) > 16 else "")
        n = self.unsyncable_entries()
        return (
            f"partition{'s' if len(parts) > 1 else ''} {shown}: {n} entr{'ies' if n > 1 else 'y'} over "
            f"{self.max_entry_bytes} bytes (too big for an RPC message) not synced"
        )

    def unsyncable_entries(self) -> int:
        return sum(len(keys) for keys in self.unsyncable.values())

    def _too_big(self, partition: int, tree_key: bytes, size: int) -> bool:
        """Whether the entry cannot be sent; if so, it is recorded and logged (once per sync)."""
        if size <= self.max_entry_bytes:
            return False
        seen = self.unsyncable.setdefault(partition, {})
        if tree_key not in seen:
            seen[tree_key] = size
            log.warning(
                "%s: partition %d: entry %s is %d bytes, over the %d bytes one RPC message can carry: "
                "it is not synced (see docs/operations.md, 'A partition that cannot sync')",
                self.table_name,
                partition,
                tree_key.hex()[:96],
                size,
                self.max_entry_bytes,
            )
        return True

    # ---- one partition -----------------------------------------------------------------------

    async def sync_partition(self, sp: SyncPartition) -> None:
        self.unsyncable.pop(sp.partition, None)  # found again below if still there
        if self.node_id in sp.storage_nodes:
            await self._sync_with_replicas(sp)
        else:
            await self.offload_partition(sp)

    async def _sync_with_replicas(self, sp: SyncPartition) -> None:
        peers = [n for n in sp.storage_nodes if n != self.node_id]
        if not peers:
            return
        results = await asyncio.gather(*(self.do_sync_with(sp.partition, n) for n in peers), return_exceptions=True)
        errors = {n: r for n, r in zip(peers, results, strict=True) if isinstance(r, BaseException)}
        for n, e in errors.items():
            log.debug("%s: sync of partition %d with %s failed: %s", self.table_name, sp.partition, short_id(n), e)
        if not errors:
            return
        quorum = self.replication.write_quorum()
        for nodes in self.replication.write_sets(sp.first_hash):
            failed = sum(1 for n in nodes if n in errors)
            if failed > len(nodes) - quorum:
                detail = "; ".join(f"{short_id(n)}: {e}" for n, e in errors.items())
                raise SyncError(
                    f"sync of {self.table_name} partition {sp.partition} failed with too many replicas: {detail}"
                )

    async def do_sync_with(self, partition: int, peer: bytes) -> None:
        """Push to ``peer`` the entries of ``partition`` it lacks or holds otherwise (push-only).

        Compares range sums (table/range_sums.py) from the top level down, only inside the
        ranges whose sums differ; where the peer's sum is zero it holds nothing there and the
        whole range is pushed; at the lowest level the entries' elements are compared.
        """
        if self.table.peers is not None and not self.table.peers.is_up(peer):
            raise SyncError(f"node {short_id(peer)} is down")
        sums = self.data.sums
        if sums.rebuilding:
            raise SyncError(f"the range sums of {self.table_name} are being rebuilt")
        with self.data.db.read() as txn:
            top = sums.chunks(txn, partition, LEVELS, None, None)
        if not any(s for _, s in top):
            return  # nothing to push; the peer pushes what it has
        # (level, bounds, our sums over them, end of the last range)
        todo: deque[tuple[int, list[bytes], list[int], bytes | None]] = deque(
            [(LEVELS, [b for b, _ in top], [s for _, s in top], None)]
        )
        while todo:
            level, bounds, ours, end = todo.popleft()
            req = SumsRequest(partition, level, tuple(bounds), end)
            theirs = req.answer(await self._call(peer, req))
            edges = [*bounds, end]
            for i, lo in enumerate(bounds):
                if theirs[i] == ours[i]:
                    continue
                hi = edges[i + 1]
                if theirs[i] == 0 or level == 1:
                    await self._push_range(partition, peer, lo or None, hi, compare=theirs[i] != 0)
                    continue
                with self.data.db.read() as txn:
                    below = [b for b, _ in sums.chunks(txn, partition, level - 1, lo or None, hi)]
                    sub = [lo] + [b for b in below if b > lo]
                    todo.append((level - 1, sub, sums.sums_of(txn, partition, level - 1, sub, hi), hi))

    async def _push_range(
        self, partition: int, peer: bytes, start: bytes | None, end: bytes | None, compare: bool
    ) -> None:
        """Push our entries of ``[start, end)`` (start None: the partition's start); with
        ``compare``, only those whose element the peer does not have."""
        while True:
            with self.data.db.read() as txn:
                page = self.data.sums.keys(txn, partition, start, end, SYNC_BATCH)
            if not page:
                return
            keys = [k for k, _ in page]
            if compare:
                ereq = ElementsRequest(tuple(keys))
                theirs = ereq.answer(await self._call(peer, ereq))
                keys = [k for (k, e), t in zip(page, theirs, strict=True) if t != e]
            if keys:
                await self._send_items(partition, peer, keys)
            if len(page) < SYNC_BATCH:
                return
            start = page[-1][0] + b"\x00"

    async def _send_items(self, partition: int, peer: bytes, keys: list[bytes]) -> None:
        raws = [
            raw
            for k, raw in zip(keys, self.data.get_raw_many(keys), strict=True)
            if raw is not None and not self._too_big(partition, k, len(raw))
        ]
        for chunk in chunks(raws):
            await self._call(peer, ItemsPush(tuple(chunk)))
            self.items_sent += len(chunk)
        if raws:
            log.debug("%s: sent %d entries to %s", self.table_name, len(raws), short_id(peer))

    async def offload_partition(self, sp: SyncPartition) -> None:
        """Hand this node's entries of a partition it does not store to its storage nodes, then drop them.

        Entries too big to send stay here (reported); the reads skip past them.
        """
        start = sp.first_hash
        while True:
            batch = await asyncio.to_thread(self._read_range, start, sp.last_hash, SYNC_BATCH)
            if not batch:
                return
            kept = [(k, raw) for k, raw in batch if self._too_big(sp.partition, k, len(raw))]
            if kept and len(kept) == len(batch):
                start = batch[-1][0] + b"\x00"  # nothing else here: read on past them
                continue
            if kept:
                big = {k for k, _ in kept}
                batch = [(k, raw) for k, raw in batch if k not in big]
            nodes = self.replication.storage_nodes(sp.first_hash)
            if self.node_id in nodes:
                log.info(
                    "%s: interrupting offload of partition %d: this node stores it now", self.table_name, sp.partition
                )
                return
            if not nodes or len(nodes) < self.replication.write_quorum():
                raise SyncError(
                    f"cannot offload {self.table_name} partition {sp.partition}: only {len(nodes)} storage nodes"
                )
            for chunk in chunks([raw for _, raw in batch]):
                req = ItemsPush(tuple(chunk))

                async def push(node: bytes, req: SyncRequest = req) -> Any:
                    return await self._call(node, req)

                await try_call_many(
                    push,
                    nodes,
                    len(nodes),
                    send_all_at_once=True,
                    timeout=self.timeout,
                )

            def drop(tx: Any, batch: list[tuple[bytes, bytes]] = batch) -> int:
                return sum(self.data.delete_if_equal_hash_in(tx, k, blake2sum(raw)) for k, raw in batch)

            removed = await self.data.writer.submit(drop)
            self.items_offloaded += removed
            log.info(
                "%s: offloaded %d entries of partition %d to %s (%d deleted here)",
                self.table_name,
                len(batch),
                sp.partition,
                ", ".join(short_id(n) for n in nodes),
                removed,
            )

    def _read_range(self, first: bytes, last: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self.data.db.read() as txn:
            cur = txn.cursor(db=self.data.store)
            if not cur.set_range(first):
                return out
            for k, v in cur:
                if last is not None and k >= last:
                    break
                out.append((k, self.data.canonical(k, v)))
                if len(out) >= limit:
                    break
        return out

    # ---- RPC ---------------------------------------------------------------------------------

    async def _call(self, node: bytes, req: SyncRequest) -> Any:
        """The answer of ``req`` at ``node``, in its wire form (served here when it is this node)."""
        if node == self.node_id:
            return await self._serve(req)
        return await self.table.netapp.call(node, self.endpoint, req.to_wire(), timeout=self.timeout)

    async def _handle(self, from_node: bytes, msg: Any) -> Any:
        """The endpoint: the request is checked once here (``MalformedMessage`` if it is not one)."""
        return await self._serve(parse_sync_request(msg))

    async def _serve(self, req: SyncRequest) -> Any:
        if isinstance(req, SumsRequest | ElementsRequest):
            sums = self.data.sums
            if sums.rebuilding:
                raise ServiceUnavailable(f"the range sums of {self.table_name} are being rebuilt")
            with self.data.db.read() as txn:
                if isinstance(req, ElementsRequest):
                    return [None if e is None else pack_sum(e) for e in sums.elements_of(txn, list(req.keys))]
                return [pack_sum(v) for v in sums.sums_of(txn, req.partition, req.level, list(req.bounds), req.end)]
        if isinstance(req, ItemsPush):
            await self.data.merge_many(decode_entries(self.data.schema, req.raws, "sync items"))
            return None
        return await asyncio.to_thread(self.local_digest)

    def local_digest(self) -> dict[str, Any]:
        """Entries held here, a hash of them all and of the partitions' range sums (equal on
        replicas holding the same data, once no rebuild of the sums is running)."""
        h = hashlib.blake2b(digest_size=32)
        n = 0
        with self.data.db.read() as txn:
            for k, v in txn.cursor(db=self.data.store):
                h.update(len(k).to_bytes(4, "big") + k + blake2sum(self.data.canonical(k, v)))
                n += 1
        roots = hashlib.blake2b(digest_size=32)
        sums = self.data.sums
        with self.data.db.read() as txn:
            for p in range(256):
                roots.update(pack_sum(sums.partition_sum(txn, p)))
        return {
            "items": n,
            "hash": h.hexdigest(),
            "merkle_todo": sums.left_to_rebuild(),
            "merkle_roots": roots.hexdigest(),
        }
