"""The membership layer's messages: a node's status (sent with every ping and its answer) and
the peer list, each checked once on receipt.

A status that does not check out is dropped whole (the peer stays up; the next ping brings a
good one): a peer that sends a wrong shape must not make this node learn half of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from garagekv.rpc.layout import HOST_ID_LEN, LayoutDigest
from garagekv.rpc.messages import as_bytes, as_int, as_opt_int, malformed
from garagekv.util.errors import GarageKVError

_STATUS = "node status"
_PEERS = "peer list"
MAX_PEERS = 100_000  # far more nodes than a cluster has; an answer beyond it is refused whole


@dataclass(frozen=True)
class NodeStatus:
    """``{"hostname", "addr", "layout", "meta_free", "peers_hash"}``: who a node is, where it listens,
    which layout it has (digest) and a hash of the peers it knows (a mismatch triggers a pull).

    A worker of a host running several also sends ``"host"`` (its host id, 32 bytes) and
    ``"worker"`` (its index on the host); other nodes leave both out, and a receiver that does
    not know them ignores them.
    """

    hostname: str
    addr: str
    layout: LayoutDigest
    meta_free: int
    peers_hash: bytes
    host: bytes | None = None
    worker: int | None = None

    def to_wire(self) -> dict[str, Any]:
        w = {
            "hostname": self.hostname,
            "addr": self.addr,
            "layout": self.layout.to_wire(),
            "meta_free": self.meta_free,
            "peers_hash": self.peers_hash,
        }
        if self.host is not None:
            w["host"] = self.host
            w["worker"] = self.worker
        return w

    @classmethod
    def from_wire(cls, w: Any) -> NodeStatus:
        if not isinstance(w, dict):
            raise malformed(_STATUS, "expected a map")
        hostname, addr = w.get("hostname"), w.get("addr")
        if not isinstance(hostname, str) or not isinstance(addr, str):
            raise malformed(_STATUS, "hostname and addr must be strings")
        try:
            layout = LayoutDigest.from_wire(w.get("layout"))
        except GarageKVError as e:
            raise malformed(_STATUS, f"layout digest: {e}")
        meta_free = as_int(_STATUS, "meta_free", w.get("meta_free"), 0)
        host = w.get("host")
        if host is not None and (not isinstance(host, bytes) or len(host) != HOST_ID_LEN):
            raise malformed(_STATUS, f"host must be {HOST_ID_LEN} bytes")
        worker = as_opt_int(_STATUS, "worker", w.get("worker"), 0)
        peers_hash = as_bytes(_STATUS, "peers_hash", w.get("peers_hash"))
        return cls(hostname, addr, layout, meta_free, peers_hash, host, worker if host is not None else None)


def peers_to_wire(peers: list[tuple[bytes, str]]) -> list[list[Any]]:
    return [[node, addr] for node, addr in peers]


def peers_from_wire(w: Any) -> list[tuple[bytes, str]]:
    """``[[node id, "host:port"], ...]``: the peers a node passes on."""
    if not isinstance(w, list | tuple) or len(w) > MAX_PEERS:
        raise malformed(_PEERS, f"expected an array of at most {MAX_PEERS} peers")
    out = []
    for entry in w:
        if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[1], str)):
            raise malformed(_PEERS, "each peer must be [node id, address]")
        out.append((as_bytes(_PEERS, "node id", entry[0], max_len=32), entry[1]))
    return out
