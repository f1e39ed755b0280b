"""docs/k2v-api.md "Expiring values": X-Garage-TTL and "ttl", expiry on every read path.

TTLs are 1-2 s and every wait is a ``wait_for`` on the observable outcome (no timed assertion):
a value "does not expire" is checked against a sentinel written after it with a shorter or equal
TTL, once the sentinel has expired.
"""

from __future__ import annotations

import json

import pytest

from tests.support import wait_for
from tests.support.k2v import (
    BINARY,
    BUCKET,
    JSON,
    TOKEN,
    Background,
    assert_error,
    b64,
    insert_batch,
    ipath,
    new_pk,
    put,
    q,
    read,
    read_batch,
    read_json,
)

TTL = "X-Garage-TTL"
EXPIRES = "X-Garage-Expires"


def put_ttl(k2v, pk: str, sk: str, value: bytes | str, ttl: int | str, token: str | None = None) -> None:
    headers = {TTL: str(ttl)}
    if token is not None:
        headers[TOKEN] = token
    r = k2v.request("PUT", ipath(pk), f"sort_key={q(sk)}", value, headers=headers)
    assert r.status == 204, (r.status, r.body)


def values_of(k2v, pk: str, sk: str) -> list:
    return read_json(k2v, pk, sk)[0]


def expired(k2v, pk: str, sk: str) -> bool:
    """The item reads as deleted: 204 for a binary read of a single tombstone."""
    r = read(k2v, pk, sk, accept=BINARY)
    return r.status == 204


def index_counts(k2v, pk: str) -> dict:
    r = k2v.request("GET", f"/{BUCKET}", f"prefix={q(pk)}")
    assert r.status == 200, (r.status, r.body)
    keys = {e["pk"]: e for e in r.json()["partitionKeys"]}
    return keys.get(pk, {"entries": 0, "values": 0})


# ---- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", ["0", "-1", "1.5", "abc", "31536001", "", "1e3", "+5", "5 5"])
def test_bad_ttl_header_is_400_and_writes_nothing(k2v, ttl):
    pk = new_pk("ttl-bad")
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"v", headers={TTL: ttl})
    assert_error(r, 400, "InvalidRequest")
    assert read(k2v, pk, "a").status == 404


def test_ttl_on_delete_item_is_400(k2v):
    pk = new_pk("ttl-del")
    put(k2v, pk, "a", b"v")
    r = k2v.request("DELETE", ipath(pk), "sort_key=a", headers={TTL: "5"})
    assert_error(r, 400, "InvalidRequest")
    assert values_of(k2v, pk, "a") == [b64("v")]


@pytest.mark.parametrize("ttl", [0, -1, 1.5, "60", True, 31_536_001, [5]])
def test_bad_batch_ttl_is_400_and_writes_nothing(k2v, ttl):
    pk = new_pk("ttl-batch-bad")
    items = [
        {"pk": pk, "sk": "good", "ct": None, "v": b64("x")},
        {"pk": pk, "sk": "bad", "ct": None, "v": b64("y"), "ttl": ttl},
    ]
    r = k2v.json("POST", f"/{BUCKET}", items)
    assert_error(r, 400, "InvalidRequest")
    assert read(k2v, pk, "good").status == 404


def test_batch_ttl_on_a_deletion_is_400(k2v):
    pk = new_pk("ttl-batch-del")
    r = k2v.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": "a", "ct": None, "v": None, "ttl": 5}])
    assert_error(r, 400, "InvalidRequest")
    assert read(k2v, pk, "a").status == 404


def test_largest_ttl_is_accepted_and_reported(k2v):
    pk = new_pk("ttl-max")
    put_ttl(k2v, pk, "a", "v", 31_536_000)
    r = read(k2v, pk, "a", accept=BINARY)
    assert r.status == 200 and r.body == b"v"
    exp = int(r.header(EXPIRES))
    res = read_batch(k2v, [{"partitionKey": pk}])[0]
    assert res["items"][0]["exp"] == exp


# ---- every read path ------------------------------------------------------------------------------


