"""Operator commands over the cluster RPC: the endpoint a node serves and the CLI's client.

The CLI dials the node with a throwaway identity, proving knowledge of ``rpc_secret`` like any
peer, and never joins the peer list. It needs the node's id: read from ``node_key.pub`` in the
config's ``metadata_dir``, or given as ``-h <id>@<host:port>`` for a remote node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from garagekv.net.identity import parse_node_id
from garagekv.net.netapp import NetApp
from garagekv.rpc.endpoint import endpoint_path
from garagekv.util.config import Config, split_host_port
from garagekv.util.errors import ConfigError, GarageKVError, ServiceUnavailable

ADMIN_ENDPOINT = endpoint_path("admin", "op")


def local_target(config: Config) -> tuple[bytes, tuple[str, int]]:
    """The node id and RPC address of the node this config describes.

    For a host running several workers that is worker 0 (``metadata_dir/worker-0``, on the
    configured RPC port): any worker answers for the cluster.
    """
    pub = Path(config.metadata_dir) / "node_key.pub"
    worker0 = Path(config.metadata_dir) / "worker-0" / "node_key.pub"
    if (config.workers > 1 or not pub.exists()) and worker0.exists():
        pub = worker0
    try:
        node_id = pub.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the node id from {pub} ({e.strerror}): has this node been started?")
    host, port = split_host_port(config.rpc_public_addr or config.rpc_bind_addr)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return node_id, (host, port)


def parse_target(spec: str) -> tuple[bytes, tuple[str, int]]:
    node_hex, sep, addr = spec.partition("@")
    try:
        if not sep:
            raise ValueError("expected <node id>@<host>:<port>")
        return parse_node_id(node_hex), split_host_port(addr)
    except ValueError as e:
        raise ConfigError(f"invalid --rpc-host '{spec}': {e}")


class AdminClient:
    """``async with AdminClient(secret, node_id, addr) as c: await c.call("key.list")``."""

    def __init__(self, rpc_secret: bytes, node_id: bytes, addr: tuple[str, int], timeout: float = 60.0) -> None:
        self.netapp = NetApp.client_only(rpc_secret, default_timeout=timeout)
        self.node_id = node_id
        self.addr = addr

    async def __aenter__(self) -> AdminClient:
        try:
            await self.netapp.connect(self.node_id, self.addr)
        except GarageKVError as e:
            await self.netapp.close()
            host, port = self.addr
            raise ServiceUnavailable(f"cannot reach the garagekv node at {host}:{port}: is it running? ({e.message})")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.netapp.close()

    async def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return await self.netapp.call(self.node_id, ADMIN_ENDPOINT, {"op": op, "args": args or {}})


async def admin_call(
    config: Config, op: str, args: dict[str, Any] | None = None, rpc_host: str | None = None, timeout: float = 60.0
) -> Any:
    """One operation on the node of ``config`` (or on ``rpc_host``)."""
    secret = config.rpc_secret_bytes
    if secret is None:
        raise ConfigError("rpc_secret is not set: the CLI needs it to talk to the node")
    node_id, addr = parse_target(rpc_host) if rpc_host else local_target(config)
    async with AdminClient(secret, node_id, addr, timeout) as c:
        return await c.call(op, args)
