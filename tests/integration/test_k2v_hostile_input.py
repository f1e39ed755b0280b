"""Hostile but well-formed input: deep JSON, huge numbers, lone surrogates, repeated headers.

Each case must be a precise 4xx (never a 500) and must leave the data as it was.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import struct
import time
import zlib

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from garagekv.db.env import Database
from garagekv.model.k2v.causality import MAX_CLOCK_AHEAD_MS
from garagekv.util import codec
from tests.support import K2VHttp, NodeProcess, Response
from tests.support.k2v import (
    BINARY,
    BUCKET,
    JSON,
    TOKEN,
    assert_error,
    assert_partition_empty,
    b64,
    botocore_headers,
    decode_token,
    encode_token,
    ipath,
    partition,
    put,
    raw_send,
    send_signed,
    sign_headers,
    token_of,
)

DEEP = b"[" * 20000


def _seed(k2v, pk: str) -> None:
    put(k2v, pk, "a", b"v")


def _unchanged(k2v, pk: str) -> None:
    assert partition(k2v, pk) == {"a": [b64("v")]}


# ---- deeply nested JSON --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [DEEP, b"[" * 5000 + b"]" * 5000, b'[{"pk": "PK", "sk": "a", "v": null, "x": ' + DEEP + b"}]"],
    ids=["unbalanced", "balanced", "in-an-ignored-field"],
)
@pytest.mark.parametrize("endpoint", ["InsertBatch", "ReadBatch", "DeleteBatch", "PollRange"])
def test_deeply_nested_json_is_400(k2v, pk, endpoint, body):
    _seed(k2v, pk)
    body = body.replace(b"PK", pk.encode())
    if endpoint == "PollRange":
        r = k2v.request("POST", ipath(pk), "poll_range", body)
    else:
        query = {"InsertBatch": "", "ReadBatch": "search", "DeleteBatch": "delete"}[endpoint]
        r = k2v.request("POST", f"/{BUCKET}", query, body)
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")
    _unchanged(k2v, pk)


# ---- lone surrogates anywhere in a body ----------------------------------------------------------


@pytest.mark.parametrize(
    "query,body",
    [
        ("", b'[{"pk": "PK", "sk": "b", "v": null, "\\ud800": 1}]'),
        ("search", b'[{"partitionKey": "PK", "\\udfff": true}]'),
        ("delete", b'[{"partitionKey": "PK", "x": ["\\ud800"]}]'),
    ],
)
def test_lone_surrogate_in_an_object_key_or_ignored_field_is_400(k2v, pk, query, body):
    _seed(k2v, pk)
    r = k2v.request("POST", f"/{BUCKET}", query, body.replace(b"PK", pk.encode()))
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")
    _unchanged(k2v, pk)


# ---- huge integers -------------------------------------------------------------------------------


@pytest.mark.parametrize("digits", ["9" * 21, "9" * 400, "9" * 5000, "0" * 5000 + "1"])
@pytest.mark.parametrize("name", ["limit", "timeout"])
def test_huge_integer_query_parameters_are_400(k2v, pk, name, digits):
    _seed(k2v, pk)
    if name == "limit":
        r = k2v.request("GET", f"/{BUCKET}", f"limit={digits}")
    else:
        r = k2v.request("GET", ipath(pk), f"sort_key=a&causality_token=AAAAAAAAAAA&timeout={digits}")
    if digits.lstrip("0") == "1":
        assert r.status in (200, 304), (r.status, r.body)  # leading zeros are still a small number
    else:
        assert_error(r, 400, "InvalidRequest", prefix=f"Bad request: Failed to parse query parameter '{name}'")
        assert len(r.body) < 1000  # the value is not echoed in full
    _unchanged(k2v, pk)


@pytest.mark.parametrize("body", [b'[{"partitionKey": "PK", "limit": ' + b"9" * n + b"}]" for n in (21, 400, 5000)])
def test_huge_integer_json_fields_are_400(k2v, pk, body):
    r = k2v.request("POST", f"/{BUCKET}", "search", body.replace(b"PK", pk.encode()))
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")


def test_huge_decoded_content_length_is_400(k2v, pk):
    _seed(k2v, pk)
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a", b"w", {"x-amz-decoded-content-length": "9" * 5000})
    assert_error(r, 400, "InvalidRequest")
    _unchanged(k2v, pk)


def test_huge_presigned_expiry_is_400(k2v, pk):
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x%2F20250101%2Fgarage%2Fk2v%2Faws4_request"
        f"&X-Amz-Date=20250101T000000Z&X-Amz-Expires={'9' * 5000}&X-Amz-SignedHeaders=host"
        f"&X-Amz-Signature={'0' * 64}&sort_key=a"
    )
    r = k2v.request("GET", ipath(pk), query, sign=False)
    assert_error(r, 400, "InvalidRequest")


# ---- SigV4 with a repeated header ----------------------------------------------------------------


def _send_with_repeats(k2v, method: str, path: str, query: str, repeated: list[tuple[str, str]]) -> Response:
    """Sign with botocore (which joins repeated values with ","), send every value on its own line."""
    url = f"http://{k2v.host}{path}?{query}"
    req = AWSRequest(method=method, url=url, data=b"")
    for name, value in repeated:
        req.headers[name] = value  # HTTPHeaders keeps every assignment of a name
    req.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b"").hexdigest()
    SigV4Auth(Credentials(k2v.access_key, k2v.secret_key), "k2v", k2v.region).add_auth(req)
    assert "accept" in req.headers["Authorization"].split("SignedHeaders=")[1] or "x-amz" in repeated[0][0].lower()
    conn = http.client.HTTPConnection(k2v.host, timeout=15)
    try:
        conn.putrequest(method, f"{path}?{query}", skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", k2v.host)
        for name, value in req.headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return Response(r.status, dict(r.getheaders()), r.read())
    finally:
        conn.close()


def test_repeated_accept_header_signed_by_botocore(k2v, pk):
    _seed(k2v, pk)
    r = _send_with_repeats(k2v, "GET", ipath(pk), "sort_key=a", [("Accept", JSON), ("Accept", BINARY)])
    assert r.status == 200, (r.status, r.body)
    # Both values count, as one comma-separated list would: one value, binary allowed.
    assert r.header("Content-Type") == BINARY and r.body == b"v"


def test_repeated_x_amz_header_signed_by_botocore(k2v, pk):
    _seed(k2v, pk)
    r = _send_with_repeats(k2v, "GET", ipath(pk), "sort_key=a", [("X-Amz-Meta-A", "1"), ("X-Amz-Meta-A", " 2 ")])
    assert r.status == 200, (r.status, r.body)


# ---- forged causality tokens ---------------------------------------------------------------------


def _node_number(k2v, pk: str) -> int:
    """The coordinator's id as it appears in tokens (one node: the only pair of a fresh item)."""
    put(k2v, pk, "probe", b"p")
    (pair,) = decode_token(token_of(k2v, pk, "probe"))[1]
    return pair[0]


