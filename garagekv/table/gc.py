"""Tombstone GC: delete tombstones for good once every replica holds them (two phases).

A tombstone must stay for a while: a replica that missed the deletion, or a node still handing
off an old partition, could otherwise push the deleted value back. So only the partition's
first storage node (its "leader", the smallest node id) records each new tombstone in
``<table>:gc_todo`` (key ``be64(time ms) || tree key``, value the hash of the tombstone's bytes),
in the transaction that wrote it. Once ``tombstone_gc_delay_sec`` has passed, the GC worker:

1. drops to-do entries whose local value changed since (it is no longer that tombstone);
2. groups the rest by the set of *other* storage nodes of their partition;
3. pushes the tombstones to all of those nodes (every one must answer), then asks each of them
   to delete the entry only if its stored bytes still hash the same;
4. deletes its own copy under the same condition and removes the to-do entry.

Any unreachable node postpones the group: the to-do entries stay and the worker retries with
backoff. A deletion writes an empty Merkle to-do value and calls the schema's
``updated(old, None)``, so index counters and Merkle tries follow.

Only tables whose tombstones may disappear get a GC (K2V items and index counters). Keys and
buckets keep their tombstones forever so a deleted id can never come back. A counter entry is a
tombstone only when every register of every node is zero (``CounterEntry.is_tombstone()`` with
no node filter): stricter than ReadIndex's view over the current layout's nodes, so a count a
departed or migrating node still publishes is never collected.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.net.identity import short_id
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.table.messages import DeleteIfEqualHash, GcRequest, Update, decode_entries, parse_gc_request
from garagekv.table.table import Table
from garagekv.util.background import Notify, WorkerState
from garagekv.util.codec import blake2sum
from garagekv.util.errors import ServiceUnavailable
from garagekv.util.time import now_ms

log = logging.getLogger(__name__)

#: to-do entries read per step, and tombstones collected per step at most (as in Garage)
SCAN_LIMIT = 2048
BATCH = 1024
#: longest idle sleep; a new tombstone only becomes eligible after the delay anyway
IDLE_WAKEUP = 60.0


class GcPostponed(ServiceUnavailable):
    """Some replica did not take part in a phase: the tombstones stay until it is reachable."""


# ---- the to-do list ------------------------------------------------------------------------------


def todo_key(tombstone_ms: int, tree_key: bytes) -> bytes:
    return struct.pack(">Q", tombstone_ms) + tree_key


def parse_todo_key(key: bytes) -> tuple[int, bytes]:
    if len(key) < 8 + 32:
        raise ValueError("malformed gc_todo key")
    return struct.unpack(">Q", key[:8])[0], key[8:]


@dataclass(frozen=True)
class Candidate:
    """A to-do entry whose tombstone is still the local value and is old enough to go."""

    todo_key: bytes
    tree_key: bytes
    value_hash: bytes
    raw: bytes  # the tombstone's current local bytes (hash == value_hash)


@dataclass
class Selection:
    ready: list[Candidate]
    stale: list[tuple[bytes, bytes]]  # (todo key, todo value) to drop: the value changed or went
    next_deadline_ms: int | None  # when the first not-yet-eligible entry becomes eligible


def select_candidates(
    todo: Iterable[tuple[bytes, bytes]],
    get_raw: Callable[[bytes], bytes | None],
    now: int,
    delay_ms: int,
    batch: int = BATCH,
) -> Selection:
    """Walk the to-do list in time order: keep eligible entries whose tombstone is still local.

    Stops at the first entry younger than ``delay_ms`` (the list is ordered by tombstone time),
    or once ``batch`` candidates are ready.
    """
    ready: list[Candidate] = []
    stale: list[tuple[bytes, bytes]] = []
    next_deadline = None
    for key, value_hash in todo:
        ts, tree_key = parse_todo_key(key)
        if ts + delay_ms > now:
            next_deadline = ts + delay_ms
            break
        raw = get_raw(tree_key)
        if raw is None or blake2sum(raw) != value_hash:
            stale.append((key, value_hash))
            continue
        ready.append(Candidate(key, tree_key, value_hash, raw))
        if len(ready) >= batch:
            break
    return Selection(ready, stale, next_deadline)


def group_by_other_nodes(
    candidates: Iterable[Candidate], storage_nodes: Callable[[bytes], list[bytes]], self_id: bytes
) -> dict[tuple[bytes, ...], list[Candidate]]:
    """Candidates keyed by the sorted storage nodes of their partition, this node excluded."""
    groups: dict[tuple[bytes, ...], list[Candidate]] = defaultdict(list)
    for c in candidates:
        others = tuple(sorted(n for n in set(storage_nodes(c.tree_key[:32])) if n != self_id))
        groups[others].append(c)
    return dict(groups)


# ---- the worker ----------------------------------------------------------------------------------


class TableGc:
    """The GC of one table: records tombstones, serves the GC RPC, and runs as a worker."""

    def __init__(
        self,
        table: Table[Any],
        db: Database,
        writer: GroupCommitWriter,
        delay_sec: float,
        registry: EndpointRegistry,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.table = table
        self.data = table.data
        self.db = db
        self.writer = writer
        self.delay_ms = int(delay_sec * 1000)
        self.clock = clock
        self.todo = db.tree(f"{table.schema.name}:gc_todo")
        self.endpoint = endpoint_path("table", "gc", table.schema.name)
        registry.register(self.endpoint, self._handle)
        self.data.on_tombstone = self.record_in
        self._wake = Notify()
        self._next_deadline_ms: int | None = None
        self.collected = 0  # tombstones deleted on this node by its own GC
        self.postponed = 0  # tombstones whose GC had to be put off (a replica was unreachable)
        self.last_collect_at: float | None = None

    @property
    def name(self) -> str:
        return f"{self.table.schema.name} GC"

    @property
    def node_id(self) -> bytes:
        return self.table.node_id

    # ---- recording (writer thread, inside the transaction that wrote the tombstone) -------------

    def is_leader(self, tree_key: bytes) -> bool:
        try:
            nodes = self.table.replication.storage_nodes(tree_key[:32])
        except Exception:  # noqa: BLE001 - layout in flux: recording too much is harmless
            log.debug("storage nodes unavailable while recording a tombstone", exc_info=True)
            return True
        return not nodes or min(nodes) == self.node_id

    def record_in(self, tx: WriteTxn, tree_key: bytes, raw: bytes) -> None:
        if self.is_leader(tree_key):
            tx.put(self.todo, todo_key(self.clock(), tree_key), blake2sum(raw))
            tx.on_commit(self._wake.notify)

    def __len__(self) -> int:
        with self.db.read() as txn:
            return txn.stat(self.todo)["entries"]

    # ---- one GC step ----------------------------------------------------------------------------

    def _select(self) -> Selection:
        with self.db.read() as txn:
            cur = txn.cursor(db=self.todo)

            def rows() -> Iterable[tuple[bytes, bytes]]:
                for n, kv in enumerate(cur):
                    if n >= SCAN_LIMIT:
                        return
                    yield kv

            return select_candidates(rows(), lambda k: self.data.get_raw_at(txn, k), self.clock(), self.delay_ms)

    async def _drop_todo(self, entries: list[tuple[bytes, bytes]]) -> None:
        def apply(tx: WriteTxn) -> None:
            for key, value_hash in entries:
                if tx.get(self.todo, key) == value_hash:
                    tx.delete(self.todo, key)

        await self.writer.submit(apply)

    async def _call_all(self, nodes: tuple[bytes, ...], req: GcRequest, what: str, count: int) -> None:
        async def one(node: bytes) -> Any:
            if node == self.node_id:
                return await self._serve(req)
            return await self.table.netapp.call(node, self.endpoint, req.to_wire(), timeout=self.table.timeout)

        results = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
        errors = [f"{short_id(n)}: {r}" for n, r in zip(nodes, results, strict=True) if isinstance(r, BaseException)]
        if errors:
            raise GcPostponed(
                f"GC of {count} tombstone(s) postponed: {what} failed on {len(errors)} of "
                f"{len(nodes)} replica(s) ({'; '.join(errors)})"
            )

    async def collect(self, others: tuple[bytes, ...], cands: list[Candidate]) -> int:
        """Both phases for one group; returns how many tombstones this node deleted."""
        if others:
            await self._call_all(others, Update(tuple(c.raw for c in cands)), "pushing the tombstones", len(cands))
            await self._call_all(
                others,
                DeleteIfEqualHash(tuple((c.tree_key, c.value_hash) for c in cands)),
                "deleting them",
                len(cands),
            )

        def apply(tx: WriteTxn) -> int:
            n = 0
            for c in cands:
                n += self.data.delete_if_equal_hash_in(tx, c.tree_key, c.value_hash)
                if tx.get(self.todo, c.todo_key) == c.value_hash:
                    tx.delete(self.todo, c.todo_key)
            return n

        return await self.writer.submit(apply)

    async def work(self) -> WorkerState:
        sel = await asyncio.to_thread(self._select)
        self._next_deadline_ms = sel.next_deadline_ms
        if sel.stale:
            await self._drop_todo(sel.stale)
        if not sel.ready:
            return WorkerState.BUSY if sel.stale else WorkerState.IDLE
        groups = group_by_other_nodes(sel.ready, self.table.replication.storage_nodes, self.node_id)
        errors: list[str] = []
        for others, cands in groups.items():
            try:
                self.collected += await self.collect(others, cands)
                self.last_collect_at = time.time()
            except Exception as e:  # noqa: BLE001 - the other groups still go ahead
                self.postponed += len(cands)
                errors.append(str(e))
        if errors:
            # Raising puts the worker in backoff and shows the reason in `garagekv worker list`.
            raise GcPostponed("; ".join(errors))
        return WorkerState.BUSY

    async def wait_for_work(self) -> None:
        timeout = IDLE_WAKEUP
        if self._next_deadline_ms is not None:
            timeout = min(timeout, max(0.05, (self._next_deadline_ms - self.clock()) / 1000 + 0.01))
        await self._wake.wait(timeout)

    def progress(self) -> dict[str, Any]:
        return {"done": self.collected, "queue": len(self)}

    # ---- the GC RPC (served on every node) --------------------------------------------------------

    async def _handle(self, from_node: bytes, msg: Any) -> Any:
        """The endpoint: the request is checked once here (``MalformedMessage`` if it is not one)."""
        return await self._serve(parse_gc_request(msg))

    async def _serve(self, req: GcRequest) -> Any:
        if isinstance(req, Update):
            await self.data.merge_many(decode_entries(self.table.schema, req.raws, "gc update"))
            return None
        return await self.data.delete_if_equal_hash(list(req.items))
