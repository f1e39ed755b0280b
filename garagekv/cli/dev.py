"""``garagekv dev``: a ready-to-use local cluster with a key and a bucket, for trying things out.

Everything lives under one directory (default ``./.garagekv-dev``) and persists across runs:
node configs, data, secrets and the credentials created on the first run. The nodes are ordinary
``garagekv server`` processes, each with a config file usable with ``-c``; they are connected,
given one zone each and a layout is applied, then the JSON line is printed.

The nodes never outlive ``dev``: each inherits the read end of a pipe whose write end only
``dev`` holds, and stops cleanly when it reads end of file, which the kernel delivers however
``dev`` ends (Ctrl-C, SIGTERM, SIGHUP from a closed terminal, SIGKILL).

``--workers N`` makes each node a host of N workers (``workers = N`` in its config, see
docs/deploy.md §10): the nodes stay separate hosts, so three of them keep replication factor 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from garagekv.admin.remote import admin_call
from garagekv.api.hulykvs.auth import SYSTEM_ACCOUNT, mint
from garagekv.util.config import Config, load_config
from garagekv.util.errors import ConfigError, GarageKVError

DEFAULT_DIR = ".garagekv-dev"
DEFAULT_PORT = 3904
DEFAULT_NODES = 3
MAX_DEV_WORKERS = 64
REGION = "garage"
BUCKET = "dev-bucket"
HULYKVS_BUCKET = "hulykvs"
READY_TIMEOUT = 30.0
NODE_CAPACITY = "1G"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dev",
        help="run a local development cluster with a key and a bucket",
        description="Node i listens on PORT+10i (K2V), PORT-3+10i (RPC), PORT-1+10i (admin API), as "
        "Garage's 3904/3901/3903, and PORT+1+10i (Hulykvs API). The nodes stop when dev stops, however it stops.",
    )
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"K2V port of the first node (default {DEFAULT_PORT}); node i uses PORT+10i for K2V, "
        "PORT-3+10i for RPC, PORT-1+10i for the admin API and PORT+1+10i for the Hulykvs API",
    )
    p.add_argument("--nodes", type=int, default=DEFAULT_NODES, help=f"number of nodes (default {DEFAULT_NODES})")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes per node (default 1): each node is then a host of that many workers sharing its "
        "K2V, admin and Hulykvs ports; worker w of node i uses RPC port PORT+100+100i+w",
    )
    p.add_argument("--json", action="store_true", help="print only the JSON line once ready")


def node_ports(base: int, index: int, workers: int = 1) -> dict[str, int]:
    """K2V on ``base``, RPC on base-3, admin on base-1, as Garage's 3904/3901/3903, Hulykvs on
    base+1; +10 per node. A node of several workers has its RPC ports (one per worker, from the
    one given here) at base+100, +100 per node."""
    off = 10 * index
    rpc = base - 3 + off if workers == 1 else base + 100 + 100 * index
    return {"k2v": base + off, "rpc": rpc, "admin": base - 1 + off, "hulykvs": base + 1 + off}


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _read_or_create(path: Path, make: Any) -> str:
    if not path.exists():
        _write_private(path, make())
    return path.read_text().strip()


def write_node_config(
    node_dir: Path, ports: dict[str, int], rpc_secret: str, rf: int, workspace: str, workers: int = 1
) -> Path:
    """The admin token and the Hulykvs token secret are read from files in the state directory
    (the parent of ``node_dir``); ``workspace`` is the Hulykvs API v1 workspace."""
    node_dir.mkdir(parents=True, exist_ok=True)
    path = node_dir / "garagekv.toml"
    _write_private(
        path,
        f"""# Written by `garagekv dev`; an ordinary config file (`garagekv -c {path.name} ...`).
metadata_dir = "meta"
replication_factor = {rf}
workers = {workers}
rpc_bind_addr = "127.0.0.1:{ports["rpc"]}"
rpc_public_addr = "127.0.0.1:{ports["rpc"]}"
rpc_secret = "{rpc_secret}"
rpc_ping_interval_msec = 2000
rpc_ping_timeout_msec = 2000
metadata_fsync = true

[s3_api]
s3_region = "{REGION}"

[k2v_api]
api_bind_addr = "127.0.0.1:{ports["k2v"]}"

