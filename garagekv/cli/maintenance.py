"""``garagekv repair``, ``stats``, ``worker`` and ``meta snapshot``: operating one node.

They run on the node the CLI talks to (the config's own, or ``--rpc-host``). Long operations
show their progress: ``repair counters`` waits for its worker unless ``--detach`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from garagekv.admin.remote import admin_call
from garagekv.cli import jsonout
from garagekv.cli.argtypes import u64
from garagekv.rpc.layout import format_bytes
from garagekv.util.config import Config
from garagekv.util.errors import AdminError

COMMANDS = ("repair", "stats", "worker", "meta")
PROGRESS_INTERVAL = 1.0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "repair",
        help="repair this node's data: anti-entropy, range sums, index counters",
        description="tables: full anti-entropy sync of every table (K2V included); "
        "merkle: rebuild the range sums anti-entropy compares (Garage's Merkle trees); "
        "counters: recount the K2V index counters from the local items.",
    )
    r.add_argument("what", choices=("tables", "merkle", "counters"))
    r.add_argument("--yes", action="store_true", help="really launch the repair")
    r.add_argument("--detach", action="store_true", help="launch and return without waiting for the end")
    s = sub.add_parser("stats", help="this node's tables, queues, partitions and database")
    s.add_argument("--json", action="store_true")
    s.add_argument("-a", "--all-nodes", action="store_true", help="statistics of every node of the layout")
    w = sub.add_parser("worker", help="this node's background workers").add_subparsers(dest="action", required=True)
    wl = w.add_parser("list", help="workers with state, progress and errors")
    wl.add_argument("--json", action="store_true")
    wl.add_argument("-b", "--busy", action="store_true", help="only workers that are busy")
    wl.add_argument("-e", "--errors", action="store_true", help="only workers with errors")
    wi = w.add_parser("info", help="one worker in detail")
    wi.add_argument("tid", type=u64)
    wi.add_argument("--json", action="store_true")
    m = sub.add_parser("meta", help="this node's metadata database").add_subparsers(dest="action", required=True)
    ms = m.add_parser(
        "snapshot",
        help="a consistent, compacted copy of the database, taken while the node runs",
        description="Written under metadata_snapshots_dir (default: metadata_dir/snapshots); the newest "
        "metadata_snapshots_keep are kept. Restoring one is described in docs/operations.md (Backups).",
    )
    ms.add_argument("-a", "--all", action="store_true", help="snapshot every node of the layout")
    ms.add_argument("--json", action="store_true")


# ---- formatting ---------------------------------------------------------------------------------


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _n(v: Any) -> str:
    return "-" if v is None else str(v)


def progress_text(w: dict[str, Any]) -> str:
    """``done/total`` (with a percentage), ``done`` or ``-``."""
    done, total = w.get("done"), w.get("total")
    if done is None:
        return "-"
    if total:
        return f"{done}/{total} ({100 * done // max(total, 1)}%)"
    return str(done)


def format_workers(workers: list[dict[str, Any]]) -> str:
    rows = [("TID", "State", "Name", "Done", "Queue", "Errors", "Consec", "Last error")]
    for w in workers:
        last = ""
        if w.get("last_error"):
            ago = w.get("last_error_secs_ago")
            last = (f"{ago}s ago: " if ago is not None else "") + w["last_error"]
        if w.get("unsyncable"):  # anti-entropy skipped entries too big to send: say so here
            last = f"cannot sync {w['unsyncable']}" + (f"; {last}" if last else "")
        if len(last) > 100:
            last = last[:97] + "..."
        rows.append(
            (
                str(w["tid"]),
                w["state"],
                w["name"],
                progress_text(w),
                _n(w.get("queue")),
                str(w.get("errors", 0)),
                str(w.get("consecutive_errors", 0)),
                last,
            )
        )
    return table(rows)


def format_worker(w: dict[str, Any]) -> str:
    lines = [f"Worker {w['tid']}: {w['name']}", f"State: {w['state']}", f"Progress: {progress_text(w)}"]
    shown = {
        "tid",
        "name",
        "state",
        "done",
        "total",
        "errors",
        "consecutive_errors",
        "last_error",
        "last_error_secs_ago",
    }
    for k, v in w.items():
        if k not in shown:
            lines.append(f"{k.replace('_', ' ').capitalize()}: {_n(v)}")
    lines.append(f"Errors: {w.get('errors', 0)} ({w.get('consecutive_errors', 0)} consecutive)")
    if w.get("last_error"):
        lines.append(f"Last error ({_n(w.get('last_error_secs_ago'))}s ago): {w['last_error']}")
    return "\n".join(lines)


def format_stats(st: dict[str, Any]) -> str:
    out = [
        f"Node {st['node'][:16]} (layout version {st['layout_version']}, replication factor {st['replication_factor']})"
    ]
    db = st["db"]
    used = db.get("used_bytes")
    free = db.get("free_bytes")
    out.append(
        f"Database: LMDB, {format_bytes(used) if used is not None else '?'} used, "
        f"{format_bytes(free) if free is not None else '?'} free on the metadata disk"
    )
    out.append("")
    out.append("==== TABLES ====")
    rows: list[tuple[str, ...]] = [("Table", "Items", "Size", "MklItems", "MklTodo", "GcTodo", "InsertQueue", "GC'd")]
    for t in st["tables"]:
        size = t.get("bytes")
        rows.append(
            (
                t["table"],
                str(t["items"]),
                "-" if size is None else format_bytes(size),
                _n(t.get("merkleItems")),
                str(t["merkleTodo"]),
                str(t["gcTodo"]),
                str(t["insertQueue"]),
                _n(t.get("gcCollected")),
            )
        )
    out.append(table(rows))
    out.append("")
    p = st["partitions"]
    out.append(f"Partitions stored by this node: {p['stored']} of {p['total']}")
    if st["storage_nodes"]:
        out.append("")
        out.append(f"==== STORAGE NODES (layout version {st['layout_version']}) ====")
        rows = [("ID", "Zone", "Capacity", "Partitions", "Status")]
        for n in st["storage_nodes"]:
            cap = "gateway" if n["capacity"] is None else format_bytes(n["capacity"])
            rows.append((n["id"][:16], _n(n["zone"]), cap, str(n["partitions"]), "up" if n["up"] else "DOWN"))
        out.append(table(rows))
    if len(st.get("live_layout_versions") or []) > 1:
        out.append(f"\nLayout migration in progress: live versions {st['live_layout_versions']}")
    out.append("")
    if st.get("sync"):
        out.append("==== ANTI-ENTROPY ====")
        rows = [("Table", "State", "Full syncs", "Last full sync")]
        for s in st["sync"]:
            state = f"syncing {s.get('done', 0)}/{s['total']} partitions" if s.get("total") else "idle"
            if s.get("version") is not None:
                state += f" (layout v{s['version']})"
            if s.get("error"):
                state = f"error: {s['error']}"
            ago = s.get("last_full_sync_secs_ago")
            rows.append((s["table"], state, _n(s.get("full_syncs")), "never" if ago is None else f"{ago}s ago"))
        out.append(table(rows))
    else:
        out.append("Anti-entropy: not available on this node")
    w = st["workers"]
    out.append(f"Background workers: {w['total']} ({w['with_errors']} failing; see `garagekv worker list`)")
    return "\n".join(out)


# ---- commands -----------------------------------------------------------------------------------


async def _follow(call: Any, tid: int, interval: float = PROGRESS_INTERVAL) -> dict[str, Any]:
    """Print the worker's progress until it is done; returns its final state."""
    last = None
    last_print = 0.0
    while True:
        w: dict[str, Any] = await call("worker.info", {"tid": tid})
        text = f"{w['state']}: {progress_text(w)}" + (f" [{w['phase']}]" if w.get("phase") else "")
        if w.get("consecutive_errors"):
            text += f" (retrying after error: {w.get('last_error')})"
        now = time.monotonic()
        if w["state"] == "done":
            return w
        if text != last and now - last_print >= interval:
            print(f"  {text}", flush=True)
            last, last_print = text, now
        await asyncio.sleep(min(interval, 0.5))


