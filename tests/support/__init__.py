"""Test support: real node processes on loopback ports, and a botocore-signed HTTP client."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from garagekv.admin.remote import admin_call
from garagekv.util.config import load_config

REGION = "garage"


# Ports handed out in this run: a node may not have bound its port yet when the next one is picked.
_HANDED_OUT: set[int] = set()


def _pick_ports(offsets: list[int]) -> int:
    """A base port P with P+d free for every d in offsets, none handed out before in this run.

    Picked below the kernel's ephemeral range (32768 and up): there, no outgoing connection of
    this or an earlier test (many in TIME-WAIT on a busy machine) can take the port between the
    pick and the node's bind, which a port the kernel chose for us (bind to 0) would allow.
    """
    for _ in range(1000):
        base = random.randrange(12000, 32000)
        wanted = [base + d for d in offsets]
        if any(port in _HANDED_OUT for port in wanted):
            continue
        try:
            for port in wanted:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _HANDED_OUT.update(wanted)
        return base
    raise RuntimeError("no free port block")


def free_port() -> int:
    return _pick_ports([0])


def free_port_block(size: int) -> int:
    """A port P with P .. P+size-1 all free (a host's workers use RPC ports P+i)."""
    return _pick_ports(list(range(size)))


def free_dev_port(nodes: int = 1) -> int:
    """A base port P for ``garagekv dev --port P``: P+10i, P-3+10i, P-1+10i and P+1+10i all free."""
    return _pick_ports([10 * i + d for i in range(nodes) for d in (0, -3, -1, 1)])


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


async def eventually(pred: Any, limit: float = 5.0) -> None:
    """Await (boundedly) until ``pred()`` holds: work that finishes after a call returns (the last
    replica of a quorum write, a cancelled task unwinding) is waited for, never slept on."""
    async with asyncio.timeout(limit):
        while not pred():
            await asyncio.sleep(0.01)


def wait_for(pred: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something truthy (then return it) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_exc!r})")


FAST_PINGS = "rpc_ping_interval_msec = 300\nrpc_ping_timeout_msec = 1000\n"


@dataclass
class NodeProcess:
    """One ``garagekv server`` process with its own directory and ports."""

    root: Path
    k2v_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    extra_config: str = ""
    k2v_extra: str = ""
    rpc_secret: str = "ab" * 32
    proc: subprocess.Popen | None = None
    admin_port: int | None = None  # set to serve the admin API (e.g. free_port())
    admin_token: str | None = None
    metrics_token: str | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "garagekv.toml"

    @property
    def metadata_dir(self) -> Path:
        return self.root / "meta"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"""metadata_dir = "meta"
rpc_bind_addr = "127.0.0.1:{self.rpc_port}"
rpc_secret = "{self.rpc_secret}"
{self.extra_config}
[s3_api]
s3_region = "{REGION}"
[k2v_api]
api_bind_addr = "127.0.0.1:{self.k2v_port}"
{self.k2v_extra}
{self._admin_section()}"""
        )

    def _admin_section(self) -> str:
        if self.admin_port is None:
            return ""
        lines = ["[admin]", f'api_bind_addr = "127.0.0.1:{self.admin_port}"']
        if self.admin_token is not None:
            lines.append(f'admin_token = "{self.admin_token}"')
        if self.metrics_token is not None:
            lines.append(f'metrics_token = "{self.metrics_token}"')
        return "\n".join(lines) + "\n"

    def admin_http(
        self,
        method: str,
        path: str,
        query: str = "",
        body: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """A request to this node's admin API; ``token`` defaults to ``admin_token`` ("" sends none)."""
        assert self.admin_port is not None, "this node has no admin API"
        token = self.admin_token if token is None else token
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=30)
        try:
            conn.request(method, path + (f"?{query}" if query else ""), body=data, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        log = open(self.root / "node.log", "ab")  # noqa: SIM115 - owned by the child process
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "garagekv.cli.main", "-c", str(self.config_path), "server"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {(self.root / 'node.log').read_text()[-2000:]}")
            try:
                self.admin("node.info")
                with socket.create_connection(("127.0.0.1", self.k2v_port), timeout=1):
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError("node did not become ready")

    def admin(self, op: str, args: dict | None = None) -> Any:
        """Run an operator command on this node over the cluster RPC, as the CLI does."""
        return asyncio.run(admin_call(load_config(self.config_path), op, args, timeout=10.0))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def node_id(self) -> str:
        return (self.metadata_dir / "node_key.pub").read_bytes().hex()

    @property
    def peer_spec(self) -> str:
        return f"{self.node_id}@127.0.0.1:{self.rpc_port}"

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``garagekv -c <this node's config> ARGS``."""
        r = subprocess.run(
            [sys.executable, "-m", "garagekv.cli.main", "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert r.returncode == 0, r.stderr
        return r

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.k2v_port}"


@dataclass
class K2VHttp:
    """Raw HTTP to a K2V endpoint, signed by botocore's SigV4 signer (service ``k2v``)."""

    host: str
    access_key: str
    secret_key: str
    region: str = REGION

    def request(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        sign: bool = True,
        timeout: float = 30.0,
        content_sha: str | None = None,
    ) -> Response:
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes | type(None)):
            body = json.dumps(body).encode()
        url = f"http://{self.host}{path}" + (f"?{query}" if query else "")
        hdrs = dict(headers or {})
        if sign:
            req = AWSRequest(method=method, url=url, data=body or b"", headers=hdrs)
            req.headers["X-Amz-Content-SHA256"] = content_sha if content_sha is not None else _sha(body or b"")
            SigV4Auth(Credentials(self.access_key, self.secret_key), "k2v", self.region).add_auth(req)
            hdrs = dict(req.headers.items())
        conn = http.client.HTTPConnection(self.host, timeout=timeout)
        try:
            conn.request(method, path + (f"?{query}" if query else ""), body=body, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    def json(self, method: str, path: str, data: Any, query: str = "", **kw: Any) -> Response:
        return self.request(method, path, query, json.dumps(data).encode(), **kw)


def _sha(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


def q(s: str) -> str:
    return quote(s, safe="")
