"""One garagekv node wired together: config -> database -> tables -> model -> K2V API.

Start-up opens every LMDB tree before the writer thread takes its first transaction; shutdown
stops accepting requests, lets in-flight ones finish (polls are cut), drains the writer so every
acknowledged write is committed, then closes the database.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import platform
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

from aiohttp import web

from garagekv.admin.cluster_metrics import consensus_families, peer_families, worker_families
from garagekv.admin.health import ClusterHealthSource, HealthReport, cluster_health_of, evaluate
from garagekv.admin.http import AdminApiServer, AdminServices
from garagekv.admin.metrics import LocalSnapshot, NodeMetrics, merge_host_metrics
from garagekv.admin.operation import OpServices
from garagekv.admin.registry import OPS, run_op
from garagekv.admin.remote import ADMIN_ENDPOINT
from garagekv.admin.stats import table_stats
from garagekv.api.context import ApiLimits, ApiState
from garagekv.api.hulykvs.auth import short_secret_warning
from garagekv.api.hulykvs.context import HulyState
from garagekv.api.hulykvs.server import HulykvsApiServer
from garagekv.api.hulykvs.store import K2VHulyStore
from garagekv.api.k2v_server import K2VApiServer
from garagekv.db.env import Database
from garagekv.db.snapshot import AutoSnapshotWorker, Snapshotter
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.model import Model
from garagekv.net.identity import load_or_create_node_key, short_id
from garagekv.rpc import quorum
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.system import System
from garagekv.util.config import MAX_KEY_BYTES, Config, split_host_port
from garagekv.util.errors import AdminError, ConfigError, GarageKVError

log = logging.getLogger("garagekv")
#: A worker of a multi-worker host asks its siblings for their metrics here (``GET /metrics``).
EP_HOST_METRICS = endpoint_path("server", "host_metrics")
HOST_METRICS_TIMEOUT = 5.0
access_log = logging.getLogger("garagekv.access.k2v")
hulykvs_access_log = logging.getLogger("garagekv.access.hulykvs")


def garagekv_version() -> str:
    try:
        return version("garagekv")
    except PackageNotFoundError:
        return "unknown"


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.db: Database | None = None
        self.writer: GroupCommitWriter | None = None
        self.api: K2VApiServer | None = None
        self.hulykvs: HulykvsApiServer | None = None
        self.system: System | None = None
        self.model: Model | None = None
        self.snapshotter: Snapshotter | None = None
        self.admin_http: AdminApiServer | None = None
        self.metrics: NodeMetrics | None = None
        self.started_at = time.time()
        self.stopping = False
        # The cluster's view for /health, /v1/health and the cluster_* metrics, and
        # {layoutVersion, layout, nodes} for /v1/status; set once the system layer is up.
        self.cluster_health: ClusterHealthSource | None = None
        self.cluster_status: Callable[[], Awaitable[dict[str, Any]]] | None = None

    async def start(self) -> None:
        cfg = self.config
        if cfg.rpc_secret_bytes is None:
            where = f"{cfg.source}: " if cfg.source is not None else ""
            raise ConfigError(
                f"{where}missing required key 'rpc_secret' (example: rpc_secret = \"<64 hex characters "
                'from `openssl rand -hex 32`>"), or rpc_secret_file / GARAGEKV_RPC_SECRET'
            )
        self.node_key = load_or_create_node_key(cfg.metadata_dir)
        self.node_id = self.node_key.node_id
        self.metrics = NodeMetrics(
            node_id=self.node_id.hex(),
            version=garagekv_version(),
            replication_factor=cfg.replication_factor,
            consistency_mode=cfg.consistency_mode,
        )
        self.metrics.local_snapshot = self._local_snapshot
        self.metrics.cluster_health = lambda: self.cluster_health() if self.cluster_health is not None else None
        self.db = Database(cfg.metadata_dir, map_size=cfg.lmdb_map_size, fsync=cfg.metadata_fsync)
        self.writer = GroupCommitWriter(self.db)
        self.writer.on_commit = self.metrics.observe_db_commit

        self.registry = EndpointRegistry()
        self.registry.register(ADMIN_ENDPOINT, self._handle_admin_rpc)
        self.registry.register(EP_HOST_METRICS, self._handle_host_metrics)
        if cfg.is_worker:
            self.metrics.gather = self._host_metrics
        system = self.system = System(cfg, self.node_key, self.registry, meta_free=self.db.free_bytes)
        model = self.model = Model(cfg, self.db, self.writer, self.system)
        self.cluster_health = lambda: cluster_health_of(self.system)
        self.cluster_status = self._cluster_status
        # RPC and quorum metrics through hooks of the lower layers; states read at scrape time.
        self.system.netapp.observer = self._observe_rpc
        quorum.quorum_failure_hooks.append(self._on_quorum_failure)
        self.metrics.add_source(lambda: peer_families(system))
        self.metrics.add_source(lambda: worker_families(model))
        self.metrics.add_source(lambda: consensus_families(model))
        self.helper = self.model.helper
        self.k2v = self.model.k2v
        # Before the RPC listener opens: an admin call over RPC may come at once (meta.snapshot).
        self.snapshotter = Snapshotter(self.db, cfg.metadata_dir, cfg.snapshots_dir, cfg.metadata_snapshots_keep)
        await _listening(f"{cfg.rpc_bind_addr} (rpc_bind_addr)", self.system.start())
        await self.model.start()
        if cfg.metadata_auto_snapshot_interval is not None:
            self.model.background.spawn(AutoSnapshotWorker(self.snapshotter, cfg.metadata_auto_snapshot_interval))
        for key in cfg.ignored_keys:
            log.warning("config key '%s' is accepted for garage.toml compatibility and ignored", key)
        if cfg.admin.api_bind_addr is not None:
            self.admin_http = AdminApiServer(
                AdminServices(
                    self.dispatch_admin,
                    self.health,
                    self.status,
                    self.metrics,
                    cfg.s3_api.s3_region,
                    cfg.admin.admin_token,
                    cfg.admin.metrics_token,
                )
            )
            host, port = split_host_port(cfg.admin.api_bind_addr)
            await _listening(
                f"{cfg.admin.api_bind_addr} ([admin] api_bind_addr)", self.admin_http.start(host, port, cfg.is_worker)
            )
            log.info(
                "admin API listening on %s%s",
                cfg.admin.api_bind_addr,
                "" if cfg.admin.admin_token else " (no admin_token: only /health and /metrics are enabled)",
            )
        if cfg.k2v_api is not None:
            k2v = cfg.k2v_api
            state = ApiState(
                self.k2v,
                self.helper,
                cfg.s3_api.s3_region,
                ApiLimits(k2v.max_body_bytes, k2v.max_batch_items, k2v.max_key_bytes),
                tuple(k2v.cors_allowed_origins),
                self.system.readiness.refusal,
            )
            self.api = K2VApiServer(state)
            self.api.observer = self._observe_k2v
            host, port = split_host_port(k2v.api_bind_addr)
            await _listening(
                f"{k2v.api_bind_addr} ([k2v_api] api_bind_addr)", self.api.start(host, port, cfg.is_worker)
            )
            log.info("K2V API listening on %s", k2v.api_bind_addr)
        if cfg.hulykvs_api is not None:
            self.hulykvs = await _start_hulykvs(self)
        log.info("node %s ready", self.node_id.hex())

    async def _cluster_status(self) -> dict[str, Any]:
        """``{layoutVersion, layout, nodes}`` for the admin API's /v1/status."""
        st = await OPS["cluster.status"](self.services(), {})
        layout = await OPS["layout.get"](self.services(), {})
        return {"layoutVersion": st["layout_version"], "layout": layout, "nodes": st["nodes"]}

    async def _handle_admin_rpc(self, from_node: bytes, body: Any) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("op"), str):
            raise AdminError("malformed admin request")
        return await self.dispatch_admin(body["op"], body.get("args"))

    async def dispatch_admin(self, op: str, args: dict[str, Any] | None) -> Any:
        """Run an operator command by name (CLI over RPC, admin HTTP API); the node is its services."""
        return await run_op(self.services(), op, args)

    def services(self) -> OpServices:
        """The node as its operations see it: :class:`OpServices` with every service set.

        start() sets them before the RPC listener and the admin API open; a lifecycle the type
        system cannot follow, hence the cast.
        """
        return cast(OpServices, self)

    def info(self) -> dict[str, Any]:
        assert self.writer is not None and self.model is not None  # set by start()
        k2v_api, hulykvs_api = self.config.k2v_api, self.config.hulykvs_api
        return {
            "id": self.node_id.hex(),
            "pid": os.getpid(),
            "host": None if self.config.host_id is None else self.config.host_id.hex(),
            "worker": self.config.worker_index,
            "k2v_endpoint": None if self.api is None or k2v_api is None else f"http://{k2v_api.api_bind_addr}",
            "rpc_addr": self.config.rpc_public_addr or self.config.rpc_bind_addr,
            "region": self.config.s3_api.s3_region,
            "admin_endpoint": None if self.admin_http is None else f"http://{self.config.admin.api_bind_addr}",
            "hulykvs_endpoint": (
                None if self.hulykvs is None or hulykvs_api is None else f"http://{hulykvs_api.api_bind_addr}"
            ),
            "db": {"commits": self.writer.commits, "writes": self.writer.jobs},
            "poll_subscriptions": self.model.subs.count(),
        }

    # ---- a worker of a multi-worker host: the host's view ----------------------------------------

    def host_workers(self) -> list[tuple[int, bytes]]:
        """``(worker index, node id)`` of this host's workers that this worker knows, itself included."""
        assert self.config.worker_index is not None and self.system is not None
        found = {self.config.worker_index: self.node_id}
        for node, info in self.system.peers.items():
            st = info.status
            if st is not None and st.host == self.config.host_id and st.worker is not None:
                found.setdefault(st.worker, node)
        return sorted(found.items())

    def host_health(self) -> dict[str, Any]:
        """The ``host`` part of /health on a worker: every worker of the host, up as this one sees it."""
        assert self.config.host_id is not None and self.system is not None
        nodes = [{"worker": i, "node": n.hex(), "up": self.system.is_up(n)} for i, n in self.host_workers()]
        return {
            "id": self.config.host_id.hex(),
            "workers": self.config.workers,
            "workersUp": sum(1 for n in nodes if n["up"]),
            "nodes": nodes,
        }

    async def _handle_host_metrics(self, from_node: bytes, body: Any) -> bytes:
        assert self.metrics is not None  # set by start() before the RPC listener opens
        return self.metrics.render()

    async def _host_metrics(self) -> bytes:
        """/metrics on a worker: every worker's metrics (asked over RPC), labelled by worker."""
        assert self.config.host_id is not None and self.system is not None and self.metrics is not None
        system, metrics = self.system, self.metrics

        async def ask(index: int, node: bytes) -> tuple[int, str, bytes | None]:
            if node == self.node_id:
                return index, node.hex(), metrics.render()
            try:
                text = await system.netapp.call(node, EP_HOST_METRICS, None, timeout=HOST_METRICS_TIMEOUT)
            except GarageKVError as e:
                log.debug("worker %d gave no metrics: %s", index, e)
                return index, node.hex(), None
            return index, node.hex(), text if isinstance(text, bytes) else None

        texts = await asyncio.gather(*(ask(i, n) for i, n in self.host_workers()))
        return merge_host_metrics(self.config.host_id.hex(), self.config.workers, list(texts))

    # ---- operations surface: health, status, metrics, access log ---------------------------------

    def health(self) -> HealthReport:
        """Local checks, then the cluster's view once the cluster plane provides one."""
        cfg = self.config
        db_ok = self.db is not None and self.db.env is not None and self.writer is not None and self.writer.alive
        if cfg.k2v_api is None:
            k2v = "disabled"
        else:
            k2v = "ok" if self.api is not None and self.api.serving else "not serving"
        checks = {
            "running": "shutting down" if self.stopping else "ok",
            "database": "ok" if db_ok else "closed",
            "k2vApi": k2v,
        }
        cluster = self.cluster_health() if self.cluster_health is not None else None
        report = evaluate(checks, cluster, self.node_id.hex())
        if self.config.is_worker and self.system is not None:
            report.host = self.host_health()
        return report

    async def status(self) -> dict[str, Any]:
        cfg = self.config
        assert self.writer is not None and self.model is not None  # set by start() before the admin API listens
        cluster = await self.cluster_status() if self.cluster_status is not None else {}
        return {
            "node": self.node_id.hex(),
            "hostname": socket.gethostname(),
            "garagekvVersion": garagekv_version(),
            "pythonVersion": platform.python_version(),
            "dbEngine": "lmdb",
            "region": cfg.s3_api.s3_region,
            "replicationFactor": cfg.replication_factor,
            "consistencyMode": cfg.consistency_mode,
            "rpcAddr": cfg.rpc_public_addr or cfg.rpc_bind_addr,
            "k2vEndpoint": None if cfg.k2v_api is None else f"http://{cfg.k2v_api.api_bind_addr}",
            "uptimeSecs": int(time.time() - self.started_at),
            "db": {
                "commits": self.writer.commits,
                "writes": self.writer.jobs,
                "mapSize": cfg.lmdb_map_size,
                "freeBytes": self.db.free_bytes() if self.db is not None and self.db.env is not None else None,
            },
            "tables": table_stats(self.db, self.model.sums_workers),
            "pollSubscriptions": self.model.subs.count(),
            "k2vRequestsInFlight": 0 if self.api is None else len(self.api.in_flight),
            "layoutVersion": cluster.get("layoutVersion"),
            "layout": cluster.get("layout"),
            "nodes": cluster.get("nodes"),
        }

    def _local_snapshot(self) -> LocalSnapshot:
        assert self.writer is not None and self.model is not None  # set by start() before a scrape can come
        return LocalSnapshot(
            k2v_in_flight=0 if self.api is None else len(self.api.in_flight),
            poll_subscriptions=self.model.subs.count(),
            db_commits=self.writer.commits,
            db_writes=self.writer.jobs,
            tables=table_stats(self.db, self.model.sums_workers),
        )

    # The observers are hooked up by start() once the metrics are set.

    def _observe_rpc(self, path: str, node_id: bytes, seconds: float, outcome: str) -> None:
        assert self.metrics is not None
        self.metrics.observe_rpc(path, short_id(node_id), seconds, outcome)

    def _on_quorum_failure(self, err: quorum.QuorumError) -> None:
        assert self.metrics is not None
        self.metrics.quorum_failure(err.operation)

    def _observe_k2v(
        self, request: web.BaseRequest, endpoint: str | None, status: int, error_code: str | None, seconds: float
    ) -> None:
        assert self.metrics is not None
        self.metrics.observe_k2v(endpoint, status, error_code, seconds)
        _log_access(access_log, "k2v request", request, endpoint, status, seconds, {"error_code": error_code})

    def _observe_hulykvs(self, request: web.BaseRequest, endpoint: str | None, status: int, seconds: float) -> None:
        assert self.metrics is not None
        self.metrics.observe_hulykvs(endpoint, status, seconds)
        _log_access(hulykvs_access_log, "hulykvs request", request, endpoint, status, seconds)

    async def stop(self) -> None:
        self.stopping = True  # /health answers 503 from now on
        if self.hulykvs is not None:
            await self.hulykvs.stop()
        if self.api is not None:
            await self.api.stop()
        if self.admin_http is not None:
            await self.admin_http.stop()
        if self.model is not None:
            await self.model.stop()
        if self.system is not None:
            await self.system.stop()
        if self._on_quorum_failure in quorum.quorum_failure_hooks:
            quorum.quorum_failure_hooks.remove(self._on_quorum_failure)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.db is not None:
            self.db.close()
        log.info("node stopped cleanly")


