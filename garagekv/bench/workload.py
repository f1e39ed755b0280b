"""What the benchmark sends: key naming, SigV4 signing and the request bytes of each operation.

Three targets speak the same small vocabulary (``write``, ``read``), and the K2V and etcd targets
also ``cas``, ``txn`` and ``read_latest``, so the scenarios run unchanged against garagekv (or any
K2V server), against etcd's v3 JSON gateway and (``write``/``read`` only) against the
Hulykvs-compatible API:

- :class:`K2VTarget`: InsertItem (with or without a TTL), ReadItem, ReadBatch, PollItem, PollRanges, InsertBatch,
  ReadIndex, signed
  with SigV4 (service ``k2v``). The signing key is derived once per UTC day and the date strings
  once per second, so a request costs one SHA-256 of the canonical request and one HMAC.
  Conditional InsertItem (``If-Match`` / ``If-None-Match``), linearizable ReadItem and partition
  transactions (``POST /<bucket>/<pk>?txn``): docs/k2v-api.md §5a and §5b.
- :class:`EtcdTarget`: ``POST /v3/kv/put``, ``POST /v3/kv/range`` (linearizable, etcd's default)
  and ``POST /v3/kv/txn`` comparing ``mod_revision``, with base64 keys and values.
- :class:`HulyTarget`: API v2 ``PUT``/``GET /api2/<workspace>/<namespace>/<key>`` with one
  bearer token per connection (docs/hulykvs.md).

The consensus scenarios chain **tokens**: a K2V causality token, or an etcd ``mod_revision`` as
a decimal string. ``None`` stands for "the item does not exist yet" (``If-None-Match: *``, or
``mod_revision == 0``). Each target parses its own answers into ``(error code or None, ...)``
so the scenario loops do not know which protocol they speak.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jwt

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
LINEARIZABLE = "X-Garage-Consistency: linearizable\r\n"
#: A conditional write that did not happen because its condition did not hold (nothing written).
CONFLICT = "412"
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
        self._value: tuple[bytes, str] = (b"", "")  # the last value put by txn and its base64

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

    # --- the consensus path (docs/k2v-api.md §5a, §5b) -------------------------------------------
    def cas(
        self,
        pk: str,
        sk: str,
        value: bytes,
        value_hash: str | None = None,
        token: str | None = None,
        read_on_failure: bool = True,
    ) -> bytes:
        """Conditional InsertItem: ``If-Match: <token>``, or ``If-None-Match: *`` without one.

        A 412 always carries the item's current token, so ``read_on_failure`` costs nothing here.
        """
        extra = f"If-Match: {token}\r\n" if token else "If-None-Match: *\r\n"
        return self._request("PUT", self._item_path(pk), [("sort_key", sk)], value, value_hash, extra)

    @staticmethod
    def cas_result(resp: Response) -> tuple[str | None, str | None]:
        """(error code or None, the item's token now): after the write on 204, current on 412."""
        if resp.status == 204 or resp.status == 200:
            return None, resp.headers.get(_TOKEN_KEY)
        if resp.status == 412:
            return CONFLICT, resp.headers.get(_TOKEN_KEY)
        return str(resp.status), None

    def read_latest(self, pk: str, sk: str) -> bytes:
        """Linearizable ReadItem: a consensus round that returns the state later rounds build on."""
        return self._request(
            "GET", self._item_path(pk), [("sort_key", sk)], extra=f"Accept: {READ_ACCEPT}\r\n{LINEARIZABLE}"
        )

    @staticmethod
    def latest_result(resp: Response) -> tuple[str | None, bytes | None, str | None]:
        """(error code or None, the single live value or None, token) of :meth:`read_latest`."""
        if resp.status == 404:
            return None, None, None
        token = resp.headers.get(_TOKEN_KEY)
        if resp.status == 204:
            return None, None, token
        if resp.status != 200:
            return str(resp.status), None, None
        if resp.headers.get("content-type", "").startswith("application/octet-stream"):
            return None, resp.body, token
        live = [v for v in json.loads(resp.body) if v is not None]
        if len(live) != 1:
            return "values", None, token  # concurrent values: not a single-valued item
        return None, base64.b64decode(live[0]), token

    def txn(self, pk: str, compares: list[tuple[str, str | None]], puts: list[tuple[str, bytes]]) -> bytes:
        """A partition transaction: every (sort key, token) of ``compares`` holds (a None token:
        the item does not exist), then ``puts``; otherwise read the compared items, so a failed
        transaction returns the tokens to retry with."""
        obj = {
            "compare": [
                {"sk": sk, "target": "token", "token": tok} if tok else {"sk": sk, "target": "exists", "exists": False}
                for sk, tok in compares
            ],
            "success": [{"op": "put", "sk": sk, "v": self._b64_value(v)} for sk, v in puts],
            "failure": [{"op": "read", "sk": sk} for sk, _ in compares],
        }
        body = json.dumps(obj, separators=(",", ":")).encode()
        return self._request("POST", self._item_path(pk), [("txn", "")], body)

    @staticmethod
    def txn_result(resp: Response, sks: list[str]) -> tuple[str | None, list[str | None]]:
        """(error code or None, the tokens of ``sks`` now: written on success, read on failure)."""
        if resp.status != 200:
            return str(resp.status), [None] * len(sks)
        answer = json.loads(resp.body)
        cts = {r["sk"]: r.get("ct") for r in answer.get("results", [])}
        return (None if answer.get("succeeded") else CONFLICT), [cts.get(sk) for sk in sks]

    def _b64_value(self, value: bytes) -> str:
        if self._value[0] is not value:
            self._value = (value, base64.b64encode(value).decode())
        return self._value[1]

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

    def poll_ranges(self, ranges: list[tuple[str, str | None]], timeout: int) -> bytes:
        """PollRanges (docs/k2v-api.md §8) over whole partitions: (partition key, seen marker or
        None for the partition's first scan) each, in the order the answer will follow."""
        obj = {
            "timeout": timeout,
            "ranges": [{"partitionKey": pk, "seenMarker": m} if m else {"partitionKey": pk} for pk, m in ranges],
        }
        body = json.dumps(obj, separators=(",", ":")).encode()
        return self._request("POST", self._bucket_path, [("poll_ranges", "")], body)

    @staticmethod
    def poll_ranges_result(
        resp: Response, ranges: list[tuple[str, str | None]]
    ) -> tuple[str | None, list[tuple[str, str | None]], list[str]]:
        """(error code or None, the ranges with the markers to send next, the sort keys reported).

        A 304 (nothing new before the timeout) keeps the markers and reports nothing; a range the
        answer carries no marker for (its first scan is still to come) keeps the one it was sent.
        """
        if resp.status == 304:
            return None, ranges, []
        if resp.status != 200:
            return str(resp.status), ranges, []
        try:
            answer = json.loads(resp.body)["ranges"]
            if len(answer) != len(ranges):
                return "bad-answer", ranges, []
            after: list[tuple[str, str | None]] = []
            sks: list[str] = []
            for (pk, marker), r in zip(ranges, answer, strict=True):
                if r["partitionKey"] != pk:
                    return "bad-answer", ranges, []
                after.append((pk, r.get("seenMarker") or marker))
                sks.extend(item["sk"] for item in r["items"])
        except (ValueError, KeyError, TypeError):
            return "bad-answer", ranges, []
        return None, after, sks

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

    # --- Txn (compare on mod_revision) ---------------------------------------------------------
    def _txn(self, compares: list[tuple[str, str | None]], success: list[Any], failure: list[Any]) -> bytes:
        return self._post(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": tok or "0"}
                    for key, tok in compares
                ],
                "success": success,
                "failure": failure,
            },
        )

    def cas(
        self,
        pk: str,
        sk: str,
        value: bytes,
        value_hash: str | None = None,
        token: str | None = None,
        read_on_failure: bool = True,
    ) -> bytes:
        """Txn: ``mod_revision == token`` (0: the key does not exist), then put; on failure a
        range of the key when ``read_on_failure``, which gives its current ``mod_revision`` (as a
        K2V 412 gives the current token)."""
        key = self._b64(f"{pk}/{sk}")
        put = {"request_put": {"key": key, "value": self._b64_value(value)}}
        failure = [{"request_range": {"key": key}}] if read_on_failure else []
        return self._txn([(key, token)], [put], failure)

    @staticmethod
    def _revision(answer: dict[str, Any]) -> str | None:
        rev = answer.get("header", {}).get("revision")
        return None if rev is None else str(rev)

    @staticmethod
    def _range_mod(rng: dict[str, Any]) -> str | None:
        kvs = rng.get("kvs") or []
        return str(kvs[0]["mod_revision"]) if kvs else None

    @classmethod
    def cas_result(cls, resp: Response) -> tuple[str | None, str | None]:
        """(error code or None, the key's mod_revision now, when known)."""
        if resp.status != 200:
            return str(resp.status), None
        answer = json.loads(resp.body)
        if answer.get("succeeded"):
            return None, cls._revision(answer)  # a put's mod_revision is the txn's revision
        responses = answer.get("responses") or []
        rng = responses[0].get("response_range", {}) if responses else {}
        return CONFLICT, cls._range_mod(rng)

    def read_latest(self, pk: str, sk: str) -> bytes:
        return self.read(pk, sk)  # ranges are linearizable unless asked to be serializable

    @classmethod
    def latest_result(cls, resp: Response) -> tuple[str | None, bytes | None, str | None]:
        if resp.status != 200:
            return str(resp.status), None, None
        kvs = json.loads(resp.body).get("kvs") or []
        if not kvs:
            return None, None, None
        return None, base64.b64decode(kvs[0].get("value", "")), str(kvs[0]["mod_revision"])

    def txn(self, pk: str, compares: list[tuple[str, str | None]], puts: list[tuple[str, bytes]]) -> bytes:
        """Txn comparing the ``mod_revision`` of every (sort key, token), then the puts; on
        failure a range of each compared key (their current revisions)."""
        return self._txn(
            [(self._b64(f"{pk}/{sk}"), tok) for sk, tok in compares],
            [{"request_put": {"key": self._b64(f"{pk}/{sk}"), "value": self._b64_value(v)}} for sk, v in puts],
            [{"request_range": {"key": self._b64(f"{pk}/{sk}")}} for sk, _ in compares],
        )

    @classmethod
    def txn_result(cls, resp: Response, sks: list[str]) -> tuple[str | None, list[str | None]]:
        if resp.status != 200:
            return str(resp.status), [None] * len(sks)
        answer = json.loads(resp.body)
        if answer.get("succeeded"):
            return None, [cls._revision(answer)] * len(sks)
        ranges = [r.get("response_range", {}) for r in answer.get("responses") or []]
        mods = [cls._range_mod(r) for r in ranges]
        return CONFLICT, (mods + [None] * len(sks))[: len(sks)]


