"""docs/k2v-api.md §8 ReadIndex: counters, omitted partitions and echoed fields."""

from __future__ import annotations

import uuid

import pytest

from tests.support import wait_for
from tests.support.k2v import (
    JSON,
    TOKEN,
    assert_error,
    b64,
    delete,
    insert_batch,
    put,
    q,
    token_of,
)


@pytest.fixture
def bucket(node, creds) -> str:
    """A fresh bucket per test: ReadIndex lists a whole bucket."""
    name = f"index-{uuid.uuid4().hex[:10]}"
    node.admin("bucket.create", {"name": name})
    node.admin(
        "bucket.permissions", {"bucket": name, "key": creds["access_key"], "allow": True, "read": True, "write": True}
    )
    return name


def _index(k2v, bucket: str, query: str = "") -> dict:
    r = k2v.request("GET", f"/{bucket}", query)
    assert r.status == 200, r.body
    assert r.header("Content-Type") == JSON
    assert r.header(TOKEN) is None
    return r.json()


def _counters(k2v, bucket: str) -> dict[str, dict]:
    return {p["pk"]: {k: v for k, v in p.items() if k != "pk"} for p in _index(k2v, bucket)["partitionKeys"]}


def _wait_counters(k2v, bucket: str, expected: dict[str, dict]) -> None:
    """Counters are updated asynchronously: poll for a few seconds before asserting."""
    try:
        wait_for(lambda: _counters(k2v, bucket) == expected, timeout=5)
    except AssertionError:
        assert _counters(k2v, bucket) == expected


def C(entries: int, conflicts: int, values: int, nbytes: int) -> dict:  # noqa: N802
    return {"entries": entries, "conflicts": conflicts, "values": values, "bytes": nbytes}


def test_counters(k2v, bucket):
    put(k2v, "p1", "x", b"abc", bucket=bucket)
    put(k2v, "p1", "y", b"1", bucket=bucket)
    put(k2v, "p1", "y", b"22", bucket=bucket)  # conflict: two values
    put(k2v, "p1", "z", b"gone", bucket=bucket)
    delete(k2v, "p1", "z", token_of(k2v, "p1", "z", bucket=bucket), bucket=bucket)  # tombstone only
    put(k2v, "p2", "w", b"v", bucket=bucket)
    delete(k2v, "p2", "w", bucket=bucket)  # [v, null]
    put(k2v, "p4", "e", b"", bucket=bucket)  # one empty value
    put(k2v, "p5", "s", b"same", bucket=bucket)
    put(k2v, "p5", "s", b"same", bucket=bucket)  # identical concurrent values: one value
    _wait_counters(
        k2v,
        bucket,
        {
            "p1": C(2, 1, 3, 6),
            "p2": C(1, 1, 1, 1),
            "p4": C(1, 0, 1, 0),
            "p5": C(1, 0, 1, 4),
        },
    )


def test_counters_follow_updates(k2v, bucket):
    put(k2v, "p", "a", b"12345", bucket=bucket)
    _wait_counters(k2v, bucket, {"p": C(1, 0, 1, 5)})
    put(k2v, "p", "a", b"12", token=token_of(k2v, "p", "a", bucket=bucket), bucket=bucket)
    _wait_counters(k2v, bucket, {"p": C(1, 0, 1, 2)})
    put(k2v, "p", "a", b"xyz", bucket=bucket)
    _wait_counters(k2v, bucket, {"p": C(1, 1, 2, 5)})
    insert_batch(k2v, [{"pk": "p", "sk": f"k{i}", "v": b64("v" * i)} for i in range(1, 4)], bucket=bucket)
    _wait_counters(k2v, bucket, {"p": C(4, 1, 5, 11)})


def test_all_tombstone_partitions_are_omitted(k2v, bucket):
    insert_batch(k2v, [{"pk": "dead", "sk": "a"}, {"pk": "dead", "sk": "b"}], bucket=bucket)  # tombstones only
    put(k2v, "live", "a", b"v", bucket=bucket)
    put(k2v, "soon", "a", b"v", bucket=bucket)
    put(k2v, "soon", "b", b"w", bucket=bucket)
    _wait_counters(k2v, bucket, {"live": C(1, 0, 1, 1), "soon": C(2, 0, 2, 2)})
    r = k2v.json("POST", f"/{bucket}", [{"partitionKey": "soon"}], query="delete")
    assert r.json()[0]["deletedItems"] == 2
    _wait_counters(k2v, bucket, {"live": C(1, 0, 1, 1)})


def test_empty_bucket_index_echo(k2v, bucket):
    assert _index(k2v, bucket) == {
        "prefix": None,
        "start": None,
        "end": None,
        "limit": None,
        "reverse": False,
        "partitionKeys": [],
        "more": False,
        "nextStart": None,
    }


def test_index_echo_fields(k2v, bucket):
    put(k2v, "pa", "s", b"v", bucket=bucket)
    put(k2v, "pb", "s", b"v", bucket=bucket)
    wait_for(lambda: len(_index(k2v, bucket)["partitionKeys"]) == 2)
    body = _index(k2v, bucket, "prefix=p&start=pa&end=pz&limit=1&reverse=false")
    assert body == {
        "prefix": "p",
        "start": "pa",
        "end": "pz",
        "limit": 1,
        "reverse": False,
        "partitionKeys": [{"pk": "pa", **C(1, 0, 1, 1)}],
        "more": True,
        "nextStart": "pb",
    }
    body = _index(k2v, bucket, "reverse=true")
    assert (body["limit"], body["reverse"]) == (None, True)
    assert [p["pk"] for p in body["partitionKeys"]] == ["pb", "pa"]


def test_index_limit_counts_only_listed_partitions(k2v, bucket):
    insert_batch(k2v, [{"pk": "a", "sk": "s"}], bucket=bucket)  # tombstone-only: not listed
    for p in ("b", "c", "d"):
        put(k2v, p, "s", b"v", bucket=bucket)
    wait_for(lambda: len(_index(k2v, bucket)["partitionKeys"]) == 3)
    body = _index(k2v, bucket, "limit=2")
    assert [p["pk"] for p in body["partitionKeys"]] == ["b", "c"]
    assert (body["more"], body["nextStart"]) == (True, "d")


def test_index_of_unicode_and_odd_partition_keys(k2v, bucket):
    keys = [" space", "a/b", "a%2Fb", "é", "😀"]
    insert_batch(k2v, [{"pk": k, "sk": "s", "v": b64("v")} for k in keys], bucket=bucket)
    wait_for(lambda: [p["pk"] for p in _index(k2v, bucket)["partitionKeys"]] == sorted(keys))
    body = _index(k2v, bucket, f"prefix={q('a/')}")
    assert [p["pk"] for p in body["partitionKeys"]] == ["a/b"]
    assert body["prefix"] == "a/"


def test_index_is_per_bucket(k2v, bucket, pk):
    put(k2v, pk, "s", b"v")  # in test-bucket
    put(k2v, "here", "s", b"v", bucket=bucket)
    wait_for(lambda: [p["pk"] for p in _index(k2v, bucket)["partitionKeys"]] == ["here"])


def test_index_start_not_in_prefix(k2v, bucket):
    assert_error(
        k2v.request("GET", f"/{bucket}", "prefix=b&start=a"),
        400,
        "InvalidRequest",
        message="Start key 'a' does not start with prefix 'b'",
    )
