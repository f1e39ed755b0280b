"""Partition transactions, ``POST /<bucket>/<pk>?txn`` (docs/k2v-api.md §5b)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tests.support import K2VHttp
from tests.support.k2v import (
    BUCKET,
    JSON,
    TOKEN,
    assert_error,
    assert_partition_empty,
    b64,
    ipath,
    partition,
    put,
    read_json,
    token_of,
)


def txn(k2v: K2VHttp, pk: str, body: dict | bytes, method: str = "POST"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return k2v.request(method, ipath(pk), "txn", raw)


def txn_ok(k2v: K2VHttp, pk: str, body: dict) -> dict:
    r = txn(k2v, pk, body)
    assert r.status == 200, (r.status, r.body)
    assert r.header("Content-Type") == JSON
    res = r.json()
    assert set(res) == {"succeeded", "results"}
    return res


def test_success_branch_writes_and_reads_its_own_writes(k2v, pk):
    res = txn_ok(
        k2v,
        pk,
        {
            "compare": [{"sk": "a", "target": "exists", "exists": False}],
            "success": [
                {"op": "put", "sk": "a", "v": b64("1")},
                {"op": "put", "sk": "b", "v": b64("2")},
                {"op": "read", "sk": "a"},
                {"op": "read", "sk": "never"},
            ],
            "failure": [{"op": "read", "sk": "a"}],
        },
    )
    assert res["succeeded"] is True
    ta, tb = token_of(k2v, pk, "a"), token_of(k2v, pk, "b")
    assert res["results"] == [
        {"sk": "a", "ct": ta},
        {"sk": "b", "ct": tb},
        {"sk": "a", "ct": ta, "v": [b64("1")]},
        {"sk": "never", "ct": None, "v": []},
    ]
    assert read_json(k2v, pk, "b")[0] == [b64("2")]


def test_failure_branch_runs_when_a_compare_is_false(k2v, pk):
    put(k2v, pk, "a", b"old")
    res = txn_ok(
        k2v,
        pk,
        {
            "compare": [
                {"sk": "a", "target": "exists", "exists": True},  # holds
                {"sk": "b", "target": "exists", "exists": True},  # does not
            ],
            "success": [{"op": "put", "sk": "a", "v": b64("new")}],
            "failure": [{"op": "read", "sk": "a"}, {"op": "put", "sk": "c", "v": b64("fallback")}],
        },
    )
    assert res["succeeded"] is False
    assert res["results"][0] == {"sk": "a", "ct": token_of(k2v, pk, "a"), "v": [b64("old")]}
    assert res["results"][1] == {"sk": "c", "ct": token_of(k2v, pk, "c")}
    assert read_json(k2v, pk, "a")[0] == [b64("old")]
    assert set(partition(k2v, pk)) == {"a", "c"}


def test_empty_transaction_succeeds_with_no_results(k2v, pk):
    assert txn_ok(k2v, pk, {}) == {"succeeded": True, "results": []}
    assert txn_ok(k2v, pk, {"compare": [], "success": [], "failure": []}) == {"succeeded": True, "results": []}
    assert_partition_empty(k2v, pk)


def _holds(k2v, pk, compare: dict) -> bool:
    return txn_ok(k2v, pk, {"compare": [compare]})["succeeded"]


def test_token_compare_is_exact_context_equality(k2v, pk):
    put(k2v, pk, "a", b"1")
    t1 = token_of(k2v, pk, "a")
    assert _holds(k2v, pk, {"sk": "a", "target": "token", "token": t1})
    put(k2v, pk, "a", b"2", token=t1)
    assert not _holds(k2v, pk, {"sk": "a", "target": "token", "token": t1})
    assert _holds(k2v, pk, {"sk": "a", "target": "token", "token": token_of(k2v, pk, "a")})
    # A never-written item matches no token.
    assert not _holds(k2v, pk, {"sk": "zz", "target": "token", "token": t1})


def test_exists_compare_counts_tombstones_as_absent(k2v, pk):
    assert not _holds(k2v, pk, {"sk": "a", "target": "exists", "exists": True})
    assert _holds(k2v, pk, {"sk": "a", "target": "exists", "exists": False})
    put(k2v, pk, "a", b"1")
    assert _holds(k2v, pk, {"sk": "a", "target": "exists", "exists": True})
    r = k2v.request("DELETE", ipath(pk), "sort_key=a", headers={TOKEN: token_of(k2v, pk, "a")})
    assert r.status == 204
    assert _holds(k2v, pk, {"sk": "a", "target": "exists", "exists": False})


def test_value_and_md5_compares_need_exactly_one_equal_live_value(k2v, pk):
    put(k2v, pk, "a", b"hello")
    md5 = hashlib.md5(b"hello").hexdigest()
    assert _holds(k2v, pk, {"sk": "a", "target": "value", "value": b64("hello")})
    assert not _holds(k2v, pk, {"sk": "a", "target": "value", "value": b64("hell")})
    assert _holds(k2v, pk, {"sk": "a", "target": "md5", "md5": md5})
    assert _holds(k2v, pk, {"sk": "a", "target": "md5", "md5": md5.upper()})
    assert not _holds(k2v, pk, {"sk": "a", "target": "md5", "md5": "0" * 32})
    assert not _holds(k2v, pk, {"sk": "missing", "target": "value", "value": b64("hello")})
    # Two concurrent values (a token-less write): neither compare holds any more.
    put(k2v, pk, "a", b"other")
    assert len(read_json(k2v, pk, "a")[0]) == 2
    assert not _holds(k2v, pk, {"sk": "a", "target": "value", "value": b64("hello")})
    assert not _holds(k2v, pk, {"sk": "a", "target": "md5", "md5": md5})


def test_put_supersedes_what_the_compare_saw_and_chains(k2v, pk):
    put(k2v, pk, "a", b"x")
    put(k2v, pk, "a", b"y")  # concurrent with x
    res = txn_ok(
        k2v,
        pk,
        {"compare": [{"sk": "a", "target": "exists", "exists": True}], "success": [{"op": "put", "sk": "a", "v": ""}]},
    )
    assert res["succeeded"]
    ct = res["results"][0]["ct"]
    values, token = read_json(k2v, pk, "a")
    assert values == [""] and token == ct
    # The new token chains into the next transaction's token compare.
    res = txn_ok(
        k2v,
        pk,
        {"compare": [{"sk": "a", "target": "token", "token": ct}], "success": [{"op": "delete", "sk": "a"}]},
    )
    assert res["succeeded"]
    assert res["results"] == [{"sk": "a", "ct": token_of(k2v, pk, "a")}]
    assert read_json(k2v, pk, "a")[0] == [None]


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{not json", "Invalid JSON"),
        (b"[]", "Invalid JSON"),
        (b'{"compare": {}}', "Invalid JSON"),
        (b'{"success": "x"}', "Invalid JSON"),
        ({"compare": ["x"]}, "compare[0]"),
        ({"compare": [{"sk": "a", "target": "size"}]}, "unknown compare target"),
        ({"compare": [{"target": "exists", "exists": True}]}, "missing field `sk`"),
        ({"compare": [{"sk": "a", "target": "exists"}]}, "`exists` must be a boolean"),
        ({"compare": [{"sk": "a", "target": "exists", "exists": 1}]}, "`exists` must be a boolean"),
        ({"compare": [{"sk": "a", "target": "token", "token": "!!"}]}, "not a valid causality token"),
        ({"compare": [{"sk": "a", "target": "token"}]}, "missing field `token`"),
        ({"compare": [{"sk": "a", "target": "value", "value": "a*b"}]}, "Invalid base64"),
        ({"compare": [{"sk": "a", "target": "md5", "md5": "abc"}]}, "32 hexadecimal digits"),
        ({"compare": [{"sk": "a", "target": "md5", "md5": "g" * 32}]}, "32 hexadecimal digits"),
        ({"success": [{"op": "cas", "sk": "a"}]}, "unknown op"),
        ({"success": [{"op": "put", "sk": "a"}]}, "missing field `v`"),
        ({"success": [{"op": "put", "sk": "a", "v": "%%"}]}, "Invalid base64"),
        ({"success": [{"op": "put", "sk": "a", "v": 5}]}, "must be a string"),
        ({"failure": [{"op": "delete", "sk": "a", "v": ""}]}, "only allowed on a put"),
        ({"failure": [{"op": "read", "sk": "a", "ttl": 5}]}, "only allowed on a put"),
        ({"success": [{"op": "put", "sk": "a", "v": "", "ttl": 0}]}, "ttl"),
        ({"success": [{"op": "put", "sk": "a", "v": "", "ttl": -1}]}, "ttl"),
        ({"success": [{"op": "put", "sk": "a", "v": "", "ttl": 1.5}]}, "ttl"),
        ({"success": [{"op": "put", "sk": "a", "v": "", "ttl": True}]}, "ttl"),
        ({"success": [{"op": "put", "sk": "a", "v": "", "ttl": 31_536_001}]}, "ttl"),
        ({"success": [{"op": "put", "sk": "a", "v": ""}, {"op": "delete", "sk": "a"}]}, "written twice"),
        ({"success": [{"op": "read", "sk": "k" * 480}]}, "over the limit"),
        ({"compare": [{"sk": "k" * 480, "target": "exists", "exists": True}]}, "over the limit"),
        ({"compare": [{"sk": "a", "target": "exists", "exists": False}] * 65}, "over the limit of 64"),
        ({"success": [{"op": "read", "sk": "a"}] * 129}, "over the limit of 128"),
        ({"failure": [{"op": "read", "sk": "a"}] * 129}, "over the limit of 128"),
    ],
)
def test_bad_transactions_are_400_and_write_nothing(k2v, pk, body, message):
    # Each bad body also carries a valid write, which must not happen.
    if isinstance(body, dict):
        body = {"success": [{"op": "put", "sk": "w", "v": b64("1")}], **body}
    r = txn(k2v, pk, body)
    assert_error(r, 400, "InvalidRequest", message=message)
    assert_partition_empty(k2v, pk)


def test_a_sort_key_may_be_written_once_per_branch_in_each_branch(k2v, pk):
    res = txn_ok(
        k2v,
        pk,
        {
            "success": [{"op": "put", "sk": "a", "v": b64("s")}, {"op": "read", "sk": "a"}],
            "failure": [{"op": "put", "sk": "a", "v": b64("f")}],
        },
    )
    assert res["succeeded"] and res["results"][1]["v"] == [b64("s")]


def test_partition_key_over_the_limit_is_400(k2v):
    r = txn(k2v, "p" * 480, {"success": [{"op": "put", "sk": "a", "v": ""}]})
    assert_error(r, 400, "InvalidRequest", message="over the limit")


@pytest.mark.parametrize(
    "method,path,query",
    [
        ("GET", f"/{BUCKET}/pk", "txn"),
        ("PUT", f"/{BUCKET}/pk", "txn"),
        ("DELETE", f"/{BUCKET}/pk", "txn"),
        ("SEARCH", f"/{BUCKET}/pk", "txn"),
        ("POST", f"/{BUCKET}", "txn"),
        ("POST", f"/{BUCKET}/pk", "txn&search"),
    ],
)
def test_txn_on_other_methods_or_paths_is_an_invalid_endpoint(k2v, method, path, query):
    r = k2v.request(method, path, query, b"{}")
    assert_error(r, 400, "InvalidRequest", message="Invalid endpoint")


def _key(node, name: str, **perms: bool) -> K2VHttp:
    key = node.admin("key.create", {"name": name})
    node.admin("bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, **perms})
    return K2VHttp(node.endpoint, key["accessKeyId"], key["secretAccessKey"])


def test_txn_needs_read_and_write_permission(node, creds, pk, k2v):
    body = {"success": [{"op": "put", "sk": "a", "v": ""}]}
    for perms in ({"read": True}, {"write": True}):
        client = _key(node, f"txn-{'-'.join(perms)}", **perms)
        assert_error(txn(client, pk, body), 403, "AccessDenied")
    assert_partition_empty(k2v, pk)
    both = _key(node, "txn-read-write", read=True, write=True)
    r = txn(both, pk, body)
    assert r.status == 200, r.body


def test_values_are_base64_both_ways(k2v, pk):
    raw = bytes(range(256))
    res = txn_ok(k2v, pk, {"success": [{"op": "put", "sk": "bin", "v": b64(raw)}, {"op": "read", "sk": "bin"}]})
    assert base64.b64decode(res["results"][1]["v"][0]) == raw