def test_expiry_reaches_every_read_path(k2v):
    pk = new_pk("ttl-paths")
    put(k2v, pk, "keep", b"k")
    put_ttl(k2v, pk, "gone", "g", 2)

    r = read(k2v, pk, "gone", accept=BINARY)
    assert r.status == 200 and r.body == b"g"
    exp = int(r.header(EXPIRES))
    token = r.header(TOKEN)
    assert read(k2v, pk, "keep", accept=BINARY).header(EXPIRES) is None
    res = read_batch(k2v, [{"partitionKey": pk}])[0]
    assert [(i["sk"], i.get("exp")) for i in res["items"]] == [("gone", exp), ("keep", None)]
    wait_for(lambda: index_counts(k2v, pk)["entries"] == 2)  # counters are eventually consistent

    # Long polls set up before the expiry: all wake when the value expires.
    r = k2v.json("POST", ipath(pk), {}, query="poll_range")
    marker = r.json()["seenMarker"]
    poll_item = Background(
        lambda: k2v.request(
            "GET", ipath(pk), f"sort_key=gone&causality_token={token}&timeout=30", headers={"Accept": JSON}, timeout=60
        )
    )
    poll_range = Background(
        lambda: k2v.json("POST", ipath(pk), {"seenMarker": marker, "timeout": 30}, query="poll_range", timeout=60)
    )
    body = {"timeout": 30, "ranges": [{"partitionKey": pk, "seenMarker": marker}]}
    poll_ranges = Background(
        lambda: k2v.request("POST", f"/{BUCKET}", "poll_ranges", json.dumps(body).encode(), timeout=60)
    )

    wait_for(lambda: expired(k2v, pk, "gone"), timeout=30)
    r = read(k2v, pk, "gone")
    assert r.status == 200 and r.json() == [None] and r.header(EXPIRES) is None
    assert values_of(k2v, pk, "keep") == [b64("k")]
    live = read_batch(k2v, [{"partitionKey": pk}])[0]
    assert [i["sk"] for i in live["items"]] == ["keep"]
    both = read_batch(k2v, [{"partitionKey": pk, "tombstones": True}])[0]
    assert {i["sk"]: i["v"] for i in both["items"]} == {"keep": [b64("k")], "gone": [None]}
    assert all("exp" not in i for i in both["items"])
    single = read_batch(k2v, [{"partitionKey": pk, "start": "gone", "singleItem": True}])[0]
    assert single["items"] == []

    r = poll_item.result(timeout=60)
    assert r.status == 200, (r.status, r.body)
    assert r.json() == [None] and r.header(TOKEN) != token
    r = poll_range.result(timeout=60)
    assert r.status == 200, (r.status, r.body)
    assert [(i["sk"], i["v"]) for i in r.json()["items"]] == [("gone", [None])]
    r = poll_ranges.result(timeout=60)
    assert r.status == 200, (r.status, r.body)
    assert [(i["sk"], i["v"]) for i in r.json()["ranges"][0]["items"]] == [("gone", [None])]

    # The tombstone was written (the pollers saw a new token), so the counters drop.
    wait_for(lambda: index_counts(k2v, pk)["entries"] == 1, timeout=30)
    assert index_counts(k2v, pk)["values"] == 1

    # DeleteBatch sees nothing left to delete there.
    r = k2v.json("POST", f"/{BUCKET}", [{"partitionKey": pk, "prefix": "gone"}], query="delete")
    assert r.status == 200 and r.json()[0]["deletedItems"] == 0


def test_a_concurrent_value_without_ttl_survives(k2v):
    pk = new_pk("ttl-conc")
    put(k2v, pk, "a", b"before")  # earlier, concurrent (no token)
    put_ttl(k2v, pk, "a", "ttl", 1)
    put(k2v, pk, "a", b"after")  # later, concurrent
    assert sorted(values_of(k2v, pk, "a")) == sorted([b64("before"), b64("ttl"), b64("after")])
    wait_for(lambda: b64("ttl") not in values_of(k2v, pk, "a"), timeout=30)
    # Deleted alone, as a DeleteItem with that value's own context would: the others stay.
    vals = values_of(k2v, pk, "a")
    assert sorted(v for v in vals if v is not None) == sorted([b64("before"), b64("after")])
    assert vals.count(None) == 1
    wait_for(lambda: index_counts(k2v, pk)["values"] == 2, timeout=30)


