"""In-process table fakes shared by the table unit tests.

``Lww``/``LwwSchema``: a last-writer-wins entry whose empty value is a tombstone (first written for
the GC tests, ``tests/unit/test_gc.py``); ``IDS``, ``Rep``, ``Net``: three replicas that store
everything, over a fake network that logs each call (``test_table_batching.py``); ``FakeHistory``,
``FakeLayout``: the layout a ``TableSyncer`` needs (``test_sync.py``). Also used by the range read
and RPC error tests (``test_table_range.py``, ``test_table_rpc_errors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from garagekv.table.schema import BaseSchema


@dataclass
class Lww:
    """A last-writer-wins register; an empty value is a tombstone."""

    key: bytes
    ts: int
    value: bytes

    def tree_key(self) -> bytes:
        return self.key

    def encode(self) -> bytes:
        return self.ts.to_bytes(8, "big") + len(self.key).to_bytes(2, "big") + self.key + self.value

    def merge(self, other: Lww) -> None:
        if (other.ts, other.value) > (self.ts, self.value):
            self.ts, self.value = other.ts, other.value

    def is_tombstone(self) -> bool:
        return self.value == b""


class LwwSchema(BaseSchema):
    name = "lww"

    def __init__(self) -> None:
        self.updates: list[tuple[Any, Any]] = []

    def decode(self, data: bytes) -> Lww:
        n = int.from_bytes(data[8:10], "big")
        return Lww(data[10 : 10 + n], int.from_bytes(data[:8], "big"), data[10 + n :])

    def updated(self, tx, old, new) -> None:
        self.updates.append((old and old.value, None if new is None else new.value))


IDS = [bytes([i]) * 32 for i in (1, 2, 3)]


class Rep:
    """Every node stores everything; quorums of 2."""

    def __init__(self, node_id: bytes) -> None:
        self.node_id = node_id
        self.layout = SimpleNamespace(write_lock=contextlib.nullcontext)

    def read_nodes(self, h32: bytes) -> list[bytes]:
        return list(IDS)

    def write_sets(self, h32: bytes) -> list[list[bytes]]:
        return [list(IDS)]

    def read_quorum(self) -> int:
        return 2

    def write_quorum(self) -> int:
        return 2


class Net:
    """Delivers calls to the other nodes' registries and records (node, request kind, size)."""

    def __init__(self, nodes: dict[bytes, Any], log: list) -> None:
        self.nodes, self.log = nodes, log

    async def call(self, node: bytes, path: str, msg: Any, timeout: float | None = None) -> Any:
        self.log.append((node, msg[0], len(msg[1])))
        await asyncio.sleep(0)
        return await self.nodes[node].registry.dispatch(b"peer", path, msg)


class FakeVersion:
    def __init__(self, version: int) -> None:
        self.version = version


class FakeHistory:
    def __init__(self, nodes: list[bytes], version: int = 1, ack: int = 1, min_stored: int = 1) -> None:
        self.nodes, self.version, self.ack, self.lo = nodes, version, ack, min_stored

    def current(self) -> FakeVersion:
        return FakeVersion(self.version)

    def ack_map_min(self) -> int:
        return self.ack

    def min_stored(self) -> int:
        return self.lo

    def all_nodes(self) -> list[bytes]:
        return self.nodes


class FakeLayout:
    def __init__(self, history: FakeHistory) -> None:
        self.history = history
        self.listeners: list = []
        self.synced: list[int] = []

    def mark_synced(self, version: int) -> bool:
        if self.synced and self.synced[-1] >= version:
            return False
        self.synced.append(version)
        return True

    def changed(self) -> None:
        for fn in self.listeners:
            fn(self.history)
