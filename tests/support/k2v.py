"""Shared helpers for the K2V HTTP integration tests (no tests in this module).

Most requests go through ``K2VHttp`` (signed by botocore). For requests botocore cannot produce
(odd paths it would normalise, form-encoded queries, wrong scopes, skewed dates, unsigned
extra headers...) ``send_signed`` builds the signature by hand from the SigV4 primitives.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from garagekv.util.signing import (
    ALGORITHM,
    canonical_query,
    canonical_request,
    credential_scope,
    derive_signing_key,
    format_amz_date,
    parse_query,
    sign,
    string_to_sign,
    uri_encode,
)
from tests.support import REGION, K2VHttp, Response

BUCKET = "test-bucket"
TOKEN = "X-Garage-Causality-Token"
JSON = "application/json"
BINARY = "application/octet-stream"
EMPTY_TOKEN = "AAAAAAAAAAA"


def q(s: str) -> str:
    return quote(s, safe="")


def ipath(pk: str | None = None, bucket: str = BUCKET) -> str:
    """``/bucket`` or ``/bucket/<percent-encoded pk>``."""
    return f"/{bucket}" if pk is None else f"/{bucket}/{q(pk)}"


def new_pk(tag: str = "pk") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


def b64(v: bytes | str) -> str:
    return base64.b64encode(v.encode() if isinstance(v, str) else v).decode()


def assert_error(
    r: Response,
    status: int,
    code: str,
    *,
    path: str | None = None,
    message: str | None = None,
    prefix: str | None = None,
) -> dict:
    """A K2V JSON error body: exactly code/message/region/path, Content-Type application/json."""
    assert r.status == status, (r.status, r.body)
    assert r.header("Content-Type") == JSON, r.headers
    body = r.json()
    assert set(body) == {"code", "message", "region", "path"}, body
    assert all(isinstance(v, str) for v in body.values()), body
    assert body["code"] == code, body
    assert body["region"] == REGION, body
    if path is not None:
        assert body["path"] == path, body
    if message is not None:
        assert message in body["message"], body
    if prefix is not None:
        assert body["message"].startswith(prefix), body
    assert r.header(TOKEN) is None
    return body


# ---- item helpers ------------------------------------------------------------------------------


def put(
    k2v: K2VHttp, pk: str, sk: str, value: bytes | str = b"", token: str | None = None, bucket: str = BUCKET
) -> None:
    headers = {TOKEN: token} if token is not None else None
    r = k2v.request("PUT", ipath(pk, bucket), f"sort_key={q(sk)}", value, headers=headers)
    assert r.status == 204, (r.status, r.body)
    assert r.body == b""


def delete(k2v: K2VHttp, pk: str, sk: str, token: str | None = None, bucket: str = BUCKET) -> None:
    headers = {TOKEN: token} if token is not None else None
    r = k2v.request("DELETE", ipath(pk, bucket), f"sort_key={q(sk)}", headers=headers)
    assert r.status == 204, (r.status, r.body)
    assert r.body == b""


def read(k2v: K2VHttp, pk: str, sk: str, accept: str | None = None, bucket: str = BUCKET) -> Response:
    headers = {"Accept": accept} if accept is not None else None
    return k2v.request("GET", ipath(pk, bucket), f"sort_key={q(sk)}", headers=headers)


def read_json(k2v: K2VHttp, pk: str, sk: str, bucket: str = BUCKET) -> tuple[list, str]:
    """(values as base64/None, token) of an item that exists."""
    r = read(k2v, pk, sk, bucket=bucket)
    assert r.status == 200, (r.status, r.body)
    return r.json(), r.header(TOKEN)


def token_of(k2v: K2VHttp, pk: str, sk: str, bucket: str = BUCKET) -> str:
    return read_json(k2v, pk, sk, bucket)[1]


def insert_batch(k2v: K2VHttp, items: list[dict], bucket: str = BUCKET) -> None:
    r = k2v.json("POST", f"/{bucket}", items)
    assert r.status == 204, (r.status, r.body)
    assert r.body == b""


def read_batch(k2v: K2VHttp, queries: list[dict], bucket: str = BUCKET) -> list[dict]:
    r = k2v.json("POST", f"/{bucket}", queries, query="search")
    assert r.status == 200, (r.status, r.body)
    assert r.header("Content-Type") == JSON
    return r.json()


def partition(k2v: K2VHttp, pk: str, bucket: str = BUCKET, **query: Any) -> dict[str, list]:
    """{sk: values} of every item of a partition, tombstones included."""
    res = read_batch(k2v, [{"partitionKey": pk, "tombstones": True, **query}], bucket)[0]
    assert res["more"] is False
    return {i["sk"]: i["v"] for i in res["items"]}


def assert_partition_empty(k2v: K2VHttp, pk: str, bucket: str = BUCKET) -> None:
    assert partition(k2v, pk, bucket) == {}


def decode_token(token: str) -> tuple[int, list[tuple[int, int]]]:
    """(checksum, [(node, time)]) of a causality token; asserts the documented layout."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert (len(raw) - 8) % 16 == 0, token
    checksum = int.from_bytes(raw[:8], "big")
    pairs = [
        (int.from_bytes(raw[i : i + 8], "big"), int.from_bytes(raw[i + 8 : i + 16], "big"))
        for i in range(8, len(raw), 16)
    ]
    return checksum, pairs