def mint_huly_token(secret: str, workspace: str, account: str | None = None) -> str:
    """An HS256 token as Huly's services mint them (``garagekv hulykvs token``): a fresh account
    bound to ``workspace``, without expiry. A client mints one and reuses it for every request."""
    payload = {"account": account or str(uuid.uuid4()), "workspace": workspace}
    return str(jwt.encode(payload, secret, algorithm="HS256"))


class HulyTarget:
    """The Hulykvs-compatible API v2: the item (pk, sk) is the key ``sk`` of namespace ``pk``."""

    kind = "hulykvs"

    def __init__(self, host: str, workspace: str, token: str) -> None:
        self.host = host
        self._prefix = f"/api2/{quote(workspace, safe='')}/"
        self._auth = f"Host: {host}\r\nAuthorization: Bearer {token}\r\n"

    def _path(self, pk: str, sk: str) -> str:
        return f"{self._prefix}{quote(pk, safe='')}/{quote(sk, safe='')}"

    def write(self, pk: str, sk: str, value: bytes, value_hash: str | None = None, token: str | None = None) -> bytes:
        """PUT (an upsert: Hulykvs clients send no condition for a plain store)."""
        head = f"PUT {self._path(pk, sk)} HTTP/1.1\r\n{self._auth}Content-Length: {len(value)}\r\n\r\n"
        return head.encode("latin-1") + value

    def read(self, pk: str, sk: str) -> bytes:
        return f"GET {self._path(pk, sk)} HTTP/1.1\r\n{self._auth}\r\n".encode("latin-1")

    @staticmethod
    def check_write(resp: Response) -> str | None:
        return None if resp.status == 204 or resp.status == 201 else str(resp.status)

    @staticmethod
    def check_read(resp: Response) -> str | None:
        return None if resp.status == 200 else str(resp.status)

    @staticmethod
    def token(resp: Response) -> str | None:
        return None


Target = K2VTarget | EtcdTarget | HulyTarget
ConsensusTarget = K2VTarget | EtcdTarget


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
    "CONFLICT",
    "EMPTY_HASH",
    "ConsensusTarget",
    "EtcdTarget",
    "HulyTarget",
    "K2VSigner",
    "K2VTarget",
    "KeySpace",
    "encode_pairs",
    "make_target",
    "mint_huly_token",
    "sha256_hex",
    "Target",
]
