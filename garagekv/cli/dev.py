"""``garagekv dev``: a ready-to-use local node with a key and a bucket, for trying things out.

Everything lives under one directory (default ``./.garagekv-dev``) and persists across runs:
node configs, data, and the credentials created on the first run. The nodes are ordinary
``garagekv server`` processes, each with a config file usable with ``-c``.
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
from pathlib import Path
from typing import Any

from garagekv.admin.local_socket import call
from garagekv.util.errors import GarageKVError

DEFAULT_DIR = ".garagekv-dev"
DEFAULT_PORT = 3904
REGION = "garage"
BUCKET = "dev-bucket"
READY_TIMEOUT = 30.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev", help="run a local development node with a key and a bucket")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="K2V port of the first node")
    p.add_argument("--json", action="store_true", help="print only the JSON line once ready")


def node_ports(base: int, index: int) -> dict[str, int]:
    """K2V on ``base``, RPC on base-3, admin on base-1, as Garage's 3904/3901/3903; +10 per node."""
    off = 10 * index
    return {"k2v": base + off, "rpc": base - 3 + off, "admin": base - 1 + off}


def write_node_config(node_dir: Path, ports: dict[str, int], rpc_secret: str) -> Path:
    node_dir.mkdir(parents=True, exist_ok=True)
    path = node_dir / "garagekv.toml"
    text = f"""# Written by `garagekv dev`; an ordinary config file, usable with `garagekv -c {path.name}`.
metadata_dir = "meta"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{ports['rpc']}"
rpc_public_addr = "127.0.0.1:{ports['rpc']}"
rpc_secret = "{rpc_secret}"
metadata_fsync = true

[s3_api]
s3_region = "{REGION}"

[k2v_api]
api_bind_addr = "127.0.0.1:{ports['k2v']}"

[admin]
api_bind_addr = "127.0.0.1:{ports['admin']}"
"""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


async def _wait_ready(proc: subprocess.Popen, metadata_dir: Path, log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with code {proc.returncode}; see {log_path}:\n{_tail(log_path)}")
        try:
            return await call(metadata_dir, "node.info", timeout=2.0)
        except GarageKVError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node not ready after {READY_TIMEOUT:.0f}s; see {log_path}")
            await asyncio.sleep(0.1)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


async def _ensure_credentials(state_dir: Path, metadata_dir: Path) -> dict[str, str]:
    """Reuse the key and bucket of earlier runs; create them if this node lacks them."""
    cred_path = state_dir / "credentials.json"
    creds = None
    if cred_path.exists():
        creds = json.loads(cred_path.read_text())
        try:
            await call(metadata_dir, "key.info", {"pattern": creds["access_key_id"]})
        except GarageKVError:
            creds = None
    if creds is None:
        key = await call(metadata_dir, "key.create", {"name": "dev"})
        creds = {"access_key_id": key["accessKeyId"], "secret_access_key": key["secretAccessKey"]}
        fd = os.open(cred_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f)
    try:
        await call(metadata_dir, "bucket.info", {"name": BUCKET})
    except GarageKVError:
        await call(metadata_dir, "bucket.create", {"name": BUCKET})
    await call(metadata_dir, "bucket.permissions", {"bucket": BUCKET, "key": creds["access_key_id"],
                                                    "allow": True, "read": True, "write": True, "owner": True})
    return creds


EXAMPLE = """\
# Try it (Python, signed with botocore):
#   python - <<'PY'
#   import urllib.request, botocore.auth, botocore.awsrequest, botocore.credentials
#   req = botocore.awsrequest.AWSRequest("PUT", "{endpoint}/{bucket}/mypk?sort_key=hello", data=b"world")
#   botocore.auth.SigV4Auth(botocore.credentials.Credentials("{ak}", "{sk}"), "k2v", "{region}").add_auth(req)
#   p = req.prepare(); r = urllib.request.Request(p.url, data=p.body, headers=dict(p.headers), method=p.method)
#   print(urllib.request.urlopen(r).status)  # 204
#   PY
"""


def run(args: argparse.Namespace) -> int:
    state_dir = Path(args.dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    secret_path = state_dir / "rpc_secret"
    if not secret_path.exists():
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    rpc_secret = secret_path.read_text().strip()

    ports = node_ports(args.port, 0)
    node_dir = state_dir / "node0"
    config_path = write_node_config(node_dir, ports, rpc_secret)
    log_path = node_dir / "node.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, lives as long as it
    proc = subprocess.Popen(
        [sys.executable, "-m", "garagekv.cli.main", "-c", str(config_path), "server"],
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        info = asyncio.run(_wait_ready(proc, node_dir / "meta", log_path))
        creds = asyncio.run(_ensure_credentials(state_dir, node_dir / "meta"))
    except (RuntimeError, GarageKVError) as e:
        stop()
        proc.wait(timeout=30)
        print(f"Error: {e}", file=sys.stderr)
        return 1
    endpoint = f"http://127.0.0.1:{ports['k2v']}"
    line = {
        "k2v_endpoint": endpoint,
        "region": REGION,
        "access_key_id": creds["access_key_id"],
        "secret_access_key": creds["secret_access_key"],
        "bucket": BUCKET,
        "nodes": [{
            "id": info["id"],
            "k2v_endpoint": endpoint,
            "rpc_addr": f"127.0.0.1:{ports['rpc']}",
            "admin_endpoint": None,
            "config": str(config_path),
            "pid": proc.pid,
        }],
    }
    print(json.dumps(line), flush=True)
    if not args.json:
        print(EXAMPLE.format(endpoint=endpoint, bucket=BUCKET, ak=creds["access_key_id"],
                             sk=creds["secret_access_key"], region=REGION), file=sys.stderr)
        print(f"Serving; logs in {log_path}. Press Ctrl-C to stop.", file=sys.stderr, flush=True)
    while proc.poll() is None:
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
    code = proc.returncode
    return 0 if stopping and code == 0 else (code or 0)
