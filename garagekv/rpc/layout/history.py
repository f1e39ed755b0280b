"""Layout history: the live versions, the update trackers and the staging area, as one CRDT-ish value.

During a migration several versions are live: writes must reach a quorum in every live version's
node set, reads use the oldest version whose data every relevant node has synced, and the
ack/sync/sync_ack trackers (merged by max) decide when old versions retire. Nodes converge by
gossiping a ``digest()`` and merging whole histories (``merge``).

Everything here is pure and synchronous; the caller persists the result and runs the (rare)
assignment computation of ``apply_staged_changes``/``preview_staged_changes`` in a thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from garagekv.rpc.layout.assignment import NB_PARTITIONS
from garagekv.rpc.layout.compute import calculate_next
from garagekv.rpc.layout.consistency import ConsistencyMode, write_quorum
from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.parameters import LayoutParameters, ZoneRedundancy, validate_zone_redundancy
from garagekv.rpc.layout.roles import NodeRole
from garagekv.rpc.layout.staging import LayoutStaging
from garagekv.rpc.layout.trackers import UpdateTrackers
from garagekv.rpc.layout.version import LayoutVersion
from garagekv.util import codec
from garagekv.util.crdt import Lww
from garagekv.util.time import increment_logical_clock

log = logging.getLogger(__name__)

#: Retired versions kept after they stop being live (Garage keeps 5; informational for K2V).
OLD_VERSION_COUNT = 5
#: First byte of ``LayoutHistory.encode()``, so the persisted format can migrate.
FORMAT_VERSION = 1

_MISSING_VERSION = (
    "Please pass the new layout version number to ensure that you are writing the correct version "
    "of the cluster layout.\nTo know the correct value of the new layout version, invoke "
    "`garagekv layout show` and review the proposed changes."
)


@dataclass(frozen=True)
class LayoutDigest:
    """What status gossip carries so peers can tell whether to pull our layout."""

    current_version: int
    active_versions: int
    trackers_hash: bytes
    staging_hash: bytes

    def pull_needed(self, remote: LayoutDigest) -> Literal["full", "trackers"] | None:
        """Given ``self`` = local digest: pull the whole history, just the trackers, or nothing."""
        if (
            remote.current_version > self.current_version
            or remote.active_versions != self.active_versions
            or remote.staging_hash != self.staging_hash
        ):
            return "full"
        if remote.trackers_hash != self.trackers_hash:
            return "trackers"
        return None

    def to_wire(self) -> list[Any]:
        return [self.current_version, self.active_versions, self.trackers_hash, self.staging_hash]

    @classmethod
    def from_wire(cls, w: Any) -> LayoutDigest:
        try:
            return cls(int(w[0]), int(w[1]), bytes(w[2]), bytes(w[3]))
        except (TypeError, ValueError, IndexError) as e:
            raise LayoutError(f"Malformed layout digest: {e!r}")


def check_next_version(current: int, version: int) -> None:
    """``apply``/``revert --version`` must name the next version: say which one when it does not."""
    if version != current + 1:
        raise LayoutError(
            f"Invalid new layout version {version}: the current version is {current}, "
            f"so the next one is {current + 1} (--version {current + 1})"
        )


@dataclass
class LayoutHistory:
    versions: list[LayoutVersion]  # live versions, consecutive numbers, oldest first
    old_versions: list[LayoutVersion] = field(default_factory=list)
    update_trackers: UpdateTrackers = field(default_factory=UpdateTrackers)
    staging: LayoutStaging = field(default_factory=LayoutStaging)

    @classmethod
    def new(cls, replication_factor: int) -> LayoutHistory:
        """A fresh node's history: version 0 (no ring), empty trackers and staging.

        Timestamps are all 0 (Garage uses the clock for the staged parameters), so fresh nodes
        have identical digests and do not pull each other's empty layouts.
        """
        return cls([LayoutVersion.initial(replication_factor)])

    def clone(self) -> LayoutHistory:
        return LayoutHistory.from_wire(self.to_wire())

    # ------------------------------------------------------------------ accessors

    def current(self) -> LayoutVersion:
        return self.versions[-1]

    def min_stored(self) -> int:
        """Number of the oldest live version."""
        return self.versions[0].version

    @property
    def replication_factor(self) -> int:
        return self.current().replication_factor

    def all_nodes(self) -> list[bytes]:
        """Nodes with a role (storage or gateway) in any live version, sorted."""
        return sorted({n for v in self.versions for n in v.node_id_vec})

    def all_storage_nodes(self) -> list[bytes]:
        return sorted({n for v in self.versions for n in v.storage_nodes()})

    # ------------------------------------------------------------------ routing

    def write_sets_of(self, hash32: bytes) -> list[list[bytes]]:
        """One node set per live version; a write needs a write quorum in each."""
        return [v.nodes_of_hash(hash32) for v in self.versions]

    def storage_nodes_of(self, hash32: bytes) -> list[bytes]:
        """Sorted union of the write sets (used by K2V inserts, polls and GC)."""
        return sorted({n for v in self.versions for n in v.nodes_of_hash(hash32)})

    def read_version(self) -> LayoutVersion:
        """The version reads use: number ``sync_map_min()``, or the current one if absent."""
        target = self.sync_map_min()
        for v in self.versions:
            if v.version == target:
                return v
        return self.current()

    def read_nodes_of(self, hash32: bytes) -> list[bytes]:
        return self.read_version().nodes_of_hash(hash32)

    # ------------------------------------------------------------------ tracker-derived values

    def ack_map_min(self) -> int:
        """Highest version every node (gateways included) has acknowledged."""
        return self.update_trackers.ack_map.min_among(self.all_nodes(), self.min_stored())

    def sync_map_min(self) -> int:
        """Highest version it is safe to read from (Garage's sync_map_min with quorums).

        With one live version it is that version. Otherwise, for every partition and every
        non-current version's node set, the highest version synced by at least a write quorum of
        that set (so any acknowledged write is in a read quorum); the minimum over all of them.
        """
        if len(self.versions) == 1:
            return self.current().version
        quorum = write_quorum(self.replication_factor, ConsistencyMode.CONSISTENT)
        min_version = self.min_stored()
        sync = self.update_trackers.sync_map
        global_min = sync.min_among(self.all_storage_nodes(), min_version)
        if quorum == self.replication_factor:
            return global_min
        current_min = self.current().version
        seen: set[tuple[bytes, ...]] = set()
        for v in self.versions[:-1]:
            for p in range(NB_PARTITIONS):
                nodes = tuple(sorted(v.nodes_of(p)))
                if not nodes or nodes in seen:
                    continue
                seen.add(nodes)
                values = sorted(sync.get(n, min_version) for n in nodes)
                set_min = values[max(0, len(values) - quorum)]
                current_min = min(current_min, set_min)
                if current_min <= global_min:
                    return global_min
        return current_min

    # ------------------------------------------------------------------ tracker updates

    def update_local_trackers(self, node: bytes, ack_version: int | None = None) -> bool:
        """Raise ``node``'s own trackers (Garage's ``update_trackers``); True if anything changed.

        ``ack_version`` is the oldest live version that still has writes in flight on this node
        (the caller tracks write locks); ``None`` acknowledges the current version.
        """
        t = self.update_trackers
        changed = t.ack_map.set_max(node, self.current().version if ack_version is None else ack_version)
        changed |= t.sync_map.set_max(node, self.min_stored())
        changed |= t.sync_ack_map.set_max(node, self.sync_map_min())
        if changed:
            self.cleanup_old_versions()
        return changed

    def mark_synced(self, node: bytes, version: int) -> bool:
        """``node`` finished a full sync of every table for ``version``."""
        return self.update_trackers.sync_map.set_max(node, version)

    def skip_dead_nodes(self, version: int, up_nodes: set[bytes], allow_missing_data: bool) -> list[str]:
        """Operator escape hatch for a stuck migration; returns one line per tracker raised."""
        if len(self.versions) == 1:
            raise LayoutError("This command cannot be called when there is only one live cluster layout version")
        lo, hi = self.min_stored(), self.current().version
        if not lo < version <= hi:
            raise LayoutError(
                f"Invalid version, you may use the following version numbers: "
                f"{', '.join(str(v) for v in range(lo + 1, hi + 1))}"
            )
        done = []
        for node in self.all_nodes():
            if (allow_missing_data or node not in up_nodes) and self.update_trackers.ack_map.set_max(node, version):
                done.append(f"Increased the ACK tracker for node {node.hex()[:16]}")
            if allow_missing_data and self.update_trackers.sync_map.set_max(node, version):
                done.append(f"Increased the SYNC tracker for node {node.hex()[:16]}")
        if not done:
            if not allow_missing_data:
                raise LayoutError(
                    "Nothing was done, try passing the `--allow-missing-data` flag to force progress "
                    "even when not enough nodes can complete a metadata sync."
                )
            raise LayoutError(
                "Sorry, there is nothing I can do for you. Please wait patiently. If you ask for help, "
                "please send the output of the `garagekv layout history` command."
            )
        return done

    # ------------------------------------------------------------------ housekeeping

    def keep_current_version_only(self) -> None:
        """Outside ``consistent`` mode nobody waits for migrations: only the current version lives."""
        while len(self.versions) > 1:
            self.old_versions.append(self.versions.pop(0))
        del self.old_versions[:-OLD_VERSION_COUNT]

    def cleanup_old_versions(self) -> None:
        """Retire versions that every node of the current version has stopped reading from."""
        if len(self.versions) > 1 and _is_valid(self.current()):
            while len(self.versions) > 1 and not _is_valid(self.versions[0]):
                dropped = self.versions.pop(0)
                log.info("Layout history: pruning old invalid version %d", dropped.version)
        sync_ack_min = self.update_trackers.sync_ack_map.min_among(self.current().node_id_vec, self.min_stored())
        while len(self.versions) > 1 and self.min_stored() < sync_ack_min:
            retired = self.versions.pop(0)
            log.info("Layout history: moving version %d to old_versions", retired.version)
            self.old_versions.append(retired)
        del self.old_versions[:-OLD_VERSION_COUNT]

    def clamp_update_trackers(self) -> None:
        """Every node's trackers start at the oldest live version (missing = min_stored)."""
        lo = self.min_stored()
        t = self.update_trackers
        for node in self.all_nodes():
            t.ack_map.set_max(node, lo)
            t.sync_map.set_max(node, lo)
            t.sync_ack_map.set_max(node, lo)

    def normalize(self, mode: ConsistencyMode | str = ConsistencyMode.CONSISTENT) -> None:
        """What a node does after every change (Garage's ``LayoutHelper::new``)."""
        if ConsistencyMode(mode) is not ConsistencyMode.CONSISTENT:
            self.keep_current_version_only()
        self.cleanup_old_versions()
        self.clamp_update_trackers()

    # ------------------------------------------------------------------ convergence

    def trackers_hash(self) -> bytes:
        return codec.blake2sum(codec.encode(self.update_trackers.to_wire()))

    def staging_hash(self) -> bytes:
        return codec.blake2sum(codec.encode(self.staging.to_wire()))

    def digest(self) -> LayoutDigest:
        return LayoutDigest(self.current().version, len(self.versions), self.trackers_hash(), self.staging_hash())

    def merge(self, other: LayoutHistory) -> bool:
        """Merge a history received from a peer (already vetted with ``check_remote``).

        A node far behind adopts ``other`` wholesale; otherwise it appends the versions that
        follow its current one, and merges trackers (max) and staging (CRDT). Returns True if
        anything changed (the caller then normalizes, persists and re-broadcasts).
        """
        if self.current().version < other.min_stored():
            replacement = other.clone()
            changed = replacement != self
            self.versions, self.old_versions = replacement.versions, replacement.old_versions
            self.update_trackers, self.staging = replacement.update_trackers, replacement.staging
            return changed

        changed = False
        for v2 in other.versions:
            if v2.version == self.current().version + 1:
                self.versions.append(LayoutVersion.from_wire(v2.to_wire()))
                changed = True
            else:
                mine = next((v for v in self.versions if v.version == v2.version), None)
                if mine is not None and mine != v2:
                    log.error(
                        "Inconsistent layout histories: different layout compositions for version %d. "
                        "Your cluster will be broken as long as this layout version is not replaced.",
                        v2.version,
                    )
        changed |= self.update_trackers.merge(other.update_trackers)
        changed |= self.staging.merge(other.staging)
        return changed

    def check(self) -> None:
        """Structural checks plus a full ``check()`` of the current version."""
        if not self.versions:
            raise LayoutError("layout history has no version")
        for a, b in zip(self.versions, self.versions[1:], strict=False):
            if b.version != a.version + 1:
                raise LayoutError("layout history versions are not consecutive")
        rf = self.replication_factor
        if any(v.replication_factor != rf for v in self.versions):
            raise LayoutError("layout history mixes replication factors")
        # Older versions are still read (storage sets during a migration, trackers): each must
        # name only its own storage nodes; the rules of the current computation apply to the last.
        for v in [*self.old_versions, *self.versions[:-1]]:
            try:
                v.check_structure()
            except LayoutError as e:
                raise LayoutError(f"layout version {v.version}: {e.message}")
        self.current().check()

    def check_remote(self, other: LayoutHistory, replication_factor: int) -> None:
        """Raise unless ``other`` (received from a peer) may be merged into this history."""
        if other.replication_factor != replication_factor:
            raise LayoutError(
                f"Received a cluster layout from another node with replication factor "
                f"{other.replication_factor}, which is different from what we have in our "
                f"configuration ({replication_factor}). Discarding the cluster layout we received."
            )
        # An empty first version (a node that has no layout yet, whose staged roles must still
        # spread) is taken as it is; any history with a computed version is checked in full.
        if _is_valid(self.current()) or other.current().version > 0:
            try:
                other.check()
            except LayoutError as e:
                raise LayoutError(f"Discarding an invalid cluster layout received from a peer: {e.message}")

    # ------------------------------------------------------------------ staging

    def planned_roles(self) -> dict[bytes, NodeRole]:
        """Current roles with staged edits applied (what assign/remove build upon)."""
        return self.staging.effective_roles(self.current().roles)

    def stage_role(self, node: bytes, role: NodeRole | None) -> None:
        """Stage a role (``None`` = removal); keeps the staging epoch so edits merge."""
        self.staging.stage_role(node, role)

    def stage_zone_redundancy(self, zone_redundancy: ZoneRedundancy) -> None:
        zr = validate_zone_redundancy(zone_redundancy, self.replication_factor)
        self.staging.stage_parameters(LayoutParameters(zr))

    def has_staged_changes(self) -> bool:
        cur = self.current()
        return bool(self.staging.changes(cur.roles)) or (
            self.staging.parameters.value.zone_redundancy != cur.zone_redundancy
        )

    def preview_staged_changes(self) -> tuple[LayoutVersion, list[str]]:
        """Dry run of ``apply``: the next version and its computation report (may raise)."""
        return calculate_next(self.current(), self.staging)

    def apply_staged_changes(self, version: int | None) -> tuple[LayoutHistory, list[str]]:
        """A new history with version ``current+1`` appended; ``version`` must be exactly that."""
        if version is None:
            raise LayoutError(_MISSING_VERSION)
        check_next_version(self.current().version, version)
        new_version, msg = self.preview_staged_changes()
        out = self.clone()
        out.versions.append(new_version)
        out.cleanup_old_versions()
        out.staging.reset(out.staging.parameters)
        return out, msg

    def revert_staged_changes(self) -> LayoutHistory:
        """A new history whose staging is empty again (new epoch); creates no version."""
        out = self.clone()
        params = Lww(increment_logical_clock(out.staging.parameters.ts), self.current().parameters)
        out.staging.reset(params)
        return out

    # ------------------------------------------------------------------ wire

    def to_wire(self) -> dict[str, Any]:
        return {
            "versions": [v.to_wire() for v in self.versions],
            "old_versions": [v.to_wire() for v in self.old_versions],
            "update_trackers": self.update_trackers.to_wire(),
            "staging": self.staging.to_wire(),
        }

    @classmethod
    def from_wire(cls, w: Any) -> LayoutHistory:
        try:
            versions = [LayoutVersion.from_wire(v) for v in w["versions"]]
            old = [LayoutVersion.from_wire(v) for v in w["old_versions"]]
            trackers = UpdateTrackers.from_wire(w["update_trackers"])
            staging = LayoutStaging.from_wire(w["staging"])
        except LayoutError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(f"Malformed layout history: {e!r}")
        if not versions:
            raise LayoutError("Malformed layout history: no version")
        for a, b in zip(versions, versions[1:], strict=False):
            if b.version != a.version + 1:
                raise LayoutError("Malformed layout history: versions are not consecutive")
        return cls(versions, old, trackers, staging)

    def encode(self) -> bytes:
        """Bytes to persist: a format byte, then canonical msgpack."""
        return bytes([FORMAT_VERSION]) + codec.encode(self.to_wire())

    @classmethod
    def decode(cls, data: bytes) -> LayoutHistory:
        if not data or data[0] != FORMAT_VERSION:
            raise LayoutError("Unknown cluster layout format (wrong version byte)")
        try:
            w = codec.decode(data[1:])
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise LayoutError(f"Malformed cluster layout: {e!r}")
        return cls.from_wire(w)


def _is_valid(version: LayoutVersion) -> bool:
    try:
        version.check()
    except LayoutError:
        return False
    return True
