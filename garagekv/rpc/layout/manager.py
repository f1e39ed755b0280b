"""This node's copy of the cluster layout: persisted, merged from peers, changed by operators.

Every change (a merge from a peer, a staged role, an apply) is checked, normalized, written to
``metadata_dir/cluster_layout`` atomically and then announced to listeners (the system layer
broadcasts it; tables re-plan their partitions).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.history import LayoutHistory

log = logging.getLogger(__name__)

LAYOUT_FILE = "cluster_layout"


class LayoutManager:
    def __init__(self, node_id: bytes, metadata_dir: Path, replication_factor: int, consistency_mode: str) -> None:
        self.node_id = node_id
        self.path = Path(metadata_dir) / LAYOUT_FILE
        self.rf = replication_factor
        self.mode = consistency_mode
        self.listeners: list[Callable[[LayoutHistory], None]] = []
        self._inflight: dict[int, int] = {}  # layout version -> table writes in flight
        self.history = self._load()

    def _load(self) -> LayoutHistory:
        """The stored history. A file that cannot be read or decoded (cut short by a crash or a
        full disk) is reported and the node starts without a layout: it refuses K2V requests
        until gossip brings the cluster's (docs/operations.md §3). A replication factor that
        differs from the config's is an error: the cluster's cannot change."""
        if self.path.exists():
            try:
                h = LayoutHistory.decode(self.path.read_bytes())
            except Exception as e:  # noqa: BLE001 - a corrupt file is reported, not fatal
                log.error(
                    "cannot read the cluster layout in %s (%s); starting without one until another node sends it",
                    self.path,
                    e,
                )
                return LayoutHistory.new(self.rf)
            if h.replication_factor != self.rf:
                raise LayoutError(
                    f"the stored layout has replication factor {h.replication_factor} but the "
                    f"config says {self.rf}; a cluster's replication factor cannot change"
                )
            return h
        return LayoutHistory.new(self.rf)

    def _persist(self, history: LayoutHistory) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = history.encode()  # before opening the file: a history that cannot be encoded changes nothing
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # ---- write locks: when may this node acknowledge a new layout version? -------------------

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Held by every table write for its whole duration.

        The write's sets were computed from the current version; until every write started
        under an older version has finished, this node must not acknowledge a newer one (other
        nodes would stop sending that data to the old replicas too early).
        """
        v = self.history.current().version
        self._inflight[v] = self._inflight.get(v, 0) + 1
        try:
            yield
        finally:
            self._inflight[v] -= 1
            if not self._inflight[v]:
                del self._inflight[v]
                if v < self.history.current().version:
                    self.refresh_trackers()

    def ack_version(self, history: LayoutHistory | None = None) -> int:
        """The newest version this node can acknowledge (of ``history``, by default the one in
        use): the oldest one with writes in flight."""
        return min(self._inflight, default=(history or self.history).current().version)

    def _adopt(self, new: LayoutHistory) -> None:
        """Make ``new`` this node's history. It is on disk before it is in use: one that cannot
        be stored (or encoded) raises and leaves the node as it was, never ahead of its file."""
        new.update_local_trackers(self.node_id, self.ack_version(new))
        new.normalize(self.mode)
        self._persist(new)
        self.history = new
        for fn in list(self.listeners):
            try:
                fn(self.history)
            except Exception:  # noqa: BLE001 - a listener must not block layout propagation
                log.exception("layout listener failed")

    def merge_remote(self, remote: LayoutHistory) -> bool:
        """Merge a history received from a peer; invalid ones are refused and logged."""
        try:
            self.history.check_remote(remote, self.rf)
        except LayoutError as e:
            log.warning("%s", e.message)
            return False
        merged = self.history.clone()
        if not merged.merge(remote):
            return False
        self._adopt(merged)
        return True

    def replace(self, new: LayoutHistory) -> None:
        """Adopt a history computed locally by an operator command (stage, apply, revert)."""
        if new.current().version != self.history.current().version:
            new.check()  # a new version must be valid; staging alone leaves the versions as they were
        self._adopt(new)

    def mark_synced(self, version: int) -> bool:
        """Every table completed a full sync for ``version``: raise this node's sync tracker.

        Persisted and announced like any change; returns True if the tracker moved.
        """
        h = self.history.clone()
        if not h.mark_synced(self.node_id, version):
            return False
        self._adopt(h)
        return True

    def refresh_trackers(self) -> bool:
        """Raise this node's ack/sync trackers where it can; persist if anything moved."""
        h = self.history.clone()
        if h.update_local_trackers(self.node_id, self.ack_version()):
            self._adopt(h)
            return True
        return False