def _forged(node: int, t: int) -> str:
    return encode_token([(node, t)])


@pytest.mark.parametrize("t", [2**64 - 2, 2**64 - 1, int(time.time() * 1000) + MAX_CLOCK_AHEAD_MS + 10**9])
def test_forged_token_beyond_any_clock_is_400_and_the_node_keeps_writing(k2v, pk, t):
    me = _node_number(k2v, pk)
    forged = _forged(me, t)
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"x", headers={TOKEN: forged})
    assert_error(r, 400, "InvalidRequest", message="beyond any node's clock")
    r = k2v.request("DELETE", ipath(pk), "sort_key=a", headers={TOKEN: forged})
    assert_error(r, 400, "InvalidRequest", message="beyond any node's clock")
    r = k2v.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": "b", "v": b64("ok")}, {"pk": pk, "sk": "a", "ct": forged}])
    assert_error(r, 400, "InvalidRequest", message="beyond any node's clock")
    r = k2v.request("GET", ipath(pk), f"sort_key=a&causality_token={forged}&timeout=1")
    assert_error(r, 400, "InvalidRequest", message="beyond any node's clock")
    assert set(partition(k2v, pk)) == {"probe"}  # nothing written
    # The node still coordinates writes, with times close to its clock.
    put(k2v, pk, "a", b"1")
    put(k2v, pk, "a", b"2", token=token_of(k2v, pk, "a"))
    assert partition(k2v, pk) == {"probe": [b64("p")], "a": [b64("2")]}
    (pair,) = decode_token(token_of(k2v, pk, "a"))[1]
    assert pair[1] < time.time() * 1000 + 10**7


