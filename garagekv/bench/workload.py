"""What the benchmark sends: key naming, SigV4 signing and the request bytes of each operation.

Two targets speak the same small vocabulary (``write``, ``read``) so the scenarios run unchanged
against garagekv (or any K2V server) and against etcd's v3 JSON gateway:

- :class:`K2VTarget`: InsertItem (with or without a TTL), ReadItem, ReadBatch, PollItem, InsertBatch, ReadIndex, signed
  with SigV4 (service ``k2v``). The signing key is derived once per UTC day and the date strings
  once per second, so a request costs one SHA-256 of the canonical request and one HMAC.
- :class:`EtcdTarget`: ``POST /v3/kv/put`` and ``POST /v3/kv/range`` with base64 keys and values
  (linearizable ranges, etcd's default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from garagekv.bench.http import Response
from garagekv.util.signing import (
    ALGORITHM,
    SigningKeyCache,
    canonical_request,
    credential_scope,
    format_amz_date,
    sign,
    string_to_sign,
    uri_encode,
)

TOKEN_HEADER = "X-Garage-Causality-Token"
TTL_HEADER = "X-Garage-TTL"
_TOKEN_KEY = TOKEN_HEADER.lower()
READ_ACCEPT = "application/octet-stream, application/json"  # what k2v-client sends
SIGNED_NAMES = "host;x-amz-content-sha256;x-amz-date"
_SAFE = re.compile(r"[A-Za-z0-9._~-]*")


def _enc(s: str) -> str:
    """AWS URI encoding of a query key or value (``/`` encoded), skipping the work for plain text."""
    return s if _SAFE.fullmatch(s) else uri_encode(s, True)


def encode_pairs(pairs: list[tuple[str, str]]) -> tuple[str, str]:
    """(query string as sent, canonical query as signed) of decoded pairs; same result as
    :func:`garagekv.util.signing.encode_query` and :func:`~garagekv.util.signing.canonical_query`."""
    encoded = [f"{_enc(k)}={_enc(v)}" for k, v in pairs]
    wire = "&".join(encoded)
    return wire, ("&".join(sorted(encoded)) if len(encoded) > 1 else wire)


@dataclass(frozen=True)
class KeySpace:
    """``keys`` prefilled items, ``per_partition`` sort keys per partition key, under ``prefix``.

    Item ``i`` is (``<prefix>-p<i // per_partition>``, ``<i % per_partition>``), zero-padded so
    that byte order is numeric order and a ReadBatch range from item ``i`` covers ``i, i+1, ...``.
    New items of the write scenario go to separate ``<prefix>-w<n>`` partitions so the prefilled
    ranges stay as they are.
    """

    prefix: str = "bench"
    keys: int = 10_000
    per_partition: int = 1000

    @property
    def partitions(self) -> int:
        return max(1, -(-self.keys // self.per_partition))

    def item(self, i: int) -> tuple[str, str]:
        return f"{self.prefix}-p{i // self.per_partition:06d}", f"{i % self.per_partition:08d}"

    def partition(self, n: int) -> str:
        return f"{self.prefix}-p{n:06d}"

    def new_item(self, tag: str, seq: int) -> tuple[str, str]:
        """A key never written before (``tag`` is unique per run, process and connection)."""
        return f"{self.prefix}-w{seq % self.partitions:06d}", f"{tag}.{seq:010d}"


class K2VSigner:
    """SigV4 header signing for one host, with the signing key and date strings cached."""

    def __init__(
        self,
        access_key_id: str,
        secret: str,
        region: str,
        host: str,
        keys: SigningKeyCache | None = None,
        service: str = "k2v",
    ) -> None:
        self.access_key_id = access_key_id
        self.region = region
        self.service = service
        self.host = host
        self._secret = secret
        self._keys = keys or SigningKeyCache(maxsize=4)
        self._second = -1
        self._amz_date = ""
        self._scope = ""
        self._key = b""
        self._uris: dict[str, str] = {}

    def _refresh(self, now: float) -> None:
        sec = int(now)
        if sec != self._second:
            self._amz_date = format_amz_date(sec)
            day = self._amz_date[:8]
            self._scope = credential_scope(day, self.region, self.service)
            self._key = self._keys.get(self._secret, day, self.region, self.service)
            self._second = sec

    def _canonical_uri(self, raw_path: str) -> str:
        uri = self._uris.get(raw_path)
        if uri is None:
            if len(self._uris) > 4096:
                self._uris.clear()
            uri = self._uris[raw_path] = uri_encode(raw_path, False)
        return uri

    def headers(
        self, method: str, raw_path: str, canonical_query: str, payload_hash: str, now: float | None = None
    ) -> str:
        """The ``X-Amz-Date``, ``X-Amz-Content-Sha256`` and ``Authorization`` header lines.

        ``raw_path`` is the path as sent (percent-encoded), ``canonical_query`` the sorted,
        AWS-encoded query (see :func:`encode_pairs`).
        """
        self._refresh(time.time() if now is None else now)
        date = self._amz_date
        creq = canonical_request(
            method,
            self._canonical_uri(raw_path),
            canonical_query,
            (("host", self.host), ("x-amz-content-sha256", payload_hash), ("x-amz-date", date)),
            payload_hash,
        )
        sig = sign(self._key, string_to_sign(date, self._scope, creq))
        return (
            f"X-Amz-Date: {date}\r\nX-Amz-Content-Sha256: {payload_hash}\r\n"
            f"Authorization: {ALGORITHM} Credential={self.access_key_id}/{self._scope}, "
            f"SignedHeaders={SIGNED_NAMES}, Signature={sig}\r\n"
        )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


EMPTY_HASH = sha256_hex(b"")


class K2VTarget:
    """Request bytes for one K2V endpoint (``host`` is the ``host:port`` signed and sent)."""

    kind = "k2v"

    def __init__(
        self, host: str, bucket: str, access_key_id: str, secret: str, region: str, keys: SigningKeyCache | None = None
    ) -> None:
        self.host = host
        self.bucket = bucket
        self.signer = K2VSigner(access_key_id, secret, region, host, keys)
        self._bucket_path = "/" + quote(bucket, safe="")
        self._paths: dict[str, str] = {}

    def _request(
        self,
        method: str,
        raw_path: str,
        pairs: list[tuple[str, str]],
        body: bytes = b"",
        body_hash: str | None = None,
        extra: str = "",
    ) -> bytes:
        payload_hash = body_hash or (sha256_hex(body) if body else EMPTY_HASH)
        wire, canonical = encode_pairs(pairs) if pairs else ("", "")
        target = f"{raw_path}?{wire}" if pairs else raw_path
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"{self.signer.headers(method, raw_path, canonical, payload_hash)}{extra}"
        )
        if body or method in ("PUT", "POST"):
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1") + body

    def _item_path(self, pk: str) -> str:
        path = self._paths.get(pk)
        if path is None:
            if len(self._paths) > 4096:
                self._paths.clear()
            path = self._paths[pk] = f"{self._bucket_path}/{quote(pk, safe='')}"
        return path

    # --- the shared vocabulary -------------------------------------------------------------
    def write(self, pk: str, sk: str, value: bytes, value_hash: str | None = None, token: str | None = None) -> bytes:
        """InsertItem (``value_hash``: the value's SHA-256 hex, when the caller has it cached)."""
        extra = f"{TOKEN_HEADER}: {token}\r\n" if token else ""
        return self._request("PUT", self._item_path(pk), [("sort_key", sk)], value, value_hash, extra)

    def read(self, pk: str, sk: str) -> bytes:
        """ReadItem, accepting one raw value or JSON, as k2v-client does."""
        return self._request("GET", self._item_path(pk), [("sort_key", sk)], extra=f"Accept: {READ_ACCEPT}\r\n")

    @staticmethod
    def check_write(resp: Response) -> str | None:
        return None if resp.status == 204 or resp.status == 200 else str(resp.status)

    @staticmethod
    def check_read(resp: Response) -> str | None:
        return None if resp.status == 200 or resp.status == 204 else str(resp.status)

    @staticmethod
    def token(resp: Response) -> str | None:
        return resp.headers.get(_TOKEN_KEY)

    # --- K2V only ----------------------------------------------------------------------------
    def write_ttl(self, pk: str, sk: str, value: bytes, value_hash: str | None, ttl: int) -> bytes:
        """InsertItem of a value that expires ``ttl`` seconds later."""
        return self._request(
            "PUT", self._item_path(pk), [("sort_key", sk)], value, value_hash, f"{TTL_HEADER}: {ttl}\r\n"
        )

    def read_batch(self, pk: str, start: str, limit: int) -> bytes:
        body = json.dumps([{"partitionKey": pk, "start": start, "limit": limit}]).encode()
        return self._request("POST", self._bucket_path, [("search", "")], body)

    def poll(self, pk: str, sk: str, token: str, timeout: int) -> bytes:
        pairs = [("sort_key", sk), ("causality_token", token), ("timeout", str(timeout))]
        return self._request("GET", self._item_path(pk), pairs, extra=f"Accept: {READ_ACCEPT}\r\n")

    def insert_batch(self, items: list[tuple[str, str, str | None, bytes | None]]) -> bytes:
        """InsertBatch of (pk, sk, causality token or None, value or None for a tombstone)."""
        body = json.dumps(
            [
                {"pk": pk, "sk": sk, "ct": ct, "v": None if v is None else base64.b64encode(v).decode()}
                for pk, sk, ct, v in items
            ]
        ).encode()
        return self._request("POST", self._bucket_path, [], body)

    def read_index(self, start: str | None, limit: int) -> bytes:
        pairs = [("limit", str(limit))]
        if start:
            pairs.insert(0, ("start", start))
        return self._request("GET", self._bucket_path, pairs)


class EtcdTarget:
    """etcd v3 JSON gateway: the item (pk, sk) is the key ``pk/sk``."""

    kind = "etcd"

    def __init__(self, host: str) -> None:
        self.host = host
        self._value: tuple[bytes, str] = (b"", "")  # the last value and its base64

    def _b64_value(self, value: bytes) -> str:
        if self._value[0] is not value:
            self._value = (value, base64.b64encode(value).decode())
        return self._value[1]

    def _post(self, path: str, obj: dict[str, Any]) -> bytes:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body

    @staticmethod
    def _b64(s: str | bytes) -> str:
        return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()

    def write(self, pk: str, sk: str, value: bytes, value_hash: str | None = None, token: str | None = None) -> bytes:
        return self._post("/v3/kv/put", {"key": self._b64(f"{pk}/{sk}"), "value": self._b64_value(value)})

    def read(self, pk: str, sk: str) -> bytes:
        return self._post("/v3/kv/range", {"key": self._b64(f"{pk}/{sk}")})

    @staticmethod
    def check_write(resp: Response) -> str | None:
        return None if resp.status == 200 else str(resp.status)

    @staticmethod
    def check_read(resp: Response) -> str | None:
        if resp.status != 200:
            return str(resp.status)
        return None if b'"kvs"' in resp.body else "miss"

    @staticmethod
    def token(resp: Response) -> str | None:
        return None


def make_target(
    kind: str,
    endpoint_host: str,
    bucket: str = "",
    access_key_id: str = "",
    secret: str = "",
    region: str = "garage",
    keys: SigningKeyCache | None = None,
) -> K2VTarget | EtcdTarget:
    if kind == "etcd":
        return EtcdTarget(endpoint_host)
    return K2VTarget(endpoint_host, bucket, access_key_id, secret, region, keys)


__all__ = [
    "EMPTY_HASH",
    "EtcdTarget",
    "K2VSigner",
    "K2VTarget",
    "KeySpace",
    "encode_pairs",
    "make_target",
    "sha256_hex",
]
