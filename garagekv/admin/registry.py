"""The node's operator commands by name: the one registry the CLI and the admin API go through.

Built once from the operations of keys and buckets (``admin.key_bucket_ops``), of the cluster
(``admin.cluster_ops``) and of this node (``admin.node_ops``); every one of them receives the
node's services and its arguments checked against its declaration (``admin.operation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from garagekv.admin.cluster_ops import CLUSTER_OPS
from garagekv.admin.key_bucket_ops import KEY_BUCKET_OPS
from garagekv.admin.node_ops import NODE_OPS
from garagekv.admin.operation import Op, OpServices, registry
from garagekv.util.errors import AdminError

OPS: Mapping[str, Op[Any]] = registry(KEY_BUCKET_OPS, CLUSTER_OPS, NODE_OPS)


async def run_op(services: OpServices, name: str, args: Any) -> Any:
    """Run the operation ``name`` with its wire arguments (a map; None for none)."""
    op = OPS.get(name)
    if op is None:
        raise AdminError(f"unknown operation {name!r}")
    return await op(services, args)