def test_forged_token_within_the_bound_does_not_push_the_node_clock(k2v, pk):
    """Accepted (it could have come from a node far ahead), but this node never issued that time:
    its own clock stays put and the item stays writable with the tokens it hands out."""
    me = _node_number(k2v, pk)
    put(k2v, pk, "a", b"1")
    forged = _forged(me, int(time.time() * 1000) + MAX_CLOCK_AHEAD_MS - 10**6)
    put(k2v, pk, "a", b"2", token=forged)
    assert partition(k2v, pk)["a"] == [b64("2")]  # what the token covered is replaced
    for v in (b"3", b"4"):
        put(k2v, pk, "a", v, token=token_of(k2v, pk, "a"))
    assert partition(k2v, pk)["a"] == [b64("4")]
    for sk in ("a", "probe"):
        (pair,) = decode_token(token_of(k2v, pk, sk))[1]
        assert pair[1] < time.time() * 1000 + 10**7


def test_token_with_too_many_entries_is_400(k2v, pk):
    many = encode_token([(i, 1) for i in range(1, 300)])
    r = k2v.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": "a", "ct": many, "v": b64("v")}])
    assert_error(r, 400, "InvalidRequest", message="clock entries")
    assert_partition_empty(k2v, pk)


# ---- seen-marker bombs and forged markers --------------------------------------------------------


def _marker(body: object) -> str:
    return base64.b64encode(zlib.compress(codec.encode(body), 9)).decode()


@pytest.mark.parametrize(
    "marker",
    [
        _marker([1, [], [[f"{i:07d}", []] for i in range(300_000)]]),  # a few hundred KiB, 600k objects
        _marker([1, [[1, 2**64 - 1]], []]),  # a clock no node could have reached
        _marker([1, [[n, 1] for n in range(300)], []]),
    ],
    ids=["distinct-keys", "forged-time", "long-clock"],
)
def test_hostile_seen_markers_are_400(k2v, pk, marker):
    _seed(k2v, pk)
    r = k2v.json("POST", ipath(pk), {"seenMarker": marker, "timeout": 1}, query="poll_range")
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid seenMarker")
    _unchanged(k2v, pk)


# ---- keys that are not Unicode in the URL --------------------------------------------------------


@pytest.mark.parametrize(
    "path,query",
    [
        (f"/{BUCKET}/%ED%A0%80", "sort_key=a"),  # the UTF-8 spelling of a lone surrogate
        (f"/{BUCKET}/%FF", "sort_key=a"),
        ("PK", "sort_key=%ED%A0%80"),
        ("PK", "sort_key=a%C3"),
        (f"/{BUCKET}", "prefix=%ED%BF%BF"),
        (f"/{BUCKET}", "start=%80"),
    ],
)
def test_keys_that_are_not_utf8_in_the_url_are_400(k2v, pk, path, query):
    _seed(k2v, pk)
    path = ipath(pk) if path == "PK" else path
    for method in ("GET", "PUT", "DELETE") if "sort_key" in query else ("GET",):
        r = k2v.request(method, path, query, b"x" if method == "PUT" else None)
        assert r.status == 400, (method, path, query, r.status, r.body)
        assert r.json()["code"] in ("InvalidRequest", "InvalidUtf8String")
    _unchanged(k2v, pk)


# ---- header values that are not UTF-8 ---------------------------------------------------------------


def _as_bytes(headers: dict[str, str]) -> dict[str, bytes]:
    """Header values as the bytes they stand for (lone surrogates: the bytes that are not UTF-8)."""
    return {k: v.encode("utf-8", "surrogateescape") for k, v in headers.items()}