async def _start_hulykvs(node: Node) -> HulykvsApiServer:
    """The Hulykvs-compatible listener (docs/hulykvs.md), over the node's K2V model."""
    cfg = node.config
    huly = cfg.hulykvs_api
    assert huly is not None and node.system is not None  # start() calls this with [hulykvs_api] set, once up
    short = short_secret_warning(huly.token_secret)
    if short is not None:
        log.warning("%s", short)
    for name in huly.ignored_env:
        log.warning("$%s is a Hulykvs database setting and has no meaning for garagekv: ignored", name)
    state = HulyState(
        K2VHulyStore(node.k2v, node.helper, huly.bucket),
        huly.token_secret,
        huly.default_workspace_uuid,
        huly.payload_size_limit,
        ready=lambda: node.health().ready,
        max_key_bytes=cfg.k2v_api.max_key_bytes if cfg.k2v_api is not None else MAX_KEY_BYTES,
        refusal=node.system.readiness.refusal,  # the K2V API's gate: no layout yet, refuse
    )
    server = HulykvsApiServer(state)
    server.observer = node._observe_hulykvs
    host, port = split_host_port(huly.api_bind_addr)
    await _listening(f"{huly.api_bind_addr} ([hulykvs_api] api_bind_addr)", server.start(host, port, cfg.is_worker))
    log.info("Hulykvs API listening on %s (bucket %s)", huly.api_bind_addr, huly.bucket)
    return server


