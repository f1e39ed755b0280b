"""Layout histories for unit tests: node ids by number, and applying a set of roles as the next version.

First written for the layout history tests (``tests/unit/test_layout_history.py``); the K2V store,
coordinator and readiness tests build their layouts the same way.
"""

from __future__ import annotations

from garagekv.rpc.layout import LayoutHistory, NodeRole


def nid(i: int) -> bytes:
    return bytes([i]) * 32


def with_nodes(h: LayoutHistory, nodes: dict[int, tuple[str, int | None] | None]) -> LayoutHistory:
    """Stage the given roles (None = remove) and apply the next version."""
    for i, role in nodes.items():
        h.stage_role(nid(i), None if role is None else NodeRole(*role))
    out, _ = h.apply_staged_changes(h.current().version + 1)
    return out


THREE = {1: ("dc1", 10**9), 2: ("dc2", 10**9), 3: ("dc3", 10**9)}
