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


class _RingView:
    """What one layout history says about each partition, worked out once per history.

    The layout manager never changes a history it has published: every change (a merged
    remote layout, tracker moves) swaps in a new object, so the view is valid for as long as
    ``layout.history`` is the same object. Partitions are filled in on first use.
    """

    __slots__ = ("history", "standalone", "rf", "_storage", "_read", "_write")

    def __init__(self, h: LayoutHistory) -> None:
        self.history = h
        self.standalone = _standalone(h)
        self.rf = h.replication_factor
        self._storage: dict[int, list[bytes]] = {}
        self._read: dict[int, list[bytes]] = {}
        self._write: dict[int, list[list[bytes]]] = {}

    def storage_nodes(self, h32: bytes) -> list[bytes]:
        p = h32[0]
        nodes = self._storage.get(p)
        if nodes is None:
            nodes = self._storage[p] = self.history.storage_nodes_of(h32)
        return nodes

    def read_nodes(self, h32: bytes) -> list[bytes]:
        p = h32[0]
        nodes = self._read.get(p)
        if nodes is None:
            nodes = self._read[p] = self.history.read_nodes_of(h32)
        return nodes

    def write_sets(self, h32: bytes) -> list[list[bytes]]:
        p = h32[0]
        sets = self._write.get(p)
        if sets is None:
            sets = self._write[p] = [s for s in self.history.write_sets_of(h32) if s]
        return sets


class ShardedReplication:
    """rf copies per partition; writes need a quorum in every live layout version's set.

    The node lists returned are shared: callers must not modify them.
    """

    def __init__(self, layout: LayoutSource) -> None:
        self.layout = layout
        self._view: _RingView | None = None

    @property
    def node_id(self) -> bytes:
        return self.layout.node_id

    def _ring(self) -> _RingView:
        view = self._view
        if view is None or view.history is not self.layout.history:
            view = self._view = _RingView(self.layout.history)
        return view

    def storage_nodes(self, h32: bytes) -> list[bytes]:
        view = self._ring()
        return [self.node_id] if view.standalone else view.storage_nodes(h32)

    def read_nodes(self, h32: bytes) -> list[bytes]:
        view = self._ring()
        return [self.node_id] if view.standalone else view.read_nodes(h32)

    def read_quorum(self) -> int:
        view = self._ring()
        return 1 if view.standalone else read_quorum(view.rf, self.layout.mode)

    def write_sets(self, h32: bytes) -> list[list[bytes]]:
        view = self._ring()
        return [[self.node_id]] if view.standalone else view.write_sets(h32)

    def write_quorum(self) -> int:
        view = self._ring()
        return 1 if view.standalone else write_quorum(view.rf, self.layout.mode)

    def sync_partitions(self) -> list[SyncPartition]:
        out = []
        for p in range(NB_PARTITIONS):
            first = bytes([p]) + b"\x00" * 31
            last = bytes([p + 1]) + b"\x00" * 31 if p + 1 < NB_PARTITIONS else None
            out.append(SyncPartition(p, first, last, list(self.storage_nodes(first))))
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
