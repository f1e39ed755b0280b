"""Test support: real node processes on loopback ports, and a botocore-signed HTTP client."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
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

from garagekv.admin.local_socket import call

REGION = "garage"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@dataclass
class NodeProcess:
    """One ``garagekv server`` process with its own directory and ports."""

    root: Path
    k2v_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    extra_config: str = ""
    k2v_extra: str = ""
    proc: subprocess.Popen | None = None

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
rpc_secret = "{'ab' * 32}"
{self.extra_config}
[s3_api]
s3_region = "{REGION}"
[k2v_api]
api_bind_addr = "127.0.0.1:{self.k2v_port}"
{self.k2v_extra}
"""
        )

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        log = open(self.root / "node.log", "ab")  # noqa: SIM115 - owned by the child process
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "garagekv.cli.main", "-c", str(self.config_path), "server"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
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
        return asyncio.run(call(self.metadata_dir, op, args, timeout=5.0))

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
