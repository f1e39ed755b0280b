"""docs/k2v-api.md §10 limits: body size, batch size, key length; never a 500, never truncated."""

from __future__ import annotations

import json

import pytest

from garagekv.util.signing import UNSIGNED_PAYLOAD
from tests.support import K2VHttp, NodeProcess
from tests.support.k2v import (
    BUCKET,
    EMPTY_TOKEN,
    assert_error,
    assert_partition_empty,
    b64,
    ipath,
    partition,
    put,
    q,
    raw_send,
    raw_socket,
    read_batch,
    sign_headers,
)

MAX_BODY = 1024
MAX_ITEMS = 3


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> K2VHttp:
    """A node of its own with tiny limits (and no CORS configuration)."""
    n = NodeProcess(
        tmp_path_factory.mktemp("small-node"), k2v_extra=f"max_body_bytes = {MAX_BODY}\nmax_batch_items = {MAX_ITEMS}"
    )
    n.start()
    key = n.admin("key.create", {"name": "small"})
    n.admin("bucket.create", {"name": BUCKET})
    n.admin(
        "bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, "read": True, "write": True}
    )
    yield K2VHttp(n.endpoint, key["accessKeyId"], key["secretAccessKey"])
    n.stop()


# ---- body size ---------------------------------------------------------------------------------


def test_body_at_limit_accepted(small, pk):
    put(small, pk, "s", b"x" * MAX_BODY)
    assert partition(small, pk) == {"s": [b64(b"x" * MAX_BODY)]}


@pytest.mark.parametrize("size", [MAX_BODY + 1, 10 * MAX_BODY, 3 * 1024 * 1024])
def test_body_over_limit_is_413(small, pk, size):
    r = small.request("PUT", ipath(pk), "sort_key=s", b"x" * size)
    assert_error(r, 413, "EntityTooLarge", prefix="Entity too large: ")
    assert_partition_empty(small, pk)


def test_chunked_body_over_limit_is_413(small, pk):
    """No Content-Length: the limit is enforced while reading."""
    hdrs = sign_headers(small, "PUT", ipath(pk), "sort_key=s", payload=UNSIGNED_PAYLOAD)
    hdrs["Transfer-Encoding"] = "chunked"
    chunks = iter([b"x" * 700, b"y" * 700])
    r = raw_send(small.host, "PUT", f"{ipath(pk)}?sort_key=s", chunks, hdrs, encode_chunked=True)
    assert_error(r, 413, "EntityTooLarge")
    assert_partition_empty(small, pk)


def test_chunked_body_under_limit_accepted(small, pk):
    hdrs = sign_headers(small, "PUT", ipath(pk), "sort_key=s", payload=UNSIGNED_PAYLOAD)
    hdrs["Transfer-Encoding"] = "chunked"
    r = raw_send(small.host, "PUT", f"{ipath(pk)}?sort_key=s", iter([b"ab", b"cd"]), hdrs, encode_chunked=True)
    assert r.status == 204, r.body
    assert partition(small, pk) == {"s": [b64("abcd")]}


@pytest.mark.parametrize("query", ["", "search", "delete"])
def test_json_body_over_limit_is_413(small, pk, query):
    body = json.dumps([{"pk": pk, "sk": "s", "v": b64(b"x" * MAX_BODY)}]).encode()
    r = small.request("POST", f"/{BUCKET}", query, body)
    assert_error(r, 413, "EntityTooLarge")
    assert_partition_empty(small, pk)


def test_poll_range_body_over_limit_is_413(small, pk):
    r = small.request("POST", ipath(pk), "poll_range", json.dumps({"prefix": "a", "x": "y" * MAX_BODY}).encode())
    assert_error(r, 413, "EntityTooLarge")


def test_broken_chunked_encoding_is_a_json_4xx(small, pk):
    hdrs = sign_headers(small, "PUT", ipath(pk), "sort_key=s", payload=UNSIGNED_PAYLOAD)
    hdrs["Transfer-Encoding"] = "chunked"
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    data = (
        f"PUT {ipath(pk)}?sort_key=s HTTP/1.1\r\nHost: {small.host}\r\n{head}Connection: close\r\n\r\n"
        "zz\r\nabc\r\n0\r\n\r\n"
    ).encode()
    r = raw_socket(small.host, data)
    assert 400 <= r.status < 500, r
    assert set(r.json()) == {"code", "message", "region", "path"}
    assert_partition_empty(small, pk)


# ---- batch size --------------------------------------------------------------------------------


def test_insert_batch_at_limit(small, pk):
    r = small.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": str(i), "v": ""} for i in range(MAX_ITEMS)])
    assert r.status == 204, r.body
    assert len(partition(small, pk)) == MAX_ITEMS


def test_insert_batch_over_limit_writes_nothing(small, pk):
    r = small.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": str(i), "v": ""} for i in range(MAX_ITEMS + 1)])
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(small, pk)