async def run(args: argparse.Namespace, config: Config) -> int:
    host = args.rpc_host

    async def call(op: str, op_args: dict[str, Any] | None = None) -> Any:
        return await admin_call(config, op, op_args, rpc_host=host)

    if args.command == "stats":
        st = await call("stats", {"all_nodes": args.all_nodes})
        if args.json:
            print(jsonout.dumps(st))
        elif args.all_nodes:
            parts = []
            for n in st["nodes"]:
                if "error" in n:
                    parts.append(f"Node {n['node'][:16]}: unreachable ({n['error']})")
                else:
                    parts.append(format_stats(n))
            print("\n\n".join(parts))
        else:
            print(format_stats(st))
        return 0
    if args.command == "meta":
        res = await call("meta.snapshot", {"all_nodes": args.all})
        if args.json:
            print(jsonout.dumps(res))
            return 0
        failed = 0
        for n in res.get("nodes", [res]):
            if "error" in n:
                failed += 1
                print(f"Node {n['node'][:16]}: snapshot failed: {n['error']}", file=sys.stderr)
            else:
                print(f"Node {n['node'][:16]}: snapshot {n['path']} ({format_bytes(n['bytes'])}, {n['seconds']}s)")
        return 1 if failed else 0
    if args.command == "worker":
        if args.action == "info":
            w = await call("worker.info", {"tid": args.tid})
            print(jsonout.dumps(w) if args.json else format_worker(w))
            return 0
        workers = (await call("worker.list"))["workers"]
        if args.busy:
            workers = [w for w in workers if w["state"] == "busy"]
        if args.errors:
            workers = [w for w in workers if w.get("errors")]
        print(jsonout.dumps(workers) if args.json else format_workers(workers))
        return 0
    # repair
    if not args.yes:
        raise AdminError(f"Please add the --yes flag to launch the repair (`garagekv repair --yes {args.what}`).")
    res = await call("repair", {"what": args.what})
    print(res["message"], flush=True)
    tid = res.get("tid")
    follow = [f for f in res.get("follow") or [] if f.get("tid") is not None]
    if args.detach or not (tid is not None or follow):
        if res.get("launched"):
            print("Follow it with `garagekv worker list`.", file=sys.stderr)
        return 0
    print("Waiting for it to finish (Ctrl-C stops waiting, not the repair; --detach does not wait):", flush=True)
    if args.what == "counters":
        w = await _follow(call, tid)
        print(
            f"Done: {w.get('items', 0)} items in {w.get('partitions', 0)} partitions counted, "
            f"{w.get('counters', 0)} local counters checked."
        )
    else:
        await _follow_tables(call, follow, args.what)
        print(
            "Done: full sync completed for every table."
            if args.what == "tables"
            else "Done: every table's range sums are up to date."
        )
    return 0


