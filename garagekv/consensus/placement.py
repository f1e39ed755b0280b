"""Which nodes take part in the consensus of a key: the partition's storage nodes per live version.

A round needs a majority of the partition's storage nodes in *every* live layout version (the
rule writes follow), so two rounds run under overlapping layout views always share an acceptor.
``LayoutPlacement`` reads this from the layout manager; tests supply their own ``Placement``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from garagekv.rpc.layout import LayoutHistory


class Placement(Protocol):
    """What a proposer and the GC need to know about where a key lives."""

    @property
    def node_id(self) -> bytes: ...

    def layout_version(self) -> int:
        """The newest live layout version this node knows (the ballots' first component)."""
        ...

    def write_sets(self, h32: bytes) -> list[list[bytes]]:
        """One node set per live layout version (a round needs a majority of each)."""
        ...

    def storage_nodes(self, h32: bytes) -> list[bytes]:
        """Every node storing the partition in some live version (the union of the sets)."""
        ...

    def write_lock(self) -> AbstractContextManager[None]:
        """Held for a whole round: the node must not acknowledge a newer layout version while a
        round that started under an older one is in flight (docs/consensus.md, layout changes)."""
        ...


class LayoutSource(Protocol):
    """The part of ``rpc.layout.manager.LayoutManager`` a placement reads."""

    node_id: bytes
    history: LayoutHistory

    def write_lock(self) -> AbstractContextManager[None]: ...


def majority(nodes: list[bytes]) -> int:
    return len(set(nodes)) // 2 + 1


class LayoutPlacement:
    """Placement from the cluster layout; before any layout exists the node is alone."""

    def __init__(self, layout: LayoutSource) -> None:
        self.layout = layout

    @property
    def node_id(self) -> bytes:
        return self.layout.node_id

    def _standalone(self) -> bool:
        cur = self.layout.history.current()
        return not cur.storage_nodes() or not cur.is_ready

    def layout_version(self) -> int:
        return self.layout.history.current().version

    def write_sets(self, h32: bytes) -> list[list[bytes]]:
        if self._standalone():
            return [[self.node_id]]
        return [s for s in self.layout.history.write_sets_of(h32) if s]

    def storage_nodes(self, h32: bytes) -> list[bytes]:
        if self._standalone():
            return [self.node_id]
        return self.layout.history.storage_nodes_of(h32)

    def write_lock(self) -> AbstractContextManager[None]:
        return self.layout.write_lock()
