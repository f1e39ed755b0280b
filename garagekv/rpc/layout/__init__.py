"""Cluster layout: roles, staged changes, versions with their ring, history and trackers.

Pure logic (no I/O, no asyncio). ``LayoutHistory.apply_staged_changes`` and
``preview_staged_changes`` run the assignment (tens of milliseconds); call them in a thread.

Part of the rpc layer, but imports only garagekv.util (and its own modules): the layout is data
that the rest of rpc, table and model read. See docs/architecture.md §5.
"""

from garagekv.rpc.layout.assignment import NB_PARTITIONS, PARTITION_BITS
from garagekv.rpc.layout.compute import calculate_next
from garagekv.rpc.layout.consistency import ConsistencyMode, read_quorum, write_quorum
from garagekv.rpc.layout.describe import (
    describe_history,
    describe_layout_history,
    describe_version,
    history_document,
    layout_document,
)
from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.history import OLD_VERSION_COUNT, LayoutDigest, LayoutHistory, check_next_version
from garagekv.rpc.layout.parameters import (
    MAXIMUM,
    LayoutParameters,
    ZoneRedundancy,
    parse_zone_redundancy,
)
from garagekv.rpc.layout.roles import HOST_ID_LEN, MAX_NODE_NUMBER, HostKey, NodeRole, host_groups, host_key
from garagekv.rpc.layout.staging import LayoutStaging
from garagekv.rpc.layout.trackers import UpdateTracker, UpdateTrackers
from garagekv.rpc.layout.units import format_bytes
from garagekv.rpc.layout.version import LayoutVersion

__all__ = [
    "HOST_ID_LEN",
    "HostKey",
    "host_groups",
    "host_key",
    "MAXIMUM",
    "MAX_NODE_NUMBER",
    "NB_PARTITIONS",
    "OLD_VERSION_COUNT",
    "PARTITION_BITS",
    "ConsistencyMode",
    "LayoutDigest",
    "LayoutError",
    "LayoutHistory",
    "check_next_version",
    "LayoutParameters",
    "LayoutStaging",
    "LayoutVersion",
    "NodeRole",
    "UpdateTracker",
    "UpdateTrackers",
    "ZoneRedundancy",
    "calculate_next",
    "describe_history",
    "describe_layout_history",
    "history_document",
    "layout_document",
    "describe_version",
    "format_bytes",
    "parse_zone_redundancy",
    "read_quorum",
    "write_quorum",
]
