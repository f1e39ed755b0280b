"""Operator operations on one node: repairs, statistics and background workers.

Like ``cluster_ops``, these run by name on the node the CLI (over RPC) or the admin HTTP API
talks to, and act on that node only. They see the node through :class:`NodeServices`.

- ``repair`` ``{what: tables|merkle|counters}``: ``tables`` starts a full anti-entropy sync of
  every table (the K2V ones included), ``merkle`` rebuilds the Merkle tries from the data, and
  ``counters`` recounts this node's K2V index counters from its items (a background worker).
- ``stats`` ``{all_nodes?}``: per table the entries, Merkle to-do, GC to-do and insert queue
  lengths; the partitions this node stores; database size; anti-entropy state (``all_nodes``:
  the same for every node of the layout, as ``{nodes: [...]}``).
- ``worker.list`` / ``worker.info`` ``{tid}``: background workers with state, progress, errors.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from garagekv.admin.remote import ADMIN_ENDPOINT
from garagekv.admin.stats import table_stats
from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.model.index_counter import COUNTER_NAMES, LocalCounter
from garagekv.model.k2v.item import K2VItem, partition_hash
from garagekv.model.model import Model
from garagekv.rpc.layout import NB_PARTITIONS
from garagekv.rpc.system import System
from garagekv.table.data import prefix_end
from garagekv.util.background import WorkerInfo, WorkerState
from garagekv.util.config import Config
from garagekv.util.errors import AdminError
from garagekv.util.time import now_ms

log = logging.getLogger(__name__)

REPAIRS = ("tables", "merkle", "counters")
STATS_TIMEOUT = 10.0


class NodeServices(Protocol):
    """What node operations need from the running node (``garagekv.server.Node`` provides it)."""

    config: Config
    db: Database
    writer: GroupCommitWriter
    system: System
    model: Model


NodeOp = Callable[[NodeServices, dict[str, Any]], Awaitable[Any]]


# ---- counter recount ----------------------------------------------------------------------------

#: items (or local counters) handled per transaction
RECOUNT_STEP = 500


class CounterRepair:
    """Recount this node's K2V index counters from the items it stores, online.

    Each K2V partition is recounted inside one writer transaction, so it is atomic with respect
    to concurrent writes (they are serialised on the writer thread and apply their deltas on top
    of the recounted value). Every recounted counter gets a fresh timestamp and is queued for
    replication, so the corrected values win on every replica. Pass 1 walks the items; pass 2
    recounts the local counters pass 1 did not meet (partitions with no items left: zeroed).
    """

    name = "k2v counter repair"

    def __init__(self, model: Model, db: Database, writer: GroupCommitWriter) -> None:
        self.data = model.items.data
        self.schema = model.items.schema
        self.writer = writer
        self.db = db
        self.phase = "items"
        self._next: bytes | None = b""
        self._seen: set[bytes] = set()
        self.items_done = 0  # items counted (pass 1)
        self.partitions = 0  # partitions recounted from their items (pass 1)
        self.counters_done = 0  # local counters checked (pass 2)
        with db.read() as txn:
            self.total = txn.stat(self.data.store)["entries"] + txn.stat(self.schema.local_counters)["entries"]
        self.started_at = time.time()
        self.finished_at: float | None = None

    def _store(self, tx: WriteTxn, bucket_id: bytes, pk: str, counts: dict[str, int], now: int) -> None:
        key = bucket_id + pk.encode()
        raw = tx.get(self.schema.local_counters, key)
        local = LocalCounter.decode(raw) if raw else LocalCounter(bucket_id, pk)
        for name in set(COUNTER_NAMES) | set(local.values):
            ts, _ = local.values.get(name, (0, 0))
            local.values[name] = (max(ts + 1, now), counts.get(name, 0))
        tx.put(self.schema.local_counters, key, local.encode())
        self.schema.queue_counter(tx, local.to_entry(self.schema.node))

    def _count_partition(self, tx: WriteTxn, ph: bytes) -> tuple[dict[tuple[bytes, str], dict[str, int]], int]:
        """Counts per (bucket, pk) of the items stored under partition hash ``ph``; items read."""
        counts: dict[tuple[bytes, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTER_NAMES, 0))
        n = 0
        cur = tx.cursor(self.data.store)
        if cur.set_range(ph):
            for key, raw in cur:
                if not key.startswith(ph):
                    break
                item = K2VItem.decode(raw)
                c = counts[(item.bucket_id, item.partition_key)]
                for name, v in item.counts().items():
                    c[name] = c.get(name, 0) + v
                n += 1
        return counts, n

    def _items_step(self, tx: WriteTxn, start: bytes) -> tuple[bytes | None, int, list[bytes]]:
        """Recount whole partitions from ``start`` until about RECOUNT_STEP items are read."""
        now = now_ms()
        seen: list[bytes] = []
        read = 0
        nxt: bytes | None = start
        cur = tx.cursor(self.data.store)
        while nxt is not None and read < RECOUNT_STEP:
            if not cur.set_range(nxt):
                nxt = None
                break
            ph = bytes(cur.key()[:32])
            counts, n = self._count_partition(tx, ph)
            read += n
            for (bucket_id, pk), c in counts.items():
                self._store(tx, bucket_id, pk, c, now)
                seen.append(bucket_id + pk.encode())
            nxt = prefix_end(ph)
        return nxt, read, seen

    def _counters_step(self, tx: WriteTxn, start: bytes, seen: set[bytes]) -> tuple[bytes | None, int]:
        """Recount the local counters pass 1 did not meet (their partition had no items then)."""
        now = now_ms()
        cur = tx.cursor(self.schema.local_counters)
        todo: list[LocalCounter] = []
        nxt: bytes | None = None
        n = 0
        if cur.set_range(start):
            for key, raw in cur:
                if n >= RECOUNT_STEP:
                    nxt = bytes(key)
                    break
                n += 1
                if bytes(key) not in seen:
                    todo.append(LocalCounter.decode(raw))
        for local in todo:
            counts, _ = self._count_partition(tx, partition_hash(local.bucket_id, local.partition_key))
            c = counts.get((local.bucket_id, local.partition_key), {})
            self._store(tx, local.bucket_id, local.partition_key, c, now)
        return nxt, n

    async def work(self) -> WorkerState:
        if self.phase == "items":
            start = self._next or b""
            nxt, read, seen = await self.writer.submit(lambda tx: self._items_step(tx, start))
            self.items_done += read
            self._seen.update(seen)
            self.partitions += len(seen)
            self._next = nxt
            if nxt is None:
                self.phase, self._next = "counters", b""
            return WorkerState.BUSY
        if self.phase == "counters":
            start = self._next or b""
            seen = self._seen
            nxt, n = await self.writer.submit(lambda tx: self._counters_step(tx, start, seen))
            self.counters_done += n
            self._next = nxt
            if nxt is None:
                self.phase = "done"
                self.finished_at = time.time()
                self._seen = set()
                log.info(
                    "counter repair done: %d items in %d partitions counted, %d counters checked",
                    self.items_done,
                    self.partitions,
                    self.counters_done,
                )
                return WorkerState.DONE
            return WorkerState.BUSY
        return WorkerState.DONE

    async def wait_for_work(self) -> None:
        return None

    def progress(self) -> dict[str, Any]:
        done = self.items_done + self.counters_done
        return {
            "done": done,
            "total": max(self.total, done),
            "phase": self.phase,
            "items": self.items_done,
            "partitions": self.partitions,
            "counters": self.counters_done,
        }


# ---- helpers ------------------------------------------------------------------------------------


def _components(obj: Any) -> list[tuple[str, Any]]:
    """(table name, component) for a model attribute holding per-table components (list or dict)."""
    if obj is None:
        return []
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    return [(_component_table(c), c) for c in obj]


def _component_table(c: Any) -> str:
    if isinstance(getattr(c, "table_name", None), str):
        return c.table_name
    table = getattr(c, "table", None)
    schema = getattr(table, "schema", None) or getattr(getattr(c, "data", None), "schema", None)
    if schema is not None and getattr(schema, "name", None):
        return schema.name
    name = getattr(c, "name", None)
    return str(name) if name else type(c).__name__


_pending: set[asyncio.Task] = set()

#: how long ``repair`` waits for a component's own coroutine before leaving it in the background
INLINE_WAIT = 10.0


async def _run_bounded(result: Any, what: str) -> Any:
    """The value of ``result`` (awaited for at most INLINE_WAIT s; None if it goes on in the background)."""
    if not inspect.isawaitable(result):
        return result

    async def run() -> Any:
        try:
            return await result
        except Exception:  # noqa: BLE001 - reported in the log; the operator can run it again
            log.exception("%s failed", what)
            raise

    t = asyncio.ensure_future(run())
    _pending.add(t)
    t.add_done_callback(_forget)
    done, _ = await asyncio.wait({t}, timeout=INLINE_WAIT)
    return t.result() if done else None


def _forget(t: asyncio.Task) -> None:
    _pending.discard(t)
    if not t.cancelled():
        t.exception()  # already logged


def _tid_of(model: Model, component: Any) -> int | None:
    for w in model.background.workers:
        if w.worker is component:
            return w.tid
    return None


def _worker_info(model: Model, tid: int) -> WorkerInfo:
    for w in model.background.workers:
        if w.tid == tid:
            return w
    raise AdminError(f"No worker with TID {tid}. Run `garagekv worker list` to see them.")


# ---- operations ---------------------------------------------------------------------------------


async def repair(node: NodeServices, a: dict) -> dict:
    what = a.get("what")
    if what not in REPAIRS:
        raise AdminError(f"Unknown repair '{what}': choose one of {', '.join(REPAIRS)}")
    model = node.model
    if what in ("tables", "merkle"):
        attr, verb = (
            ("syncers", "full anti-entropy sync") if what == "tables" else ("merkle_updaters", "Merkle trie rebuild")
        )
        components = _components(getattr(model, attr, None))
        if not components:
            return {
                "launched": False,
                "follow": [],
                "message": f"No {verb} is available on this node: nothing to repair.",
            }
        follow, queued = [], 0
        for name, c in components:
            baseline = c.progress().get("full_syncs", 0) if hasattr(c, "progress") else 0
            r = await _run_bounded(c.add_full_sync() if what == "tables" else c.rebuild(), f"{verb} of {name}")
            queued += r if isinstance(r, int) else 0
            follow.append({"table": name, "tid": _tid_of(model, c), "full_syncs": baseline})
        names = ", ".join(f["table"] for f in follow)
        extra = f" ({queued} entries queued)" if what == "merkle" else ""
        return {"launched": True, "follow": follow, "message": f"Repair launched: {verb} of {names}{extra}."}
    # counters
    for w in model.background.workers:
        if isinstance(w.worker, CounterRepair) and w.state != "done":
            return {
                "launched": False,
                "tid": w.tid,
                "worker": w.to_json(),
                "message": f"A counter repair is already running (TID {w.tid}).",
            }
    info = model.background.spawn(CounterRepair(model, node.db, node.writer))
    return {
        "launched": True,
        "tid": info.tid,
        "worker": info.to_json(),
        "message": f"Repair launched: recounting this node's K2V index counters (TID {info.tid}).",
    }


def _db_stats(db: Database) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": "lmdb"}
    if db is None or db.env is None:
        return out
    info, stat = db.env.info(), db.env.stat()
    out["used_bytes"] = (info["last_pgno"] + 1) * stat["psize"]
    out["map_size"] = info["map_size"]
    try:
        out["free_bytes"] = db.free_bytes()
    except OSError:
        out["free_bytes"] = None
    return out


async def stats(node: NodeServices, a: dict) -> dict:
    if a.get("all_nodes"):
        return await _stats_all(node)
    model, system = node.model, node.system
    trees = table_stats(node.db)
    gc_by_table = {gc.table.schema.name: gc for gc in getattr(model, "gcs", [])}
    tables = []
    names = [t.schema.name for t in model.tables]
    names += sorted(set(trees) - set(names))
    for name in names:
        t = trees.get(name, {})
        row = {
            "table": name,
            "items": t.get("items", 0),
            "merkleItems": t.get("merkleItems"),
            "merkleTodo": t.get("merkleTodo", 0),
            "gcTodo": t.get("gcTodo", 0),
            "insertQueue": t.get("insertQueue", 0),
        }
        gc = gc_by_table.get(name)
        if gc is not None:
            row["gcCollected"] = gc.collected
        tables.append(row)

    sync = []
    for name, s in _components(getattr(model, "syncers", None)):
        entry: dict[str, Any] = {"table": name}
        progress = getattr(s, "progress", None)
        if callable(progress):
            try:
                entry.update(progress())
            except Exception as e:  # noqa: BLE001 - statistics must not fail
                entry["error"] = str(e)
        sync.append(entry)

    h = system.layout.history
    cur = h.current()
    rep = model.items.replication
    stored = sum(1 for p in rep.sync_partitions() if system.node_id in p.storage_nodes)
    storage_nodes = []
    for n in cur.storage_nodes():
        role = cur.roles.get(n)
        storage_nodes.append(
            {
                "id": n.hex(),
                "zone": role.zone if role else None,
                "capacity": role.capacity if role else None,
                "partitions": len(cur.partitions_of(n)),
                "up": system.is_up(n),
            }
        )
    return {
        "node": system.node_id.hex(),
        "layout_version": cur.version,
        "live_layout_versions": [v.version for v in h.versions],
        "replication_factor": h.replication_factor,
        "partitions": {"total": NB_PARTITIONS, "stored": stored},
        "storage_nodes": storage_nodes,
        "tables": tables,
        "sync": sync if sync else None,
        "db": _db_stats(node.db),
        "workers": {
            "total": len(model.background.workers),
            "with_errors": sum(1 for w in model.background.workers if w.consecutive_errors),
        },
        "tombstone_gc_delay_sec": node.config.tombstone_gc_delay_sec,
    }


async def _stats_all(node: NodeServices) -> dict:
    """``stats`` of every node of the layout (and this one), each asked over the cluster RPC."""
    system = node.system
    ids = sorted({system.node_id, *system.layout.history.all_nodes()})

    async def one(n: bytes) -> dict:
        try:
            if n == system.node_id:
                return await stats(node, {})
            return await system.netapp.call(n, ADMIN_ENDPOINT, {"op": "stats", "args": {}}, timeout=STATS_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - reported per node
            return {"node": n.hex(), "error": str(e)}

    return {"nodes": list(await asyncio.gather(*(one(n) for n in ids)))}


async def worker_list(node: NodeServices, a: dict) -> dict:
    return {"workers": sorted(node.model.background.list(), key=lambda w: w["tid"])}


async def worker_info(node: NodeServices, a: dict) -> dict:
    try:
        tid = int(a.get("tid"))
    except (TypeError, ValueError):
        raise AdminError(f"Invalid worker TID '{a.get('tid')}': expected a number")
    return _worker_info(node.model, tid).to_json()


NODE_OPS: dict[str, NodeOp] = {
    "repair": repair,
    "stats": stats,
    "worker.list": worker_list,
    "worker.info": worker_info,
}
