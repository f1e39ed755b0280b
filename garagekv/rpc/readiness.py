"""Whether this node may serve K2V requests: it needs the cluster's layout, unless it runs alone.

A node without a usable layout (first start, or a lost or corrupt layout file) would otherwise
act as a one-node cluster and acknowledge writes with a quorum of one until gossip brought the
real layout: writes that the cluster's replicas never see. Only a node configured as a
single-node deployment (see ``Config.single_node_deployment``) that knows no other node serves
without one; it hands its data to the rightful owners once a layout is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from garagekv.rpc.layout.history import LayoutHistory
from garagekv.util.config import Config


def has_ring(h: LayoutHistory) -> bool:
    """A layout with storage nodes has been applied and can be routed on."""
    cur = h.current()
    return bool(cur.storage_nodes()) and cur.is_ready


class Readiness:
    """``refusal()``: why K2V requests must be refused now (None: serve them)."""

    def __init__(self, config: Config, history: Callable[[], LayoutHistory], peers: Collection[bytes]) -> None:
        self.alone_by_config = config.single_node_deployment
        self._history = history
        self._peers = peers
        self._checked: LayoutHistory | None = None
        self._ring = False

    def refusal(self) -> str | None:
        h = self._history()
        if h is not self._checked:  # a history is never changed once published: check it once
            self._checked, self._ring = h, has_ring(h)
        if self._ring:
            return None
        if self.alone_by_config and not self._peers:
            return None
        return (
            "this node has no cluster layout yet; it serves K2V once a layout that includes the "
            "cluster's storage nodes is applied (garagekv layout assign / apply) or has reached it"
        )
