"""Test support for the Hulykvs-compatible API: a config section, tokens and a raw HTTP client."""

from __future__ import annotations

import http.client
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jwt

from tests.support import Response

SYSTEM = "1749089e-22e6-48de-af4e-165e18fbd2f9"
SECRET = "huly-test-secret-" + "0123456789abcdef" * 3  # 64 bytes: long enough for HS512 too
DEFAULT_WS = "0f1e2d3c-4b5a-4678-9abc-def012345678"


def section(port: int, extra: str = "", secret: str = SECRET, default_ws: str = DEFAULT_WS) -> str:
    """A ``[hulykvs_api]`` section for ``NodeProcess.extra_config`` (it must come last there)."""
    return (
        f'[hulykvs_api]\napi_bind_addr = "127.0.0.1:{port}"\ntoken_secret = "{secret}"\n'
        f'default_workspace_uuid = "{default_ws}"\n{extra}'
    )


def token(
    account: str = SYSTEM,
    workspace: str | None = None,
    secret: str = SECRET,
    alg: str = "HS256",
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"account": account, **claims}
    if workspace is not None:
        payload["workspace"] = workspace
    return jwt.encode(payload, secret, algorithm=alg)


def user_token(workspace: str, **claims: Any) -> str:
    return token(str(uuid.uuid4()), workspace, **claims)


def expired_token() -> str:
    return token(exp=int(time.time()) - 5)


def q(s: str) -> str:
    return quote(s, safe="")


@dataclass
class HulyHttp:
    port: int
    tok: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        tok: str | None = None,
        auth: bool = True,
    ) -> Response:
        if isinstance(body, str):
            body = body.encode()
        hdrs = dict(headers or {})
        t = tok if tok is not None else self.tok
        if auth and t is not None:
            hdrs.setdefault("Authorization", f"Bearer {t}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    def put(self, ws: str, ns: str, key: str, value: bytes | str, **headers: str) -> Response:
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        return self.request("PUT", f"/api2/{ws}/{q(ns)}/{q(key)}", value, hdrs)

    def get(self, ws: str, ns: str, key: str) -> Response:
        return self.request("GET", f"/api2/{ws}/{q(ns)}/{q(key)}")

    def delete(self, ws: str, ns: str, key: str, **headers: str) -> Response:
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        return self.request("DELETE", f"/api2/{ws}/{q(ns)}/{q(key)}", headers=hdrs)

    def list(self, ws: str, ns: str, prefix: str | None = None) -> Response:
        query = "" if prefix is None else f"?prefix={q(prefix)}"
        return self.request("GET", f"/api2/{ws}/{q(ns)}{query}")