[admin]
api_bind_addr = "127.0.0.1:{ports["admin"]}"
admin_token_file = "../admin_token"

[hulykvs_api]
api_bind_addr = "127.0.0.1:{ports["hulykvs"]}"
bucket = "{HULYKVS_BUCKET}"
token_secret_file = "../hulykvs_secret"
default_workspace_uuid = "{workspace}"
""",
    )
    return path


@dataclass
class DevNode:
    index: int
    dir: Path
    ports: dict[str, int]
    config_path: Path
    workers: int = 1
    proc: subprocess.Popen[bytes] | None = None
    config: Config | None = None
    node_id: str = ""  # of worker 0 for a host of several workers
    worker_ids: list[str] = field(default_factory=list)
    worker_pids: list[int] = field(default_factory=list)
    host_id: str = ""
    log_offset: int = 0

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    @property
    def started(self) -> subprocess.Popen[bytes]:
        """The node's process, once ``start`` ran (``run`` starts every node before anything else)."""
        assert self.proc is not None, "DevNode.start() not called"
        return self.proc

    def start(self, lifeline: int) -> None:
        """Start the node process; it stops when ``lifeline`` (a pipe's read end) reaches end of file."""
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, lives as long as it
        self.log_offset = log_file.tell()
        cmd = [sys.executable, "-m", "garagekv.cli.main", "-c", str(self.config_path), "server"]
        self.proc = subprocess.Popen(
            [*cmd, "--stop-on-eof", str(lifeline)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches dev only, which stops the nodes in order
            pass_fds=(lifeline,),
        )
        log_file.close()

    def new_log(self) -> str:
        """What this run of the node wrote to its log (the last lines)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-20:])

    def rpc_addr(self, worker: int = 0) -> str:
        return f"127.0.0.1:{self.ports['rpc'] + worker}"

    async def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0, worker: int = 0) -> Any:
        if self.config is None:
            self.config = load_config(self.config_path)
        target = None
        if worker:
            worker_id = (self.dir / "meta" / f"worker-{worker}" / "node_key.pub").read_bytes().hex()
            target = f"{worker_id}@{self.rpc_addr(worker)}"
        return await admin_call(self.config, op, args, rpc_host=target, timeout=timeout)

    def _ours(self, info: dict[str, Any]) -> bool:
        """The answering process is this node's (not another one holding its ports)."""
        assert self.proc is not None
        if self.workers == 1:
            return bool(info.get("pid") == self.proc.pid)
        host_file = self.dir / "meta" / "host_id"
        return host_file.exists() and info.get("host") == host_file.read_bytes().hex()

    async def wait_ready(self) -> None:
        """Wait until this very process answers (every worker of a host), not another one holding its ports."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        ready: dict[int, dict[str, Any]] = {}
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"node {self.index} exited with code {self.proc.returncode}; see {self.log_path}:\n{self.new_log()}"
                )
            for w in range(self.workers):
                if w in ready:
                    continue
                try:
                    info = await self.call("node.info", timeout=2.0, worker=w)
                except (GarageKVError, ConfigError, OSError):
                    continue
                if not self._ours(info):
                    raise RuntimeError(
                        f"node {self.index}'s ports are held by another garagekv process (pid {info.get('pid')}, "
                        f"node {str(info.get('id'))[:16]}): stop it or choose other ports with --port/--dir.\n"
                        f"{self.new_log()}"
                    )
                ready[w] = info
                self.host_id = info.get("host") or ""
            if len(ready) == self.workers:
                self.node_id = ready[0]["id"]
                self.worker_ids = [ready[w]["id"] for w in range(self.workers)]
                self.worker_pids = [ready[w]["pid"] for w in range(self.workers)]
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.index} not ready after {READY_TIMEOUT:.0f}s; see {self.log_path}")
            await asyncio.sleep(0.1)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.node_id,
            "k2v_endpoint": f"http://127.0.0.1:{self.ports['k2v']}",
            "rpc_addr": self.rpc_addr(),
            "admin_endpoint": f"http://127.0.0.1:{self.ports['admin']}",
            "hulykvs_endpoint": f"http://127.0.0.1:{self.ports['hulykvs']}",
            "config": str(self.config_path),
            "pid": self.proc.pid if self.proc is not None else None,
        }
        if self.workers > 1:
            out["host"] = self.host_id
            out["workers"] = [
                {"id": n, "rpc_addr": self.rpc_addr(w), "pid": pid}
                for w, (n, pid) in enumerate(zip(self.worker_ids, self.worker_pids, strict=True))
            ]
        return out


async def _form_cluster(nodes: list[DevNode]) -> None:
    """Connect every node to the first, give each a role in its own zone, apply, wait for all."""
    first = nodes[0]
    for n in nodes[1:]:
        await first.call("node.connect", {"peer": f"{n.node_id}@{n.rpc_addr()}"})
    # Every worker of every host must be known, with its host, before its host is assigned
    # (peers pass them on; a worker's host comes with its first status).
    expected = {w: n.host_id or None for n in nodes for w in n.worker_ids}
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        known = {x["id"]: x.get("host") for x in (await first.call("cluster.status"))["nodes"]}
        if all(w in known and known[w] == host for w, host in expected.items()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the nodes did not all learn of each other")
        await asyncio.sleep(0.2)
    status = await first.call("cluster.status")
    roles = {x["id"]: x["role"] for x in status["nodes"]}
    missing = [n for n in nodes if any(roles.get(w) is None for w in n.worker_ids)]
    if missing:
        for n in missing:
            target = n.host_id if n.workers > 1 else n.node_id  # a host: all its workers, capacity split
            await first.call(
                "layout.assign", {"nodes": [target], "zone": f"dc{n.index + 1}", "capacity": NODE_CAPACITY}
            )
        await first.call("layout.apply", {"version": status["layout_version"] + 1})
    target = (await first.call("cluster.status"))["layout_version"]
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        # Every worker, with every other one up: a host's workers share its K2V port, and one
        # without the layout, or not yet in touch with the others, would answer a client's
        # first request with 503.
        statuses = [await n.call("cluster.status", worker=w) for n in nodes for w in range(n.workers)]
        versions = [st["layout_version"] for st in statuses]
        if all(v == target for v in versions) and all(
            x["up"] for st in statuses for x in st["nodes"] if x["id"] in expected
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"layout did not converge (versions {versions}, expected {target}) or a node is down")
        await asyncio.sleep(0.2)


async def _ensure_credentials(state_dir: Path, node: DevNode) -> dict[str, str]:
    """Reuse the key and bucket of earlier runs; create them if the cluster lacks them."""
    cred_path = state_dir / "credentials.json"
    creds = None
    if cred_path.exists():
        creds = json.loads(cred_path.read_text())
        try:
            await node.call("key.info", {"pattern": creds["access_key_id"]})
        except GarageKVError:
            creds = None
    if creds is None:
        key = await node.call("key.create", {"name": "dev"})
        creds = {"access_key_id": key["accessKeyId"], "secret_access_key": key["secretAccessKey"]}
        _write_private(cred_path, json.dumps(creds))
    for bucket in (BUCKET, HULYKVS_BUCKET):  # Hulykvs's too: one node creates it, before any request
        try:
            await node.call("bucket.info", {"name": bucket})
        except GarageKVError:
            await node.call("bucket.create", {"name": bucket})
    await node.call(
        "bucket.permissions",
        {"bucket": BUCKET, "key": creds["access_key_id"], "allow": True, "read": True, "write": True, "owner": True},
    )
    return creds


async def _prepare(state_dir: Path, nodes: list[DevNode]) -> dict[str, str]:
    for n in nodes:
        await n.wait_ready()
    await _form_cluster(nodes)
    return await _ensure_credentials(state_dir, nodes[0])


EXAMPLE = """\
# Try it (Python, signed with botocore):
#   python - <<'PY'
#   import hashlib, urllib.request, botocore.auth, botocore.awsrequest, botocore.credentials
#   req = botocore.awsrequest.AWSRequest("PUT", "{endpoint}/{bucket}/mypk?sort_key=hello", data=b"world")
#   req.headers["x-amz-content-sha256"] = hashlib.sha256(b"world").hexdigest()
#   botocore.auth.SigV4Auth(botocore.credentials.Credentials("{ak}", "{sk}"), "k2v", "{region}").add_auth(req)
#   p = req.prepare(); r = urllib.request.Request(p.url, data=p.body, headers=dict(p.headers), method=p.method)
#   print(urllib.request.urlopen(r).status)  # 204
#   PY
# Admin API: curl -H "Authorization: Bearer $(cat {admin_token_path})" {admin_endpoint}/v1/status
# Hulykvs API: curl -X PUT -H "Authorization: Bearer <hulykvs_token>" --data hello \\
#   {hulykvs_endpoint}/api2/{hulykvs_workspace}/notes/greeting
"""


def run(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        print("Error: --nodes must be at least 1", file=sys.stderr)
        return 1
    if not 1 <= args.workers <= MAX_DEV_WORKERS:
        print(f"Error: --workers must be between 1 and {MAX_DEV_WORKERS}", file=sys.stderr)
        return 1
    state_dir = Path(args.dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    rpc_secret = _read_or_create(state_dir / "rpc_secret", lambda: secrets.token_hex(32))
    admin_token = _read_or_create(state_dir / "admin_token", lambda: secrets.token_urlsafe(32))
    huly_secret = _read_or_create(state_dir / "hulykvs_secret", lambda: secrets.token_urlsafe(32))
    huly_workspace = _read_or_create(state_dir / "hulykvs_workspace", lambda: str(uuid.uuid4()))
    rf = min(3, args.nodes)
    nodes = []
    for i in range(args.nodes):
        ports = node_ports(args.port, i, args.workers)
        node_dir = state_dir / f"node{i}"
        config_path = write_node_config(node_dir, ports, rpc_secret, rf, huly_workspace, args.workers)
        nodes.append(DevNode(i, node_dir, ports, config_path, args.workers))

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    # The nodes' lifeline: dev keeps the write end (never written) until it exits.
    lifeline, _keep = os.pipe()
    for n in nodes:
        n.start(lifeline)
    os.close(lifeline)
    try:
        creds = asyncio.run(_prepare(state_dir, nodes))
    except (RuntimeError, GarageKVError, ConfigError) as e:
        stop()
        for n in nodes:
            n.started.wait(timeout=30)
        print(f"Error: {e}", file=sys.stderr)
        return 1

    first = nodes[0].info()
    line = {
        "k2v_endpoint": first["k2v_endpoint"],
        "region": REGION,
        "access_key_id": creds["access_key_id"],
        "secret_access_key": creds["secret_access_key"],
        "bucket": BUCKET,
        "admin_endpoint": first["admin_endpoint"],
        "admin_token": admin_token,
        "hulykvs_endpoint": first["hulykvs_endpoint"],
        "hulykvs_secret": huly_secret,
        "hulykvs_token": mint(huly_secret, SYSTEM_ACCOUNT),
        "hulykvs_default_workspace": huly_workspace,
        "nodes": [n.info() for n in nodes],
    }
    print(json.dumps(line), flush=True)
    if not args.json:
        print(
            EXAMPLE.format(
                endpoint=first["k2v_endpoint"],
                bucket=BUCKET,
                ak=creds["access_key_id"],
                sk=creds["secret_access_key"],
                region=REGION,
                admin_endpoint=first["admin_endpoint"],
                admin_token_path=state_dir / "admin_token",
                hulykvs_endpoint=first["hulykvs_endpoint"],
                hulykvs_workspace=huly_workspace,
            ),
            file=sys.stderr,
        )
        print(
            f"Serving {len(nodes)} node(s)"
            + (f" of {args.workers} workers each" if args.workers > 1 else "")
            + f"; logs in {state_dir}/node*/node.log. Press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
    return _supervise(nodes, lambda: stopping)


def _supervise(nodes: list[DevNode], stopping: Any) -> int:
    """Wait until every node has exited; report a node that dies on its own and keep the others."""
    reported: set[int] = set()
    while any(n.started.poll() is None for n in nodes):
        for n in nodes:
            code = n.started.poll()
            if code is not None and not stopping() and n.index not in reported:
                reported.add(n.index)
                print(
                    f"node {n.index} exited with code {code}; the others keep running. Its last log lines:\n"
                    f"{n.new_log()}\nRestart it with:\n  garagekv -c {n.config_path} server",
                    file=sys.stderr,
                    flush=True,
                )
        time.sleep(0.2)
    if stopping():
        return 0 if all(n.started.returncode == 0 for n in nodes) else 1
    return 1