def test_write_with_token_and_no_ttl_no_longer_expires(k2v):
    pk = new_pk("ttl-overwrite")
    put_ttl(k2v, pk, "a", "temp", 1)
    token = read(k2v, pk, "a").header(TOKEN)
    put(k2v, pk, "a", b"kept", token=token)
    r = read(k2v, pk, "a", accept=BINARY)
    assert r.body == b"kept" and r.header(EXPIRES) is None
    put_ttl(k2v, pk, "sentinel", "s", 1)  # written later, same TTL: expires after "a" would have
    wait_for(lambda: expired(k2v, pk, "sentinel"), timeout=30)
    assert values_of(k2v, pk, "a") == [b64("kept")]


def test_write_with_token_and_a_new_ttl_moves_the_expiry(k2v):
    pk = new_pk("ttl-renew")
    put_ttl(k2v, pk, "a", "v1", 1)
    r = read(k2v, pk, "a", accept=BINARY)
    put_ttl(k2v, pk, "a", "v2", 3600, token=r.header(TOKEN))
    r2 = read(k2v, pk, "a", accept=BINARY)
    assert r2.body == b"v2" and int(r2.header(EXPIRES)) > int(r.header(EXPIRES))


def test_insert_batch_ttl_expires(k2v):
    pk = new_pk("ttl-batch")
    insert_batch(
        k2v,
        [
            {"pk": pk, "sk": "a", "ct": None, "v": b64("x"), "ttl": 1},
            {"pk": pk, "sk": "b", "ct": None, "v": b64("y"), "ttl": None},
        ],
    )
    res = read_batch(k2v, [{"partitionKey": pk}])[0]
    assert "exp" in res["items"][0] and "exp" not in res["items"][1]
    wait_for(lambda: [i["sk"] for i in read_batch(k2v, [{"partitionKey": pk}])[0]["items"]] == ["b"], timeout=30)


def test_conditional_insert_with_ttl_expires(k2v):
    pk = new_pk("ttl-cond")
    r = k2v.request("PUT", ipath(pk), "sort_key=lock", b"owner", headers={TTL: "1", "If-None-Match": "*"})
    assert r.status == 204, (r.status, r.body)
    assert read(k2v, pk, "lock", accept=BINARY).header(EXPIRES) is not None
    # Once expired the item has no live value: the lock can be taken again.
    wait_for(lambda: expired(k2v, pk, "lock"), timeout=30)
    r = k2v.request("PUT", ipath(pk), "sort_key=lock", b"next", headers={"If-None-Match": "*"})
    assert r.status == 204, (r.status, r.body)
    assert values_of(k2v, pk, "lock") == [b64("next")]


def test_browsers_may_read_the_expiry_header(k2v):
    pk = new_pk("ttl-cors")
    put_ttl(k2v, pk, "a", "v", 60)
    r = k2v.request("GET", ipath(pk), "sort_key=a", headers={"Origin": "https://app.example", "Accept": BINARY})
    assert r.status == 200 and r.header(EXPIRES) is not None
    assert EXPIRES.lower() in r.header("Access-Control-Expose-Headers").lower()


def txn(k2v, pk: str, body: dict) -> dict:
    r = k2v.request("POST", ipath(pk), "txn", json.dumps(body).encode())
    assert r.status == 200, (r.status, r.body)
    return r.json()


def test_transaction_put_ttl_and_compares_after_expiry(k2v):
    pk = new_pk("ttl-txn")
    res = txn(k2v, pk, {"success": [{"op": "put", "sk": "lease", "v": b64("me"), "ttl": 1}]})
    assert res["succeeded"]
    assert read(k2v, pk, "lease", accept=BINARY).header(EXPIRES) is not None
    held = {
        "compare": [{"sk": "lease", "target": "exists", "exists": False}],
        "failure": [{"op": "read", "sk": "lease"}],
    }
    res = txn(k2v, pk, held)
    assert not res["succeeded"] and res["results"][0]["v"] == [b64("me")]
    wait_for(lambda: expired(k2v, pk, "lease"), timeout=30)
    # Expired: the lease is free for the next owner.
    put_you = {"op": "put", "sk": "lease", "v": b64("you"), "ttl": 3600}
    take = {**held, "success": [put_you, {"op": "read", "sk": "lease"}]}
    res = txn(k2v, pk, take)
    assert res["succeeded"] and res["results"][1]["v"] == [b64("you")]
    assert int(read(k2v, pk, "lease", accept=BINARY).header(EXPIRES)) > 0