def _table_done(kind: str, f: dict[str, Any], w: dict[str, Any]) -> bool:
    if kind == "tables":
        return (w.get("full_syncs") or 0) > (f.get("full_syncs") or 0)
    return not w.get("queue")


async def _follow_tables(
    call: Any, follow: list[dict[str, Any]], kind: str, interval: float = PROGRESS_INTERVAL
) -> None:
    """Print the per-table progress of sync or range sums workers until each one is done."""
    last, last_print = None, 0.0
    while True:
        workers = {w["tid"]: w for w in (await call("worker.list"))["workers"]}
        parts, pending = [], 0
        for f in follow:
            w = workers.get(f["tid"], {})
            if _table_done(kind, f, w):
                parts.append(f"{f['table']} done")
                continue
            pending += 1
            if kind == "tables":
                state = f"{w.get('done', 0)}/{w.get('total', 0)} partitions" if w.get("total") else "starting"
            else:
                state = f"{w.get('queue', 0)} to do"
            if w.get("consecutive_errors"):
                state += f", retrying after: {w.get('last_error')}"
            parts.append(f"{f['table']} {state}")
        if not pending:
            return
        text = "; ".join(parts)
        now = time.monotonic()
        if text != last and now - last_print >= interval:
            print(f"  {text}", flush=True)
            last, last_print = text, now
        await asyncio.sleep(min(interval, 0.5))
