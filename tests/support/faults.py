"""Fault-injection support for the cluster tests: a TCP proxy between nodes, cluster set-up, digests.

``FaultProxy`` listens on 127.0.0.1 for every node and forwards to the node's real RPC port;
each node's ``rpc_public_addr`` points at its proxy port, so every peer (and the CLI) dials it
through the proxy. To cut a node off in *both* directions the proxy must know who dialed: it finds
the process owning the client end of each accepted socket (``/proc/net/tcp`` + ``/proc/<pid>/fd``)
among the node processes it was given. Connections from other processes (the tests' admin calls)
always pass. Per node, traffic to and from it can be:

- ``pass``: forwarded as is;
- ``drop``: existing connections are reset and new ones refused at once;
- ``blackhole``: connections stay open but every byte is silently discarded (a firewall that
  drops packets); on heal those connections are reset, as TCP would after its retries;
- ``delay``: every chunk is forwarded ``delay`` seconds after it arrived (latency, in order).

``start_cluster`` starts n real nodes (optionally behind the proxy), applies a layout and waits
until every node has it; ``local_keys`` reads a node's LMDB files read-only (LMDB allows readers
in other processes) to see exactly what it stores, without going through any quorum.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import lmdb

from garagekv.model.k2v.stored import ItemStoredForm
from garagekv.rpc.layout.history import LayoutHistory
from garagekv.rpc.layout.manager import LAYOUT_FILE
from tests.support import FAST_PINGS, K2VHttp, NodeProcess, free_port, wait_for

LOCALHOST = "127.0.0.1"
MODES = ("pass", "drop", "blackhole", "delay")
SEVERITY = {"pass": 0, "delay": 1, "blackhole": 2, "drop": 3}


# ---- the proxy ----------------------------------------------------------------------------------


@dataclass
class Rule:
    mode: str = "pass"
    delay: float = 0.0


@dataclass(eq=False)
class _Link:
    src: str | None  # node that dialed (None: not a node, e.g. the test's admin client)
    dst: str
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    discarded: bool = False
    closed: bool = False


class FaultProxy:
    """One proxy port per node, all served by an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self._nodes: dict[str, NodeProcess] = {}
        self._ports: dict[str, int] = {}
        self._servers: dict[str, asyncio.base_events.Server] = {}
        self._rules: dict[str, Rule] = {}
        self._links: set[_Link] = set()
        self.accepted = 0
        self.refused = 0

    # -- control (called from the test thread) --

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, name: str, node: NodeProcess) -> int:
        """Proxy to ``node``'s RPC port; sets the node's ``rpc_public_addr`` to the proxy port."""
        port = free_port()

        async def listen() -> None:
            self._servers[name] = await asyncio.start_server(lambda r, w: self._accept(name, r, w), LOCALHOST, port)

        self._run(listen())
        self._nodes[name] = node
        self._ports[name] = port
        node.extra_config += f'rpc_public_addr = "{LOCALHOST}:{port}"\n'
        return port

    def watch(self, name: str, node: NodeProcess) -> None:
        """Attribute connections made by ``node``'s process to ``name`` without proxying to it."""
        self._nodes[name] = node

    def addr(self, name: str) -> str:
        return f"{LOCALHOST}:{self._ports[name]}"

    def cut(self, name: str, mode: str = "drop", delay: float = 0.0) -> None:
        """Apply ``mode`` to all traffic to and from node ``name`` (``pass`` heals it)."""
        assert mode in MODES, mode

        def apply() -> None:
            self._rules[name] = Rule(mode, delay)
            if mode == "drop":
                for link in list(self._links):
                    if name in (link.src, link.dst) and link.src is not None:
                        self._close(link)

        self.loop.call_soon_threadsafe(apply)
        self._run(asyncio.sleep(0))  # the rule is in force when cut() returns

    def heal(self, name: str | None = None) -> None:
        """Back to ``pass`` for ``name`` (all nodes if None); connections that lost bytes are reset."""

        def apply() -> None:
            for n in [name] if name is not None else list(self._rules):
                self._rules.pop(n, None)
            for link in list(self._links):
                if link.discarded and self._rule(link).mode == "pass":
                    self._close(link)

        self.loop.call_soon_threadsafe(apply)
        self._run(asyncio.sleep(0))

    def close(self) -> None:
        async def shutdown() -> None:
            for link in list(self._links):
                self._close(link)
            for s in self._servers.values():
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)

        with contextlib.suppress(Exception):
            self._run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()

    # -- data path (proxy thread) --

    def _rule(self, link: _Link) -> Rule:
        if link.src is None:
            return Rule()
        rules = [self._rules.get(link.src, Rule()), self._rules.get(link.dst, Rule())]
        return max(rules, key=lambda r: (SEVERITY[r.mode], r.delay))

    def _close(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        for w in link.writers:
            with contextlib.suppress(Exception):
                w.transport.abort()
        for t in link.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    async def _accept(self, dst: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(self._who(writer), dst, [writer])
        if self._rule(link).mode == "drop":
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOCALHOST, self._nodes[dst].rpc_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        link.writers.append(up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.ensure_future(self._pump(link, reader, up_writer)),
            asyncio.ensure_future(self._pump(link, up_reader, writer)),
        ]

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while (item := await queue.get()) is not None:
                release, data = item
                wait = release - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            self._close(link)

        sender = asyncio.ensure_future(send())
        link.tasks.append(sender)
        try:
            while data := await reader.read(65536):
                rule = self._rule(link)
                if rule.mode == "drop":
                    break
                if rule.mode == "blackhole":
                    link.discarded = True
                    continue
                queue.put_nowait((time.monotonic() + (rule.delay if rule.mode == "delay" else 0.0), data))
        except (OSError, asyncio.IncompleteReadError):
            pass
        queue.put_nowait(None)
        await asyncio.wait([sender])
        self._close(link)

    def _who(self, writer: asyncio.StreamWriter) -> str | None:
        """The node whose process owns the client end of this accepted connection, if any."""
        try:
            peer_port = writer.get_extra_info("peername")[1]
            local_port = writer.get_extra_info("sockname")[1]
            inode = _socket_inode(peer_port, local_port)
            if inode is None:
                return None
        except (OSError, TypeError):
            return None
        target = f"socket:[{inode}]"
        for name, node in list(self._nodes.items()):
            if node.proc is None:
                continue
            fd_dir = f"/proc/{node.proc.pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:  # exited meanwhile
                continue
            for fd in fds:
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") == target:
                        return name
        return None


_LOOPBACK_HEX = ("0100007F", "7F000001")  # 127.0.0.1 as /proc prints it (little / big endian)


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """Inode of the IPv4 TCP socket 127.0.0.1:local_port -> 127.0.0.1:remote_port."""
    local = {f"{ip}:{local_port:04X}" for ip in _LOOPBACK_HEX}
    remote = {f"{ip}:{remote_port:04X}" for ip in _LOOPBACK_HEX}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1] in local and parts[2] in remote:
                return parts[9]
    return None


def proxy_supported() -> bool:
    return os.path.exists("/proc/net/tcp") and os.path.isdir(f"/proc/{os.getpid()}/fd")


# ---- clusters ------------------------------------------------------------------------------------


def status(node: NodeProcess) -> dict:
    return node.admin("cluster.status")


def up_ids(node: NodeProcess) -> set[str]:
    return {x["id"] for x in status(node)["nodes"] if x["up"]}


def apply_layout(
    nodes: list[NodeProcess],
    assign: list[NodeProcess],
    remove: list[NodeProcess] = (),
    via: NodeProcess | None = None,
    wait_on: list[NodeProcess] | None = None,
    timeout: float = 30.0,
    capacity: str = "1G",
) -> int:
    """Give ``assign`` a role (zone z1, ``capacity``), remove ``remove``, apply; wait until ``wait_on`` see it."""
    via = via or nodes[0]
    stage_layout(via, assign, remove, capacity)
    return commit_layout(via, wait_on if wait_on is not None else nodes, timeout)


def stage_layout(
    via: NodeProcess, assign: list[NodeProcess], remove: list[NodeProcess] = (), capacity: str = "1G"
) -> None:
    """Stage roles (zone z1, ``capacity``) for ``assign`` and removals for ``remove`` on ``via``."""
    if assign:
        via.admin("layout.assign", {"nodes": [n.node_id for n in assign], "zone": "z1", "capacity": capacity})
    for n in remove:
        via.admin("layout.remove", {"node": n.node_id})


def commit_layout(via: NodeProcess, wait_on: list[NodeProcess], timeout: float = 30.0) -> int:
    """Apply what ``via`` has staged; wait until ``wait_on`` see the new version (returned)."""
    version = status(via)["layout_version"] + 1
    via.admin("layout.apply", {"version": version})
    for n in wait_on:
        wait_for(lambda n=n: status(n)["layout_version"] >= version, timeout=timeout)
    return version


def layout_of(node: NodeProcess) -> LayoutHistory:
    """``node``'s layout history (versions, staged changes) as it last persisted it."""
    return LayoutHistory.decode((node.metadata_dir / LAYOUT_FILE).read_bytes())


def make_node(root: Path, rf: int = 3, extra: str = "", k2v_extra: str = "", pings: str = FAST_PINGS) -> NodeProcess:
    return NodeProcess(root, extra_config=f"replication_factor = {rf}\n{pings}{extra}", k2v_extra=k2v_extra)


def join(node: NodeProcess, seed: NodeProcess, proxy: FaultProxy | None = None, name: str | None = None) -> None:
    """Start ``node`` bootstrapped from ``seed`` (through the proxy when there is one)."""
    addr = proxy.addr(name) if proxy is not None and name is not None else f"{LOCALHOST}:{seed.rpc_port}"
    node.extra_config += f'bootstrap_peers = ["{seed.node_id}@{addr}"]\n'
    node.start()


def start_cluster(
    root: Path,
    n: int = 3,
    rf: int = 3,
    extra: str = "",
    k2v_extra: str = "",
    proxy: FaultProxy | None = None,
    layout: bool = True,
    pings: str = FAST_PINGS,
) -> list[NodeProcess]:
    """n nodes bootstrapped from the first, fully meshed, layout (rf) applied on all of them."""
    nodes = [make_node(root / f"n{i}", rf, extra, k2v_extra, pings) for i in range(n)]
    if proxy is not None:
        for i, node in enumerate(nodes):
            proxy.add(f"n{i}", node)
    try:
        nodes[0].start()
        for node in nodes[1:]:
            join(node, nodes[0], proxy, "n0")
        ids = {node.node_id for node in nodes}
        for node in nodes:
            wait_for(lambda node=node: up_ids(node) >= ids, timeout=30)
        if layout:
            apply_layout(nodes, nodes)
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


def index_entries(client: K2VHttp, bucket: str) -> dict[str, int]:
    """ReadIndex, all pages: partition key -> number of entries."""
    out: dict[str, int] = {}
    start = None
    while True:
        r = client.request("GET", f"/{bucket}", "" if start is None else f"start={quote(start, safe='')}")
        assert r.status == 200, r.body
        body = r.json()
        out.update({e["pk"]: e["entries"] for e in body["partitionKeys"]})
        if not body.get("more"):
            return out
        start = body["nextStart"]


def make_bucket(node: NodeProcess, bucket: str = "fault-bucket") -> dict:
    """A key allowed to read, write and own a new bucket: ``{access_key, secret_key, bucket}``."""
    key = node.admin("key.create", {"name": f"{bucket}-key"})
    node.admin("bucket.create", {"name": bucket})
    node.admin(
        "bucket.permissions",
        {"bucket": bucket, "key": key["accessKeyId"], "allow": True, "read": True, "write": True, "owner": True},
    )
    return {"access_key": key["accessKeyId"], "secret_key": key["secretAccessKey"], "bucket": bucket}


def shared_bucket(nodes: list[NodeProcess], bucket: str = "fault-bucket", timeout: float = 30.0) -> dict:
    """``make_bucket`` through the first node, returned once its key and bucket reached every
    node of ``nodes`` (the full-copy tables are written to n-1 nodes first)."""
    creds = make_bucket(nodes[0], bucket)
    wait_for(lambda: all(bucket_visible(n, creds) for n in nodes), timeout=timeout)
    return creds


def k2v_client(node: NodeProcess, creds: dict) -> K2VHttp:
    return K2VHttp(node.endpoint, creds["access_key"], creds["secret_key"])


def bucket_visible(node: NodeProcess, creds: dict) -> bool:
    """The key and bucket have reached this node (full-copy tables are written to n-1 nodes)."""
    r = k2v_client(node, creds).request("GET", f"/{creds['bucket']}", timeout=5)
    return r.status == 200


# ---- per-node view of local data -------------------------------------------------------------------


def local_keys(node: NodeProcess, table: str = "k2v_item") -> dict[bytes, bytes]:
    """Every (tree key, value) of ``table`` stored locally on ``node``.

    Reads the node's LMDB environment read-only from this process, so it also works while the
    node is stopped or cut off.
    """
    path = node.metadata_dir / "db.lmdb"
    env = lmdb.open(str(path), readonly=True, lock=True, max_dbs=128, max_readers=2048, readahead=False)
    try:
        with env.begin(buffers=False) as txn:
            try:
                db = env.open_db(f"{table}:data".encode(), txn=txn, create=False)
            except lmdb.NotFoundError:
                return {}
            out = dict(txn.cursor(db=db))
            if table == "k2v_item":  # canonical bytes, as the node itself reads them
                form = ItemStoredForm(_StoredBuckets(env, txn))
                out = {k: form.unpack(k, v) for k, v in out.items()}
            return out
    finally:
        env.close()


class _StoredBuckets:
    """A node's bucket numbers (``k2v_item:buckets``), read-only, for ``local_keys``."""

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        try:
            db = env.open_db(b"k2v_item:buckets", txn=txn, create=False)
        except lmdb.NotFoundError:
            self.by_number: dict[int, bytes] = {}
        else:
            self.by_number = {int.from_bytes(v, "big"): bytes(k) for k, v in txn.cursor(db=db)}

    def number_in(self, tx: object, bucket_id: bytes) -> int:
        raise NotImplementedError("read-only")

    def bucket_id(self, n: int) -> bytes:
        return self.by_number[n]


def describe_divergence(nodes: list[NodeProcess], table: str = "k2v_item") -> str:
    """For assertion messages: which nodes lack or differ on which keys."""
    views = [local_keys(n, table) for n in nodes]
    keys = set().union(*views)
    lines = []
    for k in sorted(keys)[:20]:
        vals = [v.get(k) for v in views]
        if any(x != vals[0] for x in vals):
            lines.append(
                f"{k[32:]!r}: " + ", ".join("-" if x is None else hashlib.sha256(x).hexdigest()[:8] for x in vals)
            )
    return json.dumps({"entries": [len(v) for v in views], "differing": lines}, indent=1)
