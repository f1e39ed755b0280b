"""``garagekv status``, ``garagekv node ...`` and ``garagekv layout ...``: the cluster's shape."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from garagekv.admin.remote import admin_call, local_target
from garagekv.cli import jsonout
from garagekv.cli.argtypes import u64
from garagekv.cli.hints import with_config
from garagekv.rpc.layout import format_bytes
from garagekv.util.config import Config
from garagekv.util.errors import AdminError


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser("status", help="nodes of the cluster, their roles and health")
    st.add_argument("--json", action="store_true")

    node = sub.add_parser("node", help="this node's identity and peering").add_subparsers(dest="action", required=True)
    nid = node.add_parser("id", help="print <node id>@<rpc address>")
    nid.add_argument("-q", "--quiet", action="store_true", help="print only the id@address line")
    con = node.add_parser("connect", help="connect to another node")
    con.add_argument("peer", metavar="ID@HOST:PORT")
    fg = node.add_parser(
        "forget",
        help="drop a node that has no role in the layout from the peer list",
        description="Nodes removed from the layout are forgotten by themselves once unreachable for a while; "
        "this does it now. A node with a role must be removed from the layout first.",
    )
    fg.add_argument("node", metavar="NODE_ID_PREFIX")

    layout_parser = sub.add_parser("layout", help="the cluster layout (role table)")
    layout = layout_parser.add_subparsers(dest="action", required=True)
    show = layout.add_parser("show", help="current roles, staged changes and the next assignment")
    show.add_argument("--json", action="store_true")
    a = layout.add_parser(
        "assign",
        help="stage a role for nodes",
        description="A node that is a worker of a multi-worker host (or the host's id) stands for all the "
        "workers of its host: each gets the zone and tags, and the capacity is split evenly between them.",
    )
    a.add_argument("nodes", nargs="+", metavar="NODE_ID_PREFIX")
    a.add_argument("-z", "--zone")
    a.add_argument("-c", "--capacity", help="storage capacity: 500M, 1G, 2TiB ...")
    a.add_argument("-g", "--gateway", action="store_true", help="route requests, store nothing")
    a.add_argument("-t", "--tag", action="append", dest="tags", default=[])
    a.add_argument(
        "--replace", action="append", default=[], metavar="NODE_ID_PREFIX", help="remove these nodes in the same change"
    )
    r = layout.add_parser("remove", help="stage the removal of a node's role (of all its workers for a host id)")
    r.add_argument("node")
    cfg = layout.add_parser("config", help="stage layout parameters")
    cfg.add_argument("-r", "--redundancy", required=True, help="zone redundancy: a number or 'maximum'")
    ap = layout.add_parser("apply", help="compute and commit the staged changes as a new version")
    ap.add_argument("--version", type=u64, help="must be the current version + 1")
    rv = layout.add_parser("revert", help="drop the staged changes")
    rv.add_argument("--yes", action="store_true")
    hi = layout.add_parser("history", help="live and old layout versions, update trackers")
    hi.add_argument("--json", action="store_true")
    sk = layout.add_parser("skip-dead-nodes", help="unblock a migration stuck on dead nodes")
    sk.add_argument("--version", type=u64, required=True)
    sk.add_argument("--allow-missing-data", action="store_true")


def _print_status(st: dict[str, Any]) -> None:
    nodes = st["nodes"]
    # Workers of a multi-worker host: a Host column ("<host id>/<worker index>"), listed together.
    hosts = any(n.get("host") for n in nodes)
    if hosts:
        nodes = sorted(nodes, key=lambda n: (n.get("host") or n["id"], n.get("worker") or 0, n["id"]))
    header = ["ID", "Host"] if hosts else ["ID"]
    rows = [(*header, "Hostname", "Address", "Zone", "Capacity", "Tags", "Status")]
    for n in nodes:
        role = n["role"]
        if role is None:
            zone, cap, tags = "", "NO ROLE ASSIGNED" if not n["draining"] else "draining metadata...", ""
        else:
            zone = role["zone"]
            cap = "gateway" if role["capacity"] is None else format_bytes(role["capacity"])
            tags = ",".join(role["tags"])
        if n["staged_role"] is not None:
            cap += " (pending...)"
        status = (
            "up"
            if n["up"]
            else "DOWN"
            + (f" (last seen {n['last_seen_secs_ago']}s ago)" if n["last_seen_secs_ago"] is not None else "")
        )
        ident = [n["id"][:16]]
        if hosts:
            host, worker = n.get("host"), n.get("worker")
            ident.append("" if not host else host[:16] + ("" if worker is None else f"/{worker}"))
        rows.append((*ident, n["hostname"] or "", n["addr"] or "", zone, cap, tags, status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"==== CLUSTER (layout version {st['layout_version']}) ====")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if hosts:
        print()
        for host, members in _hosts_of(nodes).items():
            up = sum(1 for m in members if m["up"])
            print(f"Host {host[:16]}: {len(members)} workers, {up} up")
    if st["staged_changes"]:
        print(
            with_config(
                "\nThere are staged role changes: run `garagekv layout show` to review them, then "
                "`garagekv layout apply --version N`."
            )
        )


def _hosts_of(nodes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        if n.get("host"):
            out.setdefault(n["host"], []).append(n)
    return out


def _json_without_text(res: dict[str, Any]) -> str:
    """The structured fields only: the text is what the command prints without --json."""
    return jsonout.dumps({k: v for k, v in res.items() if k != "text"})


async def run(args: argparse.Namespace, config: Config) -> int:
    host = args.rpc_host

    async def call(op: str, op_args: dict[str, Any] | None = None) -> Any:
        return await admin_call(config, op, op_args, rpc_host=host)

    if args.command == "status":
        st = await call("cluster.status")
        if args.json:
            print(jsonout.dumps(st))
        else:
            _print_status(st)
        return 0
    if args.command == "node":
        if args.action == "id":
            node_id, (h, p) = local_target(config)
            addr = config.rpc_public_addr or f"{h}:{p}"
            print(f"{node_id.hex()}@{addr}")
            if not args.quiet:
                import sys

                print(
                    f"\nTo connect other nodes to this one: garagekv node connect {node_id.hex()}@{addr}\n"
                    "or add it to their bootstrap_peers. Keep rpc_secret private: it admits nodes.",
                    file=sys.stderr,
                )
                host_file = Path(config.metadata_dir) / "host_id"
                if config.workers > 1 and host_file.exists():
                    host = host_file.read_bytes().hex()
                    print(
                        f"This is worker 0 of host {host[:16]} ({config.workers} workers): "
                        f"`garagekv layout assign {host[:16]} -z <zone> -c <capacity>` assigns them all.",
                        file=sys.stderr,
                    )
            return 0
        if args.action == "forget":
            print(f"Forgot node {(await call('node.forget', {'node': args.node}))['forgotten'][:16]}.")
            return 0
        print(f"Success: connected to {(await call('node.connect', {'peer': args.peer}))['connected'][:16]}.")
        return 0

    a = args.action
    if a == "show":
        res = await call("layout.show")
        print(_json_without_text(res) if args.json else with_config(res["text"]))
    elif a == "history":
        res = await call("layout.history")
        print(_json_without_text(res) if args.json else with_config(res["text"]))
    elif a == "assign":
        res = await call(
            "layout.assign",
            {
                "nodes": args.nodes,
                "zone": args.zone,
                "capacity": args.capacity,
                "gateway": args.gateway,
                "tags": args.tags,
                "replace": args.replace,
            },
        )
        print(with_config(res["message"]))
    elif a == "remove":
        print(with_config((await call("layout.remove", {"node": args.node}))["message"]))
    elif a == "config":
        print(with_config((await call("layout.config", {"zone_redundancy": args.redundancy}))["message"]))
    elif a == "apply":
        res = await call("layout.apply", {"version": args.version})
        print("\n".join(res["messages"]))
        print(res["message"])
    elif a == "revert":
        if not args.yes:
            raise AdminError("Add --yes flag to really drop the staged changes")
        print((await call("layout.revert"))["message"])
    elif a == "skip-dead-nodes":
        res = await call(
            "layout.skip_dead_nodes", {"version": args.version, "allow_missing_data": args.allow_missing_data}
        )
        print("\n".join(res["messages"]))
        print("Success.")
    return 0
