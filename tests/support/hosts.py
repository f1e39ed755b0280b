"""A host that runs several workers: one ``garagekv server`` process with ``workers = N``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from garagekv.admin.remote import admin_call
from garagekv.util.config import load_config
from tests.support import NodeProcess, free_port_block


@dataclass
class HostProcess(NodeProcess):
    """``NodeProcess`` whose config says ``workers``: the process is the supervisor, worker i has
    its identity in ``meta/worker-<i>`` and its RPC on ``rpc_port + i``; K2V and admin are shared.
    The CLI-style ``admin`` goes to worker 0 (as ``garagekv -c`` does); ``worker_admin`` to any."""

    workers: int = 2
    rpc_port: int = field(default_factory=lambda: free_port_block(4))

    def write_config(self) -> None:
        if f"workers = {self.workers}" not in self.extra_config:
            self.extra_config = f"workers = {self.workers}\n{self.extra_config}"
        super().write_config()

    def worker_id(self, index: int) -> str:
        return (self.metadata_dir / f"worker-{index}" / "node_key.pub").read_bytes().hex()

    @property
    def node_id(self) -> str:
        return self.worker_id(0)

    @property
    def host_id(self) -> str:
        return (self.metadata_dir / "host_id").read_bytes().hex()

    def worker_ids(self) -> list[str]:
        return [self.worker_id(i) for i in range(self.workers)]

    def worker_admin(self, index: int, op: str, args: dict | None = None) -> Any:
        target = f"{self.worker_id(index)}@127.0.0.1:{self.rpc_port + index}"
        return asyncio.run(admin_call(load_config(self.config_path), op, args, rpc_host=target, timeout=10.0))