def _log_access(
    logger: logging.Logger,
    what: str,
    request: web.BaseRequest,
    endpoint: str | None,
    status: int,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """One access log line per request: DEBUG, or WARNING for a 5xx (an operator wants those)."""
    level = logging.WARNING if status >= 500 else logging.DEBUG
    if logger.isEnabledFor(level):
        fields: dict[str, Any] = {
            "method": request.method,
            "path": request.raw_path,
            "endpoint": endpoint,
            "status": status,
        }
        fields.update(extra or {})
        fields["duration_ms"] = round(seconds * 1000, 3)
        logger.log(level, what, extra=fields)


_LISTEN_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


async def _listening(what: str, start: Awaitable[None]) -> None:
    """Run a start-up step that opens a listening socket; a refused address is a config error.

    An operator who starts a second node on the same ports needs the key to change, not a
    traceback from deep inside asyncio.
    """
    try:
        await start
    except OSError as e:
        if e.errno not in _LISTEN_ERRORS:
            raise
        hint = " (is another garagekv process running with this config?)" if e.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {what}: {e.strerror}{hint}") from None


def _stop_at_eof(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    """Stop the node when ``fd`` (a pipe whose write end the parent holds) reaches end of file.

    ``garagekv dev`` passes such a pipe: whatever way the parent dies, even SIGKILL, the kernel
    closes its end, so the nodes it started never outlive it.
    """

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            log.info("parent process gone: stopping")
            stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)


async def run_node(config: Config, parent_fd: int | None = None) -> None:
    """Run until SIGINT/SIGTERM/SIGHUP (or end of file on ``parent_fd``), then shut down cleanly."""
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    if parent_fd is not None:
        _stop_at_eof(loop, parent_fd, stop)
    try:
        await node.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        await node.stop()
