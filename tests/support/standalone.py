"""A standalone node's model (no layout yet, so every table lives here) on real LMDB, no network.

``LoopbackTransport`` carries the node's consensus calls to itself (shared by the conditional and
poll reservation tests, ``tests/unit/test_k2v_conditional.py`` and ``test_k2v_poll_reservations.py``)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.model import Model
from garagekv.net.identity import node_number
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.rpc.layout import LayoutHistory
from garagekv.util import codec
from garagekv.util.config import parse_config

NODE_ID = bytes(range(32))
NODE = node_number(NODE_ID)


class StandaloneModel:
    """``node_id``, ``history`` and ``netapp`` make it one node of a cluster that the test plays
    (a layout naming other nodes, a fake network that answers for them)."""

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 64 << 20,
        fsync: bool = True,
        node_id: bytes = NODE_ID,
        history: LayoutHistory | None = None,
        netapp: Any = None,
        **config: Any,
    ) -> None:
        self.db = Database(path, map_size=map_size, fsync=fsync)
        self.writer = GroupCommitWriter(self.db)
        layout = SimpleNamespace(
            node_id=node_id,
            history=history or LayoutHistory.new(1),
            mode="consistent",
            write_lock=contextlib.nullcontext,
            listeners=[],
        )
        if netapp is None:
            netapp = SimpleNamespace(on_connect=[])  # standalone: nothing is ever sent
        self.registry = EndpointRegistry()  # the node's endpoints, to serve them over a real NetApp
        system = SimpleNamespace(
            layout=layout,
            netapp=netapp,
            registry=self.registry,
            node_id=node_id,
            is_up=lambda n: True,
            rtt_of=lambda n: None,
        )
        cfg = parse_config({"metadata_dir": str(path), "s3_api": {"s3_region": "garage"}, **config})
        self.model = Model(cfg, self.db, self.writer, system)

    def close(self) -> None:
        self.writer.close()
        self.db.close()


class LoopbackTransport:
    """A standalone node's calls to itself, through its registry and the wire encoding."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    async def call(self, node: bytes, path: str, body: Any, timeout: float | None = None) -> Any:
        reply = await self.registry.dispatch(node, path, codec.decode(codec.encode(body)))
        return codec.decode(codec.encode(reply))

    def last_heard(self, node: bytes) -> float:
        return time.monotonic()  # itself: always there
