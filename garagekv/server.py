"""One garagekv node wired together: config -> database -> tables -> model -> K2V API.

Start-up opens every LMDB tree before the writer thread takes its first transaction; shutdown
stops accepting requests, lets in-flight ones finish (polls are cut), drains the writer so every
acknowledged write is committed, then closes the database.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from garagekv.admin.local_socket import ControlServer
from garagekv.admin.ops import run_op
from garagekv.api.context import ApiLimits, ApiState
from garagekv.api.server import K2VApiServer
from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.bucket_table import BucketAliasSchema, BucketSchema
from garagekv.model.helper import MetaHelper
from garagekv.model.k2v.store import K2VStore
from garagekv.model.key_table import KeySchema
from garagekv.net.identity import load_or_create_node_key, node_number
from garagekv.table.data import TableData
from garagekv.table.table import Table
from garagekv.util.config import Config, split_host_port

log = logging.getLogger("garagekv")


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.db: Database | None = None
        self.writer: GroupCommitWriter | None = None
        self.api: K2VApiServer | None = None
        self.control: ControlServer | None = None

    async def start(self) -> None:
        cfg = self.config
        self.node_key = load_or_create_node_key(cfg.metadata_dir)
        self.node_id = self.node_key.node_id
        self.db = Database(cfg.metadata_dir, map_size=cfg.lmdb_map_size, fsync=cfg.metadata_fsync)
        self.writer = GroupCommitWriter(self.db)

        def table(schema: Any) -> Table:
            return Table(TableData(self.db, self.writer, schema))

        self.store = K2VStore(self.db, self.writer, node_number(self.node_id))
        self.helper = MetaHelper(
            table(KeySchema()), table(BucketSchema()), table(BucketAliasSchema()),
            self.store.bucket_is_empty, allow_punycode=cfg.allow_punycode,
        )
        self.control = ControlServer(cfg.metadata_dir, self.dispatch_admin)
        await self.control.start()
        if cfg.k2v_api is not None:
            k2v = cfg.k2v_api
            state = ApiState(
                self.store, self.helper, cfg.s3_api.s3_region,
                ApiLimits(k2v.max_body_bytes, k2v.max_batch_items, k2v.max_key_bytes),
                tuple(k2v.cors_allowed_origins),
            )
            self.api = K2VApiServer(state)
            host, port = split_host_port(k2v.api_bind_addr)
            await self.api.start(host, port)
            log.info("K2V API listening on %s", k2v.api_bind_addr)
        log.info("node %s ready", self.node_id.hex())

    async def dispatch_admin(self, op: str, args: dict[str, Any]) -> Any:
        if op == "node.info":
            return self.info()
        return await run_op(self.helper, op, args)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.node_id.hex(),
            "k2v_endpoint": None if self.api is None else f"http://{self.config.k2v_api.api_bind_addr}",
            "rpc_addr": self.config.rpc_public_addr or self.config.rpc_bind_addr,
            "region": self.config.s3_api.s3_region,
            "db": {"commits": self.writer.commits, "writes": self.writer.jobs},
            "poll_subscriptions": self.store.subs.count(),
        }

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.control is not None:
            await self.control.stop()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.db is not None:
            self.db.close()
        log.info("node stopped cleanly")


async def run_node(config: Config) -> None:
    """Run until SIGINT/SIGTERM/SIGHUP, then shut down cleanly."""
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        await node.stop()
