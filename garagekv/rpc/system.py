"""Cluster membership: peering, failure detection, status gossip and layout convergence.

Every node keeps a connection to every other node it knows (a full mesh). Each ping carries this
node's status (address, layout digest, free space, peer-list hash) and the answer carries the
peer's, so one message per peer per interval does failure detection, address discovery and
gossip. A differing layout digest triggers a pull of the peer's layout; a differing peer-list
hash a pull of its peer list. Known peers are persisted so a restarted cluster re-forms even if
its bootstrap addresses changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from garagekv.net.conn import Connection
from garagekv.net.identity import NodeKey, parse_node_id
from garagekv.net.netapp import NetApp
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.layout.history import LayoutHistory
from garagekv.rpc.layout.manager import LayoutManager
from garagekv.rpc.messages import MalformedMessage
from garagekv.rpc.readiness import Readiness
from garagekv.rpc.system_messages import NodeStatus, peers_from_wire, peers_to_wire
from garagekv.util import codec
from garagekv.util.config import Config, split_host_port
from garagekv.util.errors import BadRequest, GarageKVError

log = logging.getLogger(__name__)

PEER_LIST_FILE = "peer_list"
MAX_FAILED_PINGS = 4
RECONNECT_MIN = 0.5
RECONNECT_MAX = 60.0

FORGET_AFTER_PINGS = 10
FORGET_AFTER_MIN = 2.0

EP_PING = endpoint_path("system", "ping")
EP_LAYOUT_PULL = endpoint_path("system", "layout_pull")
EP_LAYOUT_PUSH = endpoint_path("system", "layout_push")
EP_PEERS = endpoint_path("system", "peers")


@dataclass
class PeerInfo:
    """What this node knows about another node."""

    node_id: bytes
    addr: str | None = None
    hostname: str = ""
    status: NodeStatus | None = None
    rtt_ms: float | None = None
    failed_pings: int = 0
    last_seen: float = 0.0
    next_dial: float = 0.0
    backoff: float = RECONNECT_MIN
    # Since when it has been unreachable (monotonic clock); None while connected.
    down_since: float | None = field(default_factory=time.monotonic)


def parse_peer(spec: str) -> tuple[bytes, str]:
    node_hex, sep, addr = spec.partition("@")
    if not sep:
        raise BadRequest(f"invalid peer '{spec}': expected <node id>@<host>:<port>")
    try:
        node_id = parse_node_id(node_hex)
        split_host_port(addr)
    except ValueError as e:
        raise BadRequest(f"invalid peer '{spec}': {e}")
    return node_id, addr


class System:
    def __init__(self, config: Config, key: NodeKey, registry: EndpointRegistry, meta_free: Any = None) -> None:
        self.config = config
        self.key = key
        self.node_id = key.node_id
        self.registry = registry
        self.meta_free = meta_free or (lambda: 0)
        secret = config.rpc_secret_bytes
        if secret is None:  # the server refuses such a config at start, with the config error
            raise ValueError("rpc_secret is not set")
        self.netapp = NetApp(key, secret, registry.dispatch, default_timeout=config.rpc_timeout_msec / 1000)
        self.public_addr = config.rpc_public_addr or config.rpc_bind_addr
        self.hostname = socket.gethostname()
        # Set when this node is one worker of a host running several (``workers = N``).
        self.host_id = config.host_id
        self.worker_index = config.worker_index
        self.layout = LayoutManager(
            self.node_id, config.metadata_dir, config.replication_factor, config.consistency_mode
        )
        self.peers: dict[bytes, PeerInfo] = {}
        self.readiness = Readiness(config, lambda: self.layout.history, self.peers)
        self._peer_file = Path(config.metadata_dir) / PEER_LIST_FILE
        self._tasks: list[asyncio.Task[None]] = []
        self._pulls: set[asyncio.Task[None]] = set()
        self.ping_interval = config.rpc_ping_interval_msec / 1000
        self.ping_timeout = config.rpc_ping_timeout_msec / 1000
        self.layout.listeners.append(self._on_layout_change)
        registry.register(EP_PING, self._handle_ping)
        registry.register(EP_LAYOUT_PULL, self._handle_layout_pull)
        registry.register(EP_LAYOUT_PUSH, self._handle_layout_push)
        registry.register(EP_PEERS, self._handle_peers)
        self.netapp.on_connect.append(self._on_connect)
        self.netapp.on_disconnect.append(self._on_disconnect)
        # A peer without a role in any live layout version (nor a staged one), unreachable this
        # long, is forgotten: a node removed from the layout does not stay DOWN in `status`.
        self.forget_after = max(FORGET_AFTER_MIN, FORGET_AFTER_PINGS * self.ping_interval)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_host_port(self.config.rpc_bind_addr)
        await self.netapp.listen(host, port)
        for spec in self.config.bootstrap_peers:
            node_id, addr = parse_peer(spec)
            self._learn(node_id, addr, persist=False)
        for node_id, addr in self._load_peer_list():
            self._learn(node_id, addr, persist=False)
        self._tasks = [
            asyncio.create_task(self._dial_loop(), name="peering"),
            asyncio.create_task(self._ping_loop(), name="ping"),
        ]

    async def stop(self) -> None:
        for t in [*self._tasks, *self._pulls]:
            t.cancel()
        for t in [*self._tasks, *self._pulls]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.netapp.close()

    # ---- peers ---------------------------------------------------------------------------------

    def _learn(self, node_id: bytes, addr: str | None, persist: bool = True) -> None:
        if node_id == self.node_id:
            return
        info = self.peers.get(node_id)
        if info is None:
            info = self.peers[node_id] = PeerInfo(node_id)
        if addr and addr != info.addr:
            info.addr = addr
            info.next_dial = 0.0
            if persist:
                self._save_peer_list()

    def _load_peer_list(self) -> list[tuple[bytes, str]]:
        try:
            raw = codec.decode(self._peer_file.read_bytes())
            return [(bytes(n), str(a)) for n, a in raw]
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001 - a corrupt peer list is rebuilt from gossip
            log.warning("ignoring unreadable peer list %s: %s", self._peer_file, e)
            return []

    def _save_peer_list(self) -> None:
        entries = sorted([p.node_id, p.addr] for p in self.peers.values() if p.addr)
        tmp = self._peer_file.with_suffix(".tmp")
        tmp.write_bytes(codec.encode(entries))
        os.replace(tmp, self._peer_file)

    def _shared_peers(self) -> list[PeerInfo]:
        """The peers told to others: those in the layout and those up right now. A down node
        without a role is not passed on, so once every node forgot it, none teaches it back."""
        in_layout = self._in_layout()
        return [p for p in self.peers.values() if p.node_id in in_layout or p.down_since is None]

    def peers_hash(self) -> bytes:
        known = sorted([p.node_id, p.addr or ""] for p in self._shared_peers())
        return codec.blake2sum(codec.encode([[self.node_id, self.public_addr], *known]))

    def is_up(self, node_id: bytes) -> bool:
        if node_id == self.node_id:
            return True
        info = self.peers.get(node_id)
        return self.netapp.is_connected(node_id) and info is not None and info.failed_pings <= MAX_FAILED_PINGS

    def up_nodes(self) -> set[bytes]:
        return {self.node_id} | {n for n in self.peers if self.is_up(n)}

    def host_of(self, node_id: bytes) -> tuple[bytes | None, int | None]:
        """``(host id, worker index)`` of a node as it announces itself (this node's own, or a
        peer's last status); ``(None, None)`` for a node that is a host by itself or not heard of."""
        if node_id == self.node_id:
            return self.host_id, self.worker_index if self.host_id is not None else None
        info = self.peers.get(node_id)
        if info is None or info.status is None:
            return None, None
        return info.status.host, info.status.worker

    def rtt_of(self, node_id: bytes) -> float | None:
        info = self.peers.get(node_id)
        return None if info is None or info.rtt_ms is None else info.rtt_ms / 1000

    async def connect(self, node_id: bytes, addr: str) -> None:
        """Dial a peer now (``garagekv node connect``); raises if it cannot be reached."""
        host, port = split_host_port(addr)
        await self.netapp.connect(node_id, (host, port))
        self._learn(node_id, addr)
        await self._ping(node_id)

    async def _dial_loop(self) -> None:
        while True:
            now = time.monotonic()
            for info in list(self.peers.values()):
                if info.addr and not self.netapp.is_connected(info.node_id) and now >= info.next_dial:
                    info.next_dial = now + info.backoff
                    info.backoff = min(info.backoff * 2, RECONNECT_MAX)
                    asyncio.create_task(self._try_dial(info))
            await asyncio.sleep(min(RECONNECT_MIN, self.ping_interval))

    async def _try_dial(self, info: PeerInfo) -> None:
        if not info.addr:  # only peers with a known address are dialled
            return
        try:
            host, port = split_host_port(info.addr)
            await self.netapp.connect(info.node_id, (host, port))
        except Exception as e:  # noqa: BLE001 - peers come and go; retried with backoff
            log.debug("cannot connect to %s at %s: %s", info.node_id.hex()[:16], info.addr, e)

    def _on_connect(self, conn: Connection) -> None:
        # Unknown dialers (the CLI's throwaway identities) are not peers; a real node announces
        # itself with a ping right after connecting, which adds it in _on_status.
        info = self.peers.get(conn.peer_id)
        if info is None:
            return
        if info.down_since is not None:
            log.info("connected to node %s at %s", conn.peer_id.hex()[:16], info.addr)
        info.backoff = RECONNECT_MIN
        info.failed_pings = 0
        info.down_since = None
        self._spawn(self._ping(conn.peer_id))

    def _on_disconnect(self, conn: Connection) -> None:
        info = self.peers.get(conn.peer_id)
        if info is not None and info.down_since is None:
            info.down_since = time.monotonic()

    def _in_layout(self) -> set[bytes]:
        """Nodes with a role in a live layout version, or a staged one."""
        h = self.layout.history
        return set(h.all_nodes()) | set(h.planned_roles())

    def forget(self, node_id: bytes) -> None:
        """Drop a peer from the peer list (``garagekv node forget``, or once removed and down)."""
        if self.peers.pop(node_id, None) is not None:
            self._save_peer_list()

    def _forget_removed_nodes(self) -> None:
        if self.layout.history.current().version == 0:
            return  # a cluster being formed keeps every peer it was told about
        now = time.monotonic()
        in_layout = self._in_layout()
        for info in list(self.peers.values()):
            down = info.down_since
            if info.node_id in in_layout or down is None or now - down < self.forget_after:
                continue
            if self.netapp.is_connected(info.node_id):
                continue
            log.info(
                "forgetting node %s: it has no role in the layout and has been unreachable for %.0fs",
                info.node_id.hex()[:16],
                now - down,
            )
            self.forget(info.node_id)

    # ---- ping + status gossip --------------------------------------------------------------------

    def local_status(self) -> dict[str, Any]:
        digest = self.layout.history.digest()
        return NodeStatus(
            self.hostname,
            self.public_addr,
            digest,
            self.meta_free(),
            self.peers_hash(),
            self.host_id,
            self.worker_index if self.host_id is not None else None,
        ).to_wire()

    async def _ping_loop(self) -> None:
        while True:
            for node_id in self.netapp.connected_peers():
                self._spawn(self._ping(node_id))
            self._forget_removed_nodes()
            await asyncio.sleep(self.ping_interval * random.uniform(0.9, 1.1))

    async def _ping(self, node_id: bytes) -> None:
        info = self.peers.get(node_id)
        if info is None:
            return
        start = time.monotonic()
        try:
            status = await self.netapp.call(node_id, EP_PING, self.local_status(), timeout=self.ping_timeout)
        except GarageKVError as e:
            info.failed_pings += 1
            log.debug("ping to %s failed (%d in a row): %s", node_id.hex()[:16], info.failed_pings, e)
            if info.failed_pings > MAX_FAILED_PINGS:
                conn = self.netapp.connection(node_id)
                if conn is not None:
                    log.warning("peer %s is down after %d missed pings", node_id.hex()[:16], info.failed_pings)
                    conn.close("too many missed pings")
            return
        rtt = (time.monotonic() - start) * 1000
        info.rtt_ms = rtt if info.rtt_ms is None else 0.8 * info.rtt_ms + 0.2 * rtt
        info.failed_pings = 0
        self._on_status(node_id, status)

    async def _handle_ping(self, from_node: bytes, status: Any) -> dict[str, Any]:
        self._on_status(from_node, status)
        return self.local_status()

    def _on_status(self, node_id: bytes, wire: Any) -> None:
        try:
            status = NodeStatus.from_wire(wire)
        except MalformedMessage as e:
            log.debug("ignoring a malformed status from %s: %s", node_id.hex()[:16], e)
            return
        info = self.peers.get(node_id) or self.peers.setdefault(node_id, PeerInfo(node_id))
        if self.netapp.is_connected(node_id):
            info.down_since = None
        info.status = status
        info.hostname = status.hostname
        info.last_seen = time.time()
        self._learn(node_id, status.addr)
        if self.layout.history.digest().pull_needed(status.layout):
            self._spawn(self._pull_layout(node_id))
        if status.peers_hash != self.peers_hash():
            self._spawn(self._pull_peers(node_id))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.create_task(coro)
        self._pulls.add(t)
        t.add_done_callback(self._pulls.discard)

    # ---- layout propagation ------------------------------------------------------------------------

    async def _pull_layout(self, node_id: bytes) -> None:
        try:
            wire = await self.netapp.call(node_id, EP_LAYOUT_PULL, None, timeout=self.ping_timeout)
            self.layout.merge_remote(LayoutHistory.from_wire(wire))
        except Exception as e:  # noqa: BLE001 - a bad layout from a peer is refused, never fatal
            log.warning("layout pull from %s failed: %s", node_id.hex()[:16], e)

    async def _handle_layout_pull(self, from_node: bytes, body: Any) -> Any:
        return self.layout.history.to_wire()

    async def _handle_layout_push(self, from_node: bytes, body: Any) -> Any:
        try:
            remote = LayoutHistory.from_wire(body)
        except Exception as e:  # noqa: BLE001 - refused and logged
            log.warning("refusing malformed layout from %s: %s", from_node.hex()[:16], e)
            return False
        return self.layout.merge_remote(remote)

    def _on_layout_change(self, history: LayoutHistory) -> None:
        """Push a changed layout to every connected peer at once (they would pull it anyway)."""
        wire = history.to_wire()
        for node_id in self.netapp.connected_peers():
            self._spawn(self._push_layout(node_id, wire))

    async def _push_layout(self, node_id: bytes, wire: Any) -> None:
        try:
            await self.netapp.call(node_id, EP_LAYOUT_PUSH, wire, timeout=self.ping_timeout)
        except GarageKVError as e:
            log.debug("layout push to %s failed: %s", node_id.hex()[:16], e)

    async def _pull_peers(self, node_id: bytes) -> None:
        try:
            peers = peers_from_wire(await self.netapp.call(node_id, EP_PEERS, None, timeout=self.ping_timeout))
            for nid, addr in peers:
                self._learn(nid, addr)
        except Exception as e:  # noqa: BLE001 - retried at the next status exchange
            log.debug("peer list pull from %s failed: %s", node_id.hex()[:16], e)

    async def _handle_peers(self, from_node: bytes, body: Any) -> list[list[Any]]:
        shared = [(p.node_id, p.addr) for p in self._shared_peers() if p.addr]
        return peers_to_wire([(self.node_id, self.public_addr), *shared])