def encode_token(
    pairs: list[tuple[int, int]], checksum: int | None = None, urlsafe: bool = True, pad: bool = False
) -> str:
    if checksum is None:
        checksum = 0
        for n, t in pairs:
            checksum ^= n ^ t
    raw = checksum.to_bytes(8, "big") + b"".join(n.to_bytes(8, "big") + t.to_bytes(8, "big") for n, t in pairs)
    s = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()
    return s if pad else s.rstrip("=")


# ---- raw HTTP and hand-built signatures --------------------------------------------------------


def raw_send(
    host: str,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
    encode_chunked: bool = False,
) -> Response:
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {}, encode_chunked=encode_chunked)
        r = conn.getresponse()
        return Response(r.status, dict(r.getheaders()), r.read())
    finally:
        conn.close()


def raw_socket(host: str, data: bytes, timeout: float = 10.0) -> Response:
    """Send bytes as they are on a fresh connection and parse the (single) response."""
    h, _, p = host.rpartition(":")
    with socket.create_connection((h, int(p)), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                hdrs = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                cl = next((int(v) for k, v in hdrs.items() if k.lower() == "content-length"), None)
                if cl is not None and len(rest) >= cl:
                    break
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Response(status, hdrs, rest)


def sign_headers(
    k2v: K2VHttp,
    method: str,
    raw_path: str,
    raw_query: str = "",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    now: float | None = None,
    payload: str | None = None,
    region: str | None = None,
    service: str = "k2v",
    scope_date: str | None = None,
    signed_names: list[str] | None = None,
    access_key: str | None = None,
    secret: str | None = None,
) -> dict[str, str]:
    """Every header to send (``headers`` + host + x-amz-date + x-amz-content-sha256 + Authorization).

    By default every header is signed; ``signed_names`` restricts the list. The signing key and
    the credential scope use ``scope_date``/``region``/``service`` when given.
    """
    amz_date = format_amz_date(time.time() if now is None else now)
    payload = hashlib.sha256(body).hexdigest() if payload is None else payload
    all_headers = {"host": k2v.host, "x-amz-date": amz_date, "x-amz-content-sha256": payload}
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    names = sorted(all_headers) if signed_names is None else sorted(signed_names)
    signed = [(n, all_headers[n]) for n in names]
    region = region or k2v.region
    date = scope_date or amz_date[:8]
    scope = credential_scope(date, region, service)
    creq = canonical_request(
        method, uri_encode(raw_path, False), canonical_query(parse_query(raw_query)), signed, payload
    )
    key = derive_signing_key(secret or k2v.secret_key, date, region, service)
    sig = sign(key, string_to_sign(amz_date, scope, creq))
    auth = (
        f"{ALGORITHM} Credential={access_key or k2v.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={sig}"
    )
    out = {k: v for k, v in all_headers.items() if k != "host"}
    out["Authorization"] = auth
    return out


def send_signed(
    k2v: K2VHttp,
    method: str,
    raw_path: str,
    raw_query: str = "",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    extra_unsigned: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    timeout: float = 15.0,
    **sign_kw: Any,
) -> Response:
    """Sign by hand (no normalisation of path or query), then send exactly ``raw_path?raw_query``."""
    hdrs = sign_headers(k2v, method, raw_path, raw_query, body or b"", headers, **sign_kw)
    hdrs.update(extra_unsigned or {})
    for name in drop:
        hdrs = {k: v for k, v in hdrs.items() if k.lower() != name.lower()}
    target = raw_path + (f"?{raw_query}" if raw_query else "")
    return raw_send(k2v.host, method, target, body, hdrs, timeout=timeout)


def botocore_headers(
    k2v: K2VHttp, method: str, path: str, query: str = "", body: bytes = b"", headers: dict[str, str] | None = None
) -> dict[str, str]:
    """Headers as botocore's SigV4 signer produces them (to tamper with afterwards)."""
    url = f"http://{k2v.host}{path}" + (f"?{query}" if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    req.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    SigV4Auth(Credentials(k2v.access_key, k2v.secret_key), "k2v", k2v.region).add_auth(req)
    return dict(req.headers.items())


class Background:
    """Run a blocking call in a thread (a poll), to write meanwhile from the test."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._result: Any = None
        self._error: BaseException | None = None
        self.started = time.monotonic()
        self.elapsed: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in result()
            self._error = e
        self.elapsed = time.monotonic() - self.started

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 15.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        if self._error is not None:
            raise self._error
        return self._result


def body_json(r: Response) -> Any:
    return json.loads(r.body)
