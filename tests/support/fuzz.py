"""Random requests for the HTTP APIs, built to reach past routing into the handlers.

Each generator draws from a seeded ``random.Random``, so a failing request can be replayed from
its seed and index. The requests are mostly well-routed (a method, path and keyword the API
serves) with one or two fields out of shape: random query values, header values that are not
UTF-8 (sent as Latin-1 bytes), JSON bodies with fields dropped, retyped or repeated, and a few
bodies that are not JSON at all. What the tests check is the contract for bad input: a precise
4xx with the API's error body, never a 5xx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from garagekv.api.hulykvs.auth import SYSTEM_ACCOUNT

WEIRD = ["", "a", "é", "\x7f", "a" * 300, "%", "%zz", "%ff", "/", "//x", "..", "😀", " ", "+", "é\u2028"]
#: K2V: (method, with a partition key, keyword) of every endpoint (docs/k2v-api.md §1).
K2V_ENDPOINTS = [
    ("GET", True, None),
    ("PUT", True, None),
    ("DELETE", True, None),
    ("GET", False, None),
    ("POST", False, None),
    ("POST", False, "search"),
    ("POST", False, "delete"),
    ("POST", True, "poll_range"),
    ("POST", False, "poll_ranges"),
    ("SEARCH", False, None),
    ("SEARCH", True, "poll_range"),
    ("SEARCH", False, "poll_ranges"),
    ("POST", True, "txn"),
]
K2V_FIELDS = ["sort_key", "causality_token", "timeout", "prefix", "start", "end", "limit", "reverse"]
K2V_HEADERS = ["X-Garage-Causality-Token", "X-Garage-TTL", "If-Match", "If-None-Match", "X-Garage-Consistency",
               "Content-Type", "Accept", "Origin", "X-Request-Id"]  # fmt: skip


@dataclass
class FuzzRequest:
    method: str
    path: str
    query: str
    body: bytes | None
    headers: dict[str, str]
    sign: bool = True

    def __str__(self) -> str:
        body = None if self.body is None else self.body[:200]
        return f"{self.method} {self.path}?{self.query} headers={self.headers} body={body!r} signed={self.sign}"


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    # ---- values ----------------------------------------------------------------------------------

    def text(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(["a", "b", "k1", "pk", "x/y", "z"]) + str(self.rng.randint(0, 5))
        if r < 0.8:
            return self.rng.choice(WEIRD)
        return "".join(chr(self.rng.randint(1, 0x2FFF)) for _ in range(self.rng.randint(1, 20)))

    def value(self) -> Any:
        if self.rng.random() < 0.6:
            return self.rng.choice(
                [
                    None,
                    True,
                    False,
                    0,
                    -1,
                    2**64,
                    2**63,
                    1.5,
                    "",
                    "x",
                    [],
                    {},
                    [1],
                    {"a": 1},
                    "A" * 100,
                    "eHg=",
                    "!!!",
                    10**30,
                    -(10**30),
                    "true",
                ]  # fmt: skip
            )
        return self.text()

    def token(self) -> str:
        r = self.rng.random()
        if r < 0.3:
            n = self.rng.choice([0, 1, 8, 16, 17, 24, 40, 300])
            return base64.urlsafe_b64encode(self.rng.randbytes(n)).decode()
        return self.text() if r < 0.5 else self.rng.choice(["", "AAAA", "====", "a", "!!", "A" * 5000])

    def header_value(self) -> str:
        """Text that http.client sends as Latin-1: anything above 0x7f is a byte that is not UTF-8."""
        v = self.rng.choice([self.text(), self.token(), "*", "1", "-5", "999999999999999", "linearizable"])
        return "".join(c if ord(c) < 256 and c not in "\r\n\x00" else "?" for c in v)

    def mutate(self, obj: Any, depth: int = 0) -> Any:
        if depth > 3 or self.rng.random() < 0.2:
            return self.value()
        if isinstance(obj, dict):
            out = dict(obj)
            for k in list(out):
                r = self.rng.random()
                if r < 0.15:
                    del out[k]
                elif r < 0.4:
                    out[k] = self.mutate(out[k], depth + 1)
            if self.rng.random() < 0.1:
                out[self.text()] = self.value()
            return out
        if isinstance(obj, list):
            items = [self.mutate(x, depth + 1) if self.rng.random() < 0.3 else x for x in obj]
            return items * self.rng.randint(2, 50) if self.rng.random() < 0.1 else items
        return self.value() if self.rng.random() < 0.5 else obj

    def json_body(self, good: Any) -> bytes:
        r = self.rng.random()
        if r < 0.3:
            return json.dumps(good).encode()
        if r < 0.9:
            return json.dumps(self.mutate(good)).encode()
        return self.rng.choice([b"{", b"[", b"\xff\xfe", b"null", b'"x"', b"1e999", b"[" * 300])

    # ---- K2V -------------------------------------------------------------------------------------

    def k2v_bodies(self) -> dict[str, Any]:
        v = base64.b64encode(b"v").decode()
        return {
            None: [{"pk": "a", "sk": "b", "ct": None, "v": v}, {"pk": "a", "sk": "c", "ct": self.token(), "v": None}],
            "search": [
                {
                    "partitionKey": "a",
                    "start": "a",
                    "end": "z",
                    "limit": 5,
                    "reverse": False,
                    "prefix": None,
                    "singleItem": False,
                    "conflictsOnly": False,
                    "tombstones": True,
                }
            ],  # fmt: skip
            "delete": [{"partitionKey": "a", "prefix": "x", "start": None, "end": None, "singleItem": False}],
            "poll_range": {"prefix": None, "start": "a", "end": None, "timeout": 1, "seenMarker": self.token()},
            "poll_ranges": {"timeout": 1, "ranges": [{"partitionKey": "a", "prefix": "", "seenMarker": None}]},
            "txn": {
                "compare": [{"sk": "a", "target": "exists", "exists": True}],
                "success": [{"op": "put", "sk": "a", "value": v, "ttl": 5}, {"op": "read", "sk": "a"}],
                "failure": [{"op": "delete", "sk": "a"}],
            },
        }

    def k2v(self, bucket: str) -> FuzzRequest:
        rng = self.rng
        method, has_pk, keyword = rng.choice(K2V_ENDPOINTS)
        if rng.random() < 0.1:
            method = rng.choice(["HEAD", "PATCH", "get", "OPTIONS", "SEARCH", "PUT"])
        if rng.random() < 0.1:
            has_pk = not has_pk
        b = bucket if rng.random() < 0.9 else rng.choice(["nope", "", "B" * 70, "%2e"])
        pk = (rng.choice(["a", "b", "pk"]) if rng.random() < 0.7 else self.text() or "a") if has_pk else None
        path = "/" + b + ("" if pk is None else "/" + quote(pk, safe="/"))
        query = []
        if keyword is not None or rng.random() < 0.1:
            kw = keyword or rng.choice(["search", "delete", "poll_range", "poll_ranges", "txn"])
            query.append(kw if rng.random() < 0.8 else f"{kw}={quote(self.text())}")
        fields = rng.sample(K2V_FIELDS, rng.randint(0, 3))
        if has_pk and method in ("GET", "PUT", "DELETE") and "sort_key" not in fields and rng.random() < 0.8:
            fields.append("sort_key")
        for f in fields:
            good = {"timeout": ["0", "1"], "limit": ["0", "1", "5", "1000"], "reverse": ["true", "false"]}.get(
                f, ["a", "b", "a0", "z"]
            )
            v = rng.choice(good) if rng.random() < 0.7 else rng.choice([self.text(), self.token(), str(2**64), "-1"])
            query.append(f"{f}={quote(v, safe='')}")
        if query and rng.random() < 0.03:
            query.append(query[0])  # a parameter twice
        headers = {h: self.header_value() for h in rng.sample(K2V_HEADERS, rng.randint(0, 3))}
        body = None
        if method in ("POST", "SEARCH"):
            bodies = self.k2v_bodies()
            body = self.json_body(bodies.get(keyword, bodies[None]))
        elif method == "PUT":
            body = rng.randbytes(rng.randint(0, 50))
        return FuzzRequest(method, path, "&".join(query), body, headers, sign=rng.random() < 0.95)

    # ---- K2V, one field off a valid request -------------------------------------------------------

    EDGE: tuple[Any, ...] = (None, True, 0, -1, 1, 2**53, 2**64 - 1, 2**64, 1.0, 1e300, "", "é", "a" * 1000, [], {},
                             "\u0000")  # fmt: skip

    def damaged(self, s: str) -> str:
        """A real token or seen marker, cut, bit-flipped, re-padded, repeated or replaced."""
        rng = self.rng
        if not s:
            return rng.choice(["", "=", "A"])
        op = rng.randrange(7)
        if op == 0:
            return s[: rng.randrange(len(s))]
        if op == 1:
            i = rng.randrange(len(s))
            return s[:i] + rng.choice("A/+_-=!") + s[i + 1 :]
        if op == 2:
            return s + rng.choice(["=", "==", "A", "AAAA", s])
        if op == 3:
            raw = bytearray(base64.urlsafe_b64decode(s.replace("+", "-").replace("/", "_") + "=" * (-len(s) % 4)))
            if raw:
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
        if op == 4:
            return s * rng.randint(2, 40)
        if op == 5:
            return base64.urlsafe_b64encode(rng.randbytes(rng.randint(0, 400))).decode()
        return s

    def tweak(self, obj: Any, extra: tuple[Any, ...] = ()) -> Any:
        """``obj`` with one field (maybe nested) removed, renamed, repeated or given another value."""
        rng = self.rng
        if isinstance(obj, list) and obj:
            out = list(obj)
            i, r = rng.randrange(len(out)), rng.random()
            if r < 0.1:
                del out[i]
            elif r < 0.15:
                out = out * rng.choice([2, 100, 1001])
            else:
                out[i] = self.tweak(out[i], extra)
            return out
        if isinstance(obj, dict) and obj:
            d = dict(obj)
            k, r = rng.choice(list(d)), rng.random()
            if r < 0.2:
                del d[k]
            elif r < 0.3:
                d[k.upper() if rng.random() < 0.5 else k + "x"] = rng.choice(self.EDGE)
            elif isinstance(d[k], dict | list) and rng.random() < 0.5:
                d[k] = self.tweak(d[k], extra)
            else:
                d[k] = rng.choice(self.EDGE + extra)
            return d
        return rng.choice(self.EDGE + extra)

    def k2v_deep(self, bucket: str, tokens: list[str], markers: list[str]) -> FuzzRequest:
        """A request of every K2V endpoint that is valid but for one field, its tokens and seen
        markers taken from real answers (``tokens``, ``markers``) and mostly damaged. Polls do
        not wait (timeout 0)."""
        rng = self.rng

        def tok() -> str:
            return self.damaged(rng.choice(tokens)) if rng.random() < 0.8 else rng.choice(tokens)

        def mark() -> str:
            return self.damaged(rng.choice(markers)) if rng.random() < 0.8 else rng.choice(markers)

        v = base64.b64encode(b"x").decode()
        extra = (tok(), mark(), "p1", "a", v, "not base64!")
        kind = rng.choice(["insert", "search", "delete", "poll_range", "poll_ranges", "txn", "item", "poll_item"])
        path, query, headers = f"/{bucket}", "", {}
        body: Any = None
        method = "POST"
        if kind == "insert":
            body = [{"pk": rng.choice(["p1", "p2", "p3"]), "sk": rng.choice("abcd"), "ct": rng.choice([None, tok()]),
                     "v": rng.choice([v, None]), **({"ttl": rng.choice([1, 60])} if rng.random() < 0.2 else {})}
                    for _ in range(rng.randint(1, 5))]  # fmt: skip
        elif kind == "search":
            query = "search"
            body = [
                {
                    "partitionKey": rng.choice(["p1", "p2"]),
                    "prefix": rng.choice([None, "a"]),
                    "start": None,
                    "end": rng.choice([None, "c"]),
                    "limit": rng.choice([None, 1, 10]),
                    "reverse": rng.random() < 0.5,
                    "singleItem": False,
                    "conflictsOnly": rng.random() < 0.5,
                    "tombstones": rng.random() < 0.5,
                }
            ]
        elif kind == "delete":
            query, body = "delete", [{"partitionKey": "p3", "prefix": "z", "singleItem": False}]
        elif kind == "poll_range":
            path, query, body = f"/{bucket}/p1", "poll_range", {"seenMarker": mark(), "prefix": None}
        elif kind == "poll_ranges":
            query = "poll_ranges"
            body = {
                "ranges": [
                    {
                        "partitionKey": rng.choice(["p1", "p2", f"q{i}"]),
                        "prefix": rng.choice([None, "a"]),
                        "seenMarker": rng.choice([None, mark()]),
                    }
                    for i in range(rng.choice([1, 2, 64, 65]))
                ]
            }
        elif kind == "txn":
            path, query = f"/{bucket}/p1", "txn"
            body = {"compare": [{"sk": "a", "target": rng.choice(["exists", "token", "value", "latest-md5"]),
                                 "exists": True, "token": tok(), "value": v}],
                    "success": [{"op": rng.choice(["put", "delete", "read"]), "sk": rng.choice("abc"), "value": v}],
                    "failure": [{"op": "read", "sk": "a"}]}  # fmt: skip
        if body is not None:
            body = self.tweak(body, extra) if rng.random() < 0.85 else body
            if kind in ("poll_range", "poll_ranges") and isinstance(body, dict):
                body["timeout"] = 0  # a poll that waits would only make the test slow
            return FuzzRequest(method, path, query, json.dumps(body).encode(), headers)
        path = f"/{bucket}/p1"
        if kind == "poll_item":
            return FuzzRequest("GET", path, f"sort_key=a&causality_token={quote(tok(), safe='')}&timeout=0", None, {})
        if rng.random() < 0.7:
            headers["X-Garage-Causality-Token"] = tok()
        if rng.random() < 0.3:
            headers[rng.choice(["If-Match", "If-None-Match"])] = rng.choice([tok(), "*", ""])
        if rng.random() < 0.2:
            headers["X-Garage-TTL"] = rng.choice(["1", "0", "-1", "1e3", "99999999999999999999", " 5"])
        method = rng.choice(["PUT", "DELETE"])
        return FuzzRequest(method, path, f"sort_key={rng.choice('abcd')}", b"val" if method == "PUT" else None, headers)

    # ---- Hulykvs ---------------------------------------------------------------------------------

    def hulykvs(self, workspace: str) -> FuzzRequest:
        rng = self.rng
        method = rng.choice(["GET", "PUT", "POST", "DELETE", "HEAD", "GET", "PUT", "PATCH"])
        ws = workspace if rng.random() < 0.8 else rng.choice(["nope", "%00", "%ff", "0" * 32, "A" * 300])
        parts = [quote(self.text(), safe="") if rng.random() < 0.3 else rng.choice(["ns", "n2"]) for _ in range(2)]
        if rng.random() < 0.2:
            parts = parts[: rng.randint(0, 2)]
        path = rng.choice([f"/api2/{ws}/", "/api/"]) + "/".join(parts)
        query = f"prefix={quote(self.text(), safe='')}" if rng.random() < 0.2 else ""
        headers = {h: rng.choice(["*", "0" * 32, '"' + "a" * 32 + '"', "", "x", "*, *", self.header_value()])
                   for h in rng.sample(["If-Match", "If-None-Match", "Content-Type"], rng.randint(0, 2))}  # fmt: skip
        body = rng.randbytes(rng.randint(0, 64)) if method in ("PUT", "POST") else None
        return FuzzRequest(method, path, query, body, headers)

    def bearer(self, good: str, secret: str) -> str:
        """An ``Authorization`` value for the Hulykvs API: ``good`` damaged, or a JWT whose header
        or claims are out of shape, signed with ``secret`` (so the claim checks are reached) or
        with another key, or not a JWT at all."""
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            return rng.choice(["", "Bearer", "Bearer ", "Basic " + good, "bearer  " + good, good])
        if r < 0.35:  # one of the three parts damaged
            parts = good.split(".")
            i = rng.randrange(len(parts))
            parts[i] = self.damaged(parts[i])
            return "Bearer " + ".".join(parts)
        if r < 0.45:
            parts = [rng.choice(good.split(".") + ["", "!!", "==", "e30"]) for _ in range(rng.randint(0, 5))]
            return "Bearer " + ".".join(parts)
        header: Any = {"alg": "HS256", "typ": "JWT"}
        if rng.random() < 0.3:
            header = self.mutate(header) if rng.random() < 0.7 else self.value()
        if rng.random() < 0.1:
            header = {"alg": rng.choice(["none", "HS512", "RS256", "hs256", ""]), "typ": "JWT"}
        claims: Any = {"account": SYSTEM_ACCOUNT, "workspace": str(rng.choice([None, "0" * 32]))}
        for name in rng.sample(["account", "workspace", "extra", "exp", "nbf", "iat", "aud", "iss"], rng.randint(1, 3)):
            claims[name] = rng.choice([self.value(), {"k": self.value()}, 1e308, -1, 2**70])
        if rng.random() < 0.1:
            claims = self.value()

        def part(obj: Any) -> str:
            raw = json.dumps(obj).encode() if rng.random() < 0.95 else rng.randbytes(rng.randint(0, 20))
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        signing_input = part(header) + "." + part(claims)
        key = secret if rng.random() < 0.8 else "another-secret"
        mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
        return "Bearer " + signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    # ---- admin -----------------------------------------------------------------------------------

    def admin(self) -> FuzzRequest:
        rng = self.rng
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "OPTIONS"])
        path = rng.choice(
            [
                "/v1/status",
                "/v1/health",
                "/v1/layout",
                "/v1/layout/revert",
                "/v1/key",
                "/v1/key/import",
                "/v1/bucket",
                "/v1/bucket/allow",
                "/v1/bucket/deny",
                "/v1/bucket/alias/global",
                "/v1/bucket/alias/local",
                "/metrics",
                "/v0/x",
                "/v1/",
            ]  # fmt: skip (/health: 503 without a layout)
        )
        query = "&".join(
            f"{k}={quote(rng.choice(['', 'x', 'GK' + '0' * 24, '0' * 64, 'true', '%ff', 'é', 'a' * 300]), safe='%')}"
            for k in rng.sample(
                ["id", "search", "list", "showSecretKey", "alias", "globalAlias", "accessKeyId"], rng.randint(0, 3)
            )  # fmt: skip
        )
        fields = ["name", "globalAlias", "localAlias", "accessKeyId", "secretAccessKey", "bucketId", "permissions",
                  "allow", "deny", "id", "zone", "capacity", "tags", "remove", "alias"]  # fmt: skip
        good: Any = {k: self.value() for k in rng.sample(fields, rng.randint(0, 4))}
        body = self.json_body(good if rng.random() < 0.8 else [good]) if method in ("POST", "PUT") else None
        return FuzzRequest(method, path, query, body, {})

    # ---- cluster RPC -------------------------------------------------------------------------------

    #: First elements of the messages the RPC endpoints take (so some reach past the tag check).
    RPC_TAGS = ("insert", "check", "poll_item", "poll_range", "poll_ranges", "update", "get", "get_many", "range",
                "txn", "read", "node", "items", "root", "ping", "pull")  # fmt: skip

    def rpc_value(self, depth: int = 0) -> Any:
        rng = self.rng
        r = rng.random()
        if depth > 3 or r < 0.4:
            return rng.choice(
                [
                    None,
                    True,
                    0,
                    -1,
                    1,
                    2**63,
                    2**64 - 1,
                    -(2**63),
                    1.5,
                    b"",
                    b"\x00" * 32,
                    "",
                    "x",
                    "é",
                    3600,
                    rng.randbytes(rng.choice([1, 8, 16, 32, 40, 100])),
                    rng.choice(self.RPC_TAGS),
                ]  # fmt: skip
            )
        if r < 0.75:
            return [self.rpc_value(depth + 1) for _ in range(rng.randint(0, 5))]
        return {rng.choice(["a", "op", "args", 1, b"k"]): self.rpc_value(depth + 1) for _ in range(rng.randint(0, 3))}

    def rpc_body(self) -> Any:
        """A message for any endpoint: most are ``[tag, ...]`` like the real ones, with junk fields."""
        if self.rng.random() < 0.6:
            return [self.rng.choice(self.RPC_TAGS)] + [self.rpc_value(1) for _ in range(self.rng.randint(0, 6))]
        return self.rpc_value()