def test_a_signed_header_value_that_is_not_utf8_is_signed_as_its_bytes(k2v, pk):
    """SigV4 signs a header's bytes: a client that signed those bytes is served, one that signed
    other bytes (the text, as botocore would) gets 403, and neither is a 500."""
    _seed(k2v, pk)
    wire = "caf\udce9"  # b"caf\xe9" on the wire: Latin-1, not UTF-8
    hdrs = sign_headers(k2v, "GET", ipath(pk), "sort_key=a", b"", {"X-Custom": wire})
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, _as_bytes(hdrs))
    assert r.status == 200 and r.json() == [b64("v")], (r.status, r.body)
    hdrs = botocore_headers(k2v, "GET", ipath(pk), "sort_key=a", headers={"X-Custom": "café"})
    hdrs["X-Custom"] = wire
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, _as_bytes(hdrs))
    assert_error(r, 403, "AccessDenied")


@pytest.mark.parametrize("where", ["key id", "scope"])
def test_credentials_that_are_not_utf8_are_refused_with_a_utf8_body(k2v, pk, where):
    _seed(k2v, pk)
    hdrs = sign_headers(k2v, "PUT", ipath(pk), "sort_key=a", b"x")
    auth = hdrs["Authorization"]
    at = auth.index("Credential=") + len("Credential=") + (4 if where == "key id" else len(k2v.access_key) + 4)
    hdrs["Authorization"] = auth[:at] + "\udc80" + auth[at:]
    r = raw_send(k2v.host, "PUT", f"{ipath(pk)}?sort_key=a", b"x", _as_bytes(hdrs))
    if where == "key id":
        assert_error(r, 403, "AccessDenied")
    else:  # the message quotes the scope: the byte shows as U+FFFD
        assert "\ufffd" in assert_error(r, 400, "AuthorizationHeaderMalformed")["message"]
    _unchanged(k2v, pk)


def test_expect_100_continue_is_answered_once_the_request_is_authorized(k2v, pk):
    """A client that asks for 100 Continue waits for it before sending the body; a request refused
    on its headers gets its final answer at once instead."""
    import socket

    host, _, port = k2v.host.rpartition(":")
    for signed, first in ((True, b"HTTP/1.1 100 Continue\r\n\r\n"), (False, b"HTTP/1.1 403 ")):
        hdrs = sign_headers(k2v, "PUT", ipath(pk), "sort_key=e", b"abc", {"Expect": "100-continue"})
        if not signed:
            hdrs["Authorization"] = hdrs["Authorization"][:-4] + "0000"
        hdrs.setdefault("Host", k2v.host)
        head = f"PUT {ipath(pk)}?sort_key=e HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"{head}Content-Length: 3\r\nConnection: close\r\n\r\n".encode())
            got = s.recv(400)
            assert got.startswith(first), got  # within the timeout, the body still unsent
            if signed:
                s.sendall(b"abc")
                assert s.recv(100).startswith(b"HTTP/1.1 204 ")
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=e", None, sign_headers(k2v, "GET", ipath(pk), "sort_key=e"))
    assert r.status == 200 and r.json() == [b64("abc")], (r.status, r.body)


# ---- a timestamp poisoned before the fix, across a restart ---------------------------------------


@pytest.fixture
def lone_node(tmp_path):
    n = NodeProcess(tmp_path / "lone")
    n.start()
    key = n.admin("key.create", {"name": "lone"})
    n.admin("bucket.create", {"name": BUCKET})
    n.admin(
        "bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, "read": True, "write": True}
    )
    yield n, K2VHttp(n.endpoint, key["accessKeyId"], key["secretAccessKey"])
    n.stop()


def test_node_whose_stored_timestamp_reached_the_limit_still_writes_after_restart(lone_node):
    """What the unbounded tokens left behind: the persisted time at 2^64 - 1. The node ignores it."""
    node, k2v = lone_node
    put(k2v, "pk", "a", b"1")
    node.stop()
    db = Database(node.metadata_dir)
    try:
        tree = db.tree("k2v:local_ts")  # opened outside the write transaction (LMDB would wait)
        with db.env.begin(write=True) as txn:
            txn.put(b"timestamp", struct.pack(">Q", 2**64 - 1), db=tree)
    finally:
        db.close()
    node.start()
    put(k2v, "pk", "b", b"2")
    put(k2v, "pk", "a", b"3", token=token_of(k2v, "pk", "a"))
    assert partition(k2v, "pk") == {"a": [b64("3")], "b": [b64("2")]}
    for sk in ("a", "b"):
        ((_, t),) = decode_token(token_of(k2v, "pk", sk))[1]
        assert t < time.time() * 1000 + 10**7
