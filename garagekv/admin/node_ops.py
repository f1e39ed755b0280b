"""Operator operations on one node: repairs, statistics and background workers.

Like ``cluster_ops``, these run by name on the node the CLI (over RPC) or the admin HTTP API
talks to, and act on that node only. They see the node through its ``OpServices``.

- ``node.info``: the node's id, endpoints and a few counters.
- ``repair`` ``{what: tables|merkle|counters}``: ``tables`` starts a full anti-entropy sync of
  every table (the K2V ones included), ``merkle`` rebuilds the range sums that anti-entropy compares from the data, and
  ``counters`` recounts this node's K2V index counters from its items (a background worker).
- ``stats`` ``{all_nodes?}``: per table the entries, range sums left to rebuild, GC to-do and insert queue
  lengths; the partitions this node stores; database size; anti-entropy state (``all_nodes``:
  the same for every node of the layout, as ``{nodes: [...]}``).
- ``worker.list`` / ``worker.info`` ``{tid}``: background workers with state, progress, errors.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass
from typing import Any

from garagekv.admin.operation import NoArgs, Op, OpServices
from garagekv.admin.remote import ADMIN_ENDPOINT
from garagekv.admin.stats import table_stats
from garagekv.db.env import Database
from garagekv.model.counter_repair import CounterRepair
from garagekv.model.model import Model
from garagekv.rpc.layout import NB_PARTITIONS
from garagekv.util.background import WorkerInfo
from garagekv.util.errors import AdminError

log = logging.getLogger(__name__)

REPAIRS = ("tables", "merkle", "counters")
STATS_TIMEOUT = 10.0


# ---- helpers ------------------------------------------------------------------------------------


def _components(obj: Any) -> list[tuple[str, Any]]:
    """(table name, component) for a model attribute holding per-table components (list or dict)."""
    if obj is None:
        return []
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    return [(_component_table(c), c) for c in obj]


def _component_table(c: Any) -> str:
    table_name = getattr(c, "table_name", None)
    if isinstance(table_name, str):
        return table_name
    table = getattr(c, "table", None)
    schema = getattr(table, "schema", None) or getattr(getattr(c, "data", None), "schema", None)
    schema_name = getattr(schema, "name", None) if schema is not None else None
    if schema_name:
        return str(schema_name)  # a schema's name is a str already
    name = getattr(c, "name", None)
    return str(name) if name else type(c).__name__


_pending: set[asyncio.Task[Any]] = set()

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


def _forget(t: asyncio.Task[Any]) -> None:
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


async def node_info(node: OpServices, a: NoArgs) -> dict[str, Any]:
    return node.info()


@dataclass(frozen=True, kw_only=True)
class RepairArgs:
    what: str  # one of REPAIRS


async def repair(node: OpServices, a: RepairArgs) -> dict[str, Any]:
    what = a.what
    if what not in REPAIRS:
        raise AdminError(f"Unknown repair '{what}': choose one of {', '.join(REPAIRS)}")
    model = node.model
    if what in ("tables", "merkle"):
        attr, verb = (
            ("syncers", "full anti-entropy sync") if what == "tables" else ("sums_workers", "range sums rebuild")
        )
        components = _components(getattr(model, attr, None))
        if not components:
            return {
                "launched": False,
                "follow": [],
                "message": f"No {verb} is available on this node: nothing to repair.",
            }
        follow: list[dict[str, Any]] = []
        queued = 0
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
    info, stat = db.environment.info(), db.environment.stat()
    out["used_bytes"] = (info["last_pgno"] + 1) * stat["psize"]
    out["map_size"] = info["map_size"]
    try:
        out["free_bytes"] = db.free_bytes()
    except OSError:
        out["free_bytes"] = None
    return out


@dataclass(frozen=True, kw_only=True)
class StatsArgs:
    all_nodes: bool = False


async def stats(node: OpServices, a: StatsArgs) -> dict[str, Any]:
    if a.all_nodes:
        return await _stats_all(node)
    model, system = node.model, node.system
    trees = table_stats(node.db, getattr(model, "sums_workers", ()))
    gc_by_table = {gc.table.schema.name: gc for gc in getattr(model, "gcs", [])}
    tables = []
    names = [t.schema.name for t in model.tables]
    names += sorted(set(trees) - set(names))
    for name in names:
        t = trees.get(name, {})
        row = {
            "table": name,
            "items": t.get("items", 0),
            "bytes": t.get("bytes"),
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


async def _stats_all(node: OpServices) -> dict[str, Any]:
    """``stats`` of every node of the layout (and this one), each asked over the cluster RPC."""
    system = node.system
    ids = sorted({system.node_id, *system.layout.history.all_nodes()})

    async def one(n: bytes) -> dict[str, Any]:
        try:
            if n == system.node_id:
                return await stats(node, StatsArgs())
            reply: dict[str, Any] = await system.netapp.call(
                n, ADMIN_ENDPOINT, {"op": "stats", "args": {}}, timeout=STATS_TIMEOUT
            )
            return reply  # the remote node's `stats` answer, a map
        except Exception as e:  # noqa: BLE001 - reported per node
            return {"node": n.hex(), "error": str(e)}

    return {"nodes": list(await asyncio.gather(*(one(n) for n in ids)))}


async def worker_list(node: OpServices, a: NoArgs) -> dict[str, Any]:
    return {"workers": sorted(node.model.background.list(), key=lambda w: w["tid"])}


@dataclass(frozen=True, kw_only=True)
class WorkerInfoArgs:
    tid: int


async def worker_info(node: OpServices, a: WorkerInfoArgs) -> dict[str, Any]:
    return _worker_info(node.model, a.tid).to_json()


@dataclass(frozen=True, kw_only=True)
class SnapshotArgs:
    all_nodes: bool = False


SNAPSHOT_TIMEOUT = 3600.0  # a compacting copy of a large database takes a while


async def meta_snapshot(node: OpServices, a: SnapshotArgs) -> dict[str, Any]:
    """A consistent, compacted copy of the metadata database (docs/operations.md, Backups)."""
    if not a.all_nodes:
        return {"node": node.system.node_id.hex(), **(await node.snapshotter.take())}
    system = node.system
    ids = sorted({system.node_id, *system.layout.history.all_nodes()})

    async def one(n: bytes) -> dict[str, Any]:
        try:
            if n == system.node_id:
                return await meta_snapshot(node, SnapshotArgs())
            msg = {"op": "meta.snapshot", "args": {}}
            reply: dict[str, Any] = await system.netapp.call(n, ADMIN_ENDPOINT, msg, timeout=SNAPSHOT_TIMEOUT)
            return reply  # the remote node's `meta.snapshot` answer, a map
        except Exception as e:  # noqa: BLE001 - reported per node
            return {"node": n.hex(), "error": str(e)}

    return {"nodes": list(await asyncio.gather(*(one(n) for n in ids)))}


NODE_OPS: tuple[Op[Any], ...] = (
    Op("node.info", NoArgs, node_info),
    Op("repair", RepairArgs, repair),
    Op("stats", StatsArgs, stats),
    Op("worker.list", NoArgs, worker_list),
    Op("worker.info", WorkerInfoArgs, worker_info),
    Op("meta.snapshot", SnapshotArgs, meta_snapshot),
)
