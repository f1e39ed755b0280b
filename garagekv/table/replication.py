"""Where a table's entries live: which nodes store, answer reads and must acknowledge writes.

Two strategies, as in Garage: sharded by the ring (K2V items, index counters) and full copy on
every node of the layout (keys, buckets, aliases). Before any layout has been applied the node
is standalone: every table lives on this node alone, so a fresh single node works out of the
box; once a layout exists, anti-entropy hands such data to its rightful owners.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from garagekv.rpc.layout import NB_PARTITIONS, LayoutHistory, read_quorum, write_quorum


class LayoutSource(Protocol):
    """What a replication strategy needs from the layout manager."""

    node_id: bytes
    history: LayoutHistory
    mode: str

    def write_lock(self) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class SyncPartition:
    partition: int
    first_hash: bytes  # inclusive
    last_hash: bytes | None  # exclusive (None: end of the keyspace)
    storage_nodes: list[bytes]


def _standalone(h: LayoutHistory) -> bool:
    return not h.current().storage_nodes() or not h.current().is_ready


class ShardedReplication:
    """rf copies per partition; writes need a quorum in every live layout version's set."""

    def __init__(self, layout: LayoutSource) -> None:
        self.layout = layout

    @property
    def node_id(self) -> bytes:
        return self.layout.node_id

    def _rf(self) -> int:
        return self.layout.history.replication_factor

    def storage_nodes(self, h32: bytes) -> list[bytes]:
        h = self.layout.history
        if _standalone(h):
            return [self.node_id]
        return h.storage_nodes_of(h32)

    def read_nodes(self, h32: bytes) -> list[bytes]:
        h = self.layout.history
        if _standalone(h):
            return [self.node_id]
        return h.read_nodes_of(h32)

    def read_quorum(self) -> int:
        if _standalone(self.layout.history):
            return 1
        return read_quorum(self._rf(), self.layout.mode)

    def write_sets(self, h32: bytes) -> list[list[bytes]]:
        h = self.layout.history
        if _standalone(h):
            return [[self.node_id]]
        return [s for s in h.write_sets_of(h32) if s]

    def write_quorum(self) -> int:
        if _standalone(self.layout.history):
            return 1
        return write_quorum(self._rf(), self.layout.mode)

    def sync_partitions(self) -> list[SyncPartition]:
        out = []
        for p in range(NB_PARTITIONS):
            first = bytes([p]) + b"\x00" * 31
            last = bytes([p + 1]) + b"\x00" * 31 if p + 1 < NB_PARTITIONS else None
            out.append(SyncPartition(p, first, last, self.storage_nodes(first)))
        return out


class FullReplication:
    """A copy on every node of the current layout; reads are local, writes need all but one."""

    def __init__(self, layout: LayoutSource) -> None:
        self.layout = layout

    @property
    def node_id(self) -> bytes:
        return self.layout.node_id

    def _nodes(self) -> list[bytes]:
        h = self.layout.history
        if _standalone(h):
            return [self.node_id]
        nodes = list(h.current().node_id_vec)
        if self.node_id not in nodes:
            nodes.append(self.node_id)  # a node outside the layout still keeps its own copy
        return sorted(nodes)

    def storage_nodes(self, h32: bytes) -> list[bytes]:
        return self._nodes()

    def read_nodes(self, h32: bytes) -> list[bytes]:
        return [self.node_id]

    def read_quorum(self) -> int:
        return 1

    def write_sets(self, h32: bytes) -> list[list[bytes]]:
        return [self._nodes()]

    def write_quorum(self) -> int:
        n = len(self._nodes())
        return n - 1 if n > 1 else 1

    def sync_partitions(self) -> list[SyncPartition]:
        return [SyncPartition(0, b"\x00" * 32, None, self._nodes())]