def test_read_batch_over_limit(small, pk):
    assert len(read_batch(small, [{"partitionKey": pk}] * MAX_ITEMS)) == MAX_ITEMS
    r = small.json("POST", f"/{BUCKET}", [{"partitionKey": pk}] * (MAX_ITEMS + 1), query="search")
    assert_error(r, 400, "InvalidRequest")


def test_delete_batch_over_limit_deletes_nothing(small, pk):
    put(small, pk, "a", b"v")
    r = small.json("POST", f"/{BUCKET}", [{"partitionKey": pk}] * (MAX_ITEMS + 1), query="delete")
    assert_error(r, 400, "InvalidRequest")
    assert partition(small, pk) == {"a": [b64("v")]}
    r = small.json("POST", f"/{BUCKET}", [{"partitionKey": pk}] * MAX_ITEMS, query="delete")
    assert [x["deletedItems"] for x in r.json()] == [1, 0, 0]


def test_default_batch_limit_is_1000(k2v, pk):
    r = k2v.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": f"{i:04}"} for i in range(1001)])
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)
    r = k2v.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": f"{i:04}"} for i in range(1000)])
    assert r.status == 204
    r = k2v.json("POST", f"/{BUCKET}", [{"partitionKey": pk, "limit": 0}] * 1001, query="search")
    assert_error(r, 400, "InvalidRequest")
    r = k2v.json("POST", f"/{BUCKET}", [{"partitionKey": pk}] * 1001, query="delete")
    assert_error(r, 400, "InvalidRequest")
    assert len(partition(k2v, pk)) == 1000


# ---- key length --------------------------------------------------------------------------------

OK_KEY = "é" * 239 + "a"  # 479 bytes of UTF-8
LONG_KEY = "é" * 240  # 480 bytes


def test_key_lengths_of_the_test_keys():
    assert len(OK_KEY.encode()) == 479
    assert len(LONG_KEY.encode()) == 480


def test_keys_at_the_limit_accepted(k2v):
    r = k2v.request("PUT", ipath(OK_KEY), f"sort_key={q(OK_KEY)}", b"v")
    assert r.status == 204, r.body
    assert partition(k2v, OK_KEY)[OK_KEY] == [b64("v")]
    r = k2v.request("GET", ipath(OK_KEY), f"sort_key={q(OK_KEY)}")
    assert r.status == 200


@pytest.mark.parametrize("method,body", [("PUT", b"v"), ("GET", None), ("DELETE", None)])
def test_long_partition_key_in_path(k2v, method, body):
    r = k2v.request(method, ipath(LONG_KEY), "sort_key=s", body)
    assert_error(r, 400, "InvalidRequest", message="partition key")


@pytest.mark.parametrize("method,body", [("PUT", b"v"), ("GET", None), ("DELETE", None)])
def test_long_sort_key_in_query(k2v, pk, method, body):
    r = k2v.request(method, ipath(pk), f"sort_key={q(LONG_KEY)}", body)
    assert_error(r, 400, "InvalidRequest", message="sort_key")
    assert_partition_empty(k2v, pk)


def test_long_keys_in_poll_item(k2v, pk):
    r = k2v.request("GET", ipath(pk), f"sort_key={q(LONG_KEY)}&causality_token={EMPTY_TOKEN}&timeout=1")
    assert_error(r, 400, "InvalidRequest", message="sort_key")
    r = k2v.request("GET", ipath(LONG_KEY), f"sort_key=s&causality_token={EMPTY_TOKEN}&timeout=1")
    assert_error(r, 400, "InvalidRequest", message="partition key")


@pytest.mark.parametrize("field", ["pk", "sk"])
def test_long_keys_in_insert_batch(k2v, pk, field):
    item = {"pk": pk, "sk": "s", "v": b64("v"), field: LONG_KEY}
    r = k2v.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": "good", "v": b64("v")}, item])
    assert_error(r, 400, "InvalidRequest", message=field)
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize("query", ["search", "delete"])
@pytest.mark.parametrize("field", ["partitionKey", "prefix", "start", "end"])
def test_long_keys_in_batch_queries(k2v, pk, query, field):
    put(k2v, pk, "a", b"v")
    r = k2v.json("POST", f"/{BUCKET}", [{"partitionKey": pk}, {"partitionKey": pk, field: LONG_KEY}], query=query)
    assert_error(r, 400, "InvalidRequest", message=field)
    assert partition(k2v, pk) == {"a": [b64("v")]}


@pytest.mark.parametrize("field", ["prefix", "start", "end"])
def test_long_keys_in_read_index(k2v, field):
    r = k2v.request("GET", f"/{BUCKET}", f"{field}={q(LONG_KEY)}")
    assert_error(r, 400, "InvalidRequest", message=field)


@pytest.mark.parametrize("field", ["prefix", "start", "end"])
def test_long_keys_in_poll_range(k2v, pk, field):
    r = k2v.json("POST", ipath(pk), {field: LONG_KEY}, query="poll_range")
    assert_error(r, 400, "InvalidRequest", message=field)
    r = k2v.json("POST", ipath(LONG_KEY), {}, query="poll_range")
    assert_error(r, 400, "InvalidRequest", message="partition key")
