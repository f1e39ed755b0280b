"""The K2V client against a real node: every method, iterators, polls and error mapping."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import time
import uuid

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from garagekv.client import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    BadRequest,
    CausalityToken,
    Conflict,
    DeleteQuery,
    EntityTooLarge,
    Forbidden,
    InsertOp,
    InvalidCausalityToken,
    InvalidDigest,
    InvalidHeaderValue,
    InvalidRequest,
    InvalidUtf8String,
    K2VClient,
    K2VClientSync,
    NoSuchBucket,
    NoSuchKey,
    NotAcceptable,
    NotFound,
    ReadQuery,
    RequestTimeTooSkewed,
)
from tests.support import REGION
from tests.support.client import kwargs


@pytest.fixture
async def client(node, creds):
    async with K2VClient(**kwargs(node, creds)) as c:
        yield c


# --- single items -----------------------------------------------------------------------------


async def test_item_lifecycle_with_tokens(client, pk):
    with pytest.raises(NoSuchKey) as ei:
        await client.read_item(pk, "a")
    assert isinstance(ei.value, NotFound) and ei.value.status == 404 and ei.value.code == "NoSuchKey"

    await client.insert_item(pk, "a", b"v1")
    first = await client.read_item(pk, "a")
    assert first.values == [b"v1"] and isinstance(first.token, CausalityToken)
    assert first.partition_key == pk and first.sort_key == "a"
    first.token.clock()  # a well-formed token

    await client.insert_item(pk, "a", "v2")  # no token: concurrent value (str is UTF-8)
    both = await client.read_item(pk, "a")
    assert both.values == [b"v1", b"v2"] and both.is_conflict

    await client.insert_item(pk, "a", b"merged", both.token)  # with the token: replaces both
    merged = await client.read_item(pk, "a")
    assert merged.values == [b"merged"] and merged.value == b"merged"

    await client.delete_item(pk, "a", merged.token)
    gone = await client.read_item(pk, "a")  # deleted is not NotFound
    assert gone.values == [None] and gone.is_deleted and gone.value is None


async def test_delete_without_token_adds_a_concurrent_tombstone(client, pk):
    await client.insert_item(pk, "a", b"x")
    await client.delete_item(pk, "a")
    assert (await client.read_item(pk, "a")).values == [b"x", None]


async def test_binary_empty_and_large_values(client, pk):
    blob = bytes(range(256)) * 1000
    await client.insert_item(pk, "bin", blob)
    await client.insert_item(pk, "empty", b"")
    assert (await client.read_item(pk, "bin")).values == [blob]
    assert (await client.read_item(pk, "empty")).values == [b""]
    await client.insert_item(pk, "bin", b"\x00")  # concurrent: comes back through the JSON form
    assert (await client.read_item(pk, "bin")).values == [blob, b"\x00"]


@pytest.mark.parametrize("key", ["/leading", "a/b//c", ".", "..", "sp ace+plus", "é☃", "%41", "?&=#"])
async def test_awkward_keys_round_trip(client, pk, key):
    await client.insert_item(pk + key, key, key.encode())
    assert (await client.read_item(pk + key, key)).values == [key.encode()]
    page = await client.read_range(pk + key)
    assert [i.sort_key for i in page.items] == [key]
    if not key.startswith("/"):  # a partition key cannot start with "/" in a path (it is stripped)
        await client.insert_item(key + pk, "s", b"v")
        assert (await client.read_item(key + pk, "s")).values == [b"v"]


async def test_leading_slash_partition_key_is_addressable(client, pk):
    await client.insert_item("/" + pk, "s", b"slash")
    assert (await client.read_item("/" + pk, "s")).values == [b"slash"]
    with pytest.raises(NoSuchKey):
        await client.read_item(pk, "s")


async def test_empty_sort_key_goes_through_batches(client, pk):
    with pytest.raises(NoSuchKey):
        await client.read_item(pk, "")
    await client.insert_item(pk, "", b"root")
    item = await client.read_item(pk, "")
    assert item.values == [b"root"] and item.sort_key == ""
    await client.delete_item(pk, "", item.token)
    assert (await client.read_item(pk, "")).values == [None]
    with pytest.raises(ValueError):
        await client.poll_item(pk, "", item.token)


# --- batches and ranges -----------------------------------------------------------------------


async def test_insert_batch_and_read_batch(client, pk):
    await client.insert_batch([(pk, "a", b"1"), (pk, "b", "2"), InsertOp(pk, "c", b"3"), (pk + "x", "z", b"4")])
    a = await client.read_item(pk, "a")
    await client.insert_batch([(pk, "a", None, a.token), (pk, "b", b"2bis"), InsertOp(pk, "d", None)])
    pages = await client.read_batch(
        [
            ReadQuery(pk),
            ReadQuery(pk, tombstones=True),
            ReadQuery(pk, conflicts_only=True),
            ReadQuery(pk, start="c", single_item=True),
            ReadQuery(pk + "x"),
            ReadQuery(pk + "missing"),
        ]
    )
    assert [[i.sort_key for i in p.items] for p in pages] == [["b", "c"], ["a", "b", "c", "d"], ["b"], ["c"], ["z"], []]
    assert pages[1].items[0].values == [None] and pages[2].items[0].values == [b"2", b"2bis"]
    assert pages[3].query.single_item and pages[4].items[0].partition_key == pk + "x"


async def test_read_range_pages_and_iterators(client, pk):
    keys = [f"k{i:02d}" for i in range(25)]
    await client.insert_batch([(pk, k, k.encode()) for k in keys] + [(pk, "other", b"o")])
    page = await client.read_range(pk, prefix="k", limit=4)
    assert [i.sort_key for i in page.items] == keys[:4] and page.more and page.next_start == "k04"
    pages = [p async for p in client.iter_range_pages(pk, prefix="k", page_size=4)]
    assert len(pages) == 7 and not pages[-1].more
    assert [i.sort_key for p in pages for i in p.items] == keys
    assert [i.sort_key async for i in client.iter_range(pk, prefix="k", page_size=3)] == keys
    assert [i.sort_key async for i in client.iter_range(pk, prefix="k", reverse=True, page_size=4)] == keys[::-1]
    got = [i.sort_key async for i in client.iter_range(pk, start="k05", end="k15", page_size=2)]
    assert got == keys[5:15]
    assert [i.value async for i in client.iter_range(pk, start="o", page_size=1)] == [b"o"]
    with pytest.raises(ValueError):
        [i async for i in client.iter_range(pk, page_size=0)]


async def test_delete_batch_and_delete_range(client, pk):
    await client.insert_batch([(pk, f"a{i}", b"v") for i in range(5)] + [(pk, "b", b"v"), (pk, "c", b"v")])
    assert await client.delete_range(pk, prefix="a") == 5
    results = await client.delete_batch(
        [
            DeleteQuery(pk, start="b", single_item=True),
            DeleteQuery(pk, start="a"),  # already deleted ones do not count
            DeleteQuery(pk + "none"),
        ]
    )
    assert [r.deleted_items for r in results] == [1, 1, 0]
    assert results[0].query.single_item and results[0].query.start == "b"
    assert (await client.read_range(pk)).items == []
    assert len((await client.read_range(pk, tombstones=True)).items) == 7


async def test_read_index_pages(client):
    prefix = f"idx-{uuid.uuid4().hex[:8]}-"
    pks = [f"{prefix}{i:02d}" for i in range(11)]
    await client.insert_batch([(p, "s", b"abc") for p in pks] + [(pks[0], "t", b"de")])
    deadline = time.monotonic() + 10
    while True:  # the counters are updated asynchronously
        entries = [e async for e in client.iter_index(prefix=prefix, page_size=3)]
        if len(entries) == 11 and entries[0].entries == 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert [e.partition_key for e in entries] == pks
    assert (entries[0].entries, entries[0].values, entries[0].bytes, entries[0].conflicts) == (2, 2, 5, 0)
    pages = [p async for p in client.iter_index_pages(prefix=prefix, page_size=3)]
    assert len(pages) == 4 and pages[0].more and pages[0].next_start == pks[3] and not pages[-1].more
    page = await client.read_index(prefix=prefix, limit=2, reverse=True)
    assert [e.partition_key for e in page.partition_keys] == pks[:-3:-1] and page.reverse and page.limit == 2
    rev = [e.partition_key async for e in client.iter_index(prefix=prefix, reverse=True, page_size=4)]
    assert rev == pks[::-1]


# --- polls ------------------------------------------------------------------------------------


async def test_poll_item_wakes_on_concurrent_write(client, pk):
    await client.insert_item(pk, "p", b"before")
    item = await client.read_item(pk, "p")
    waiter = asyncio.create_task(client.poll_item(pk, "p", item.token, timeout=10))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await client.insert_item(pk, "p", b"after", item.token)
    got = await asyncio.wait_for(waiter, 5)
    assert got is not None and got.values == [b"after"] and got.token != item.token


async def test_poll_item_timeout_and_first_write(client, pk):
    t0 = time.monotonic()
    assert await client.poll_item(pk, "never", CausalityToken.EMPTY, timeout=1) is None
    assert 0.9 < time.monotonic() - t0 < 5
    waiter = asyncio.create_task(client.poll_item(pk, "new", CausalityToken.EMPTY, timeout=10))
    await asyncio.sleep(0.1)
    await client.insert_item(pk, "new", b"first")
    assert (await asyncio.wait_for(waiter, 5)).values == [b"first"]


async def test_watch_item(client, pk):
    await client.insert_item(pk, "w", b"0")
    seen = []
    async for item in client.watch_item(pk, "w", timeout=10):
        seen.append(item.value)
        if len(seen) == 3:
            break
        await client.insert_item(pk, "w", str(len(seen)), item.token)
    assert seen == [b"0", b"1", b"2"]


async def test_poll_range_and_watch(client, pk):
    await client.insert_batch([(pk, "a1", b"1"), (pk, "a2", b"2"), (pk, "b", b"x")])
    first = await client.poll_range(pk, prefix="a")
    assert [i.sort_key for i in first.items] == ["a1", "a2"] and first.seen_marker
    waiter = asyncio.create_task(client.poll_range(pk, prefix="a", seen_marker=first.seen_marker, timeout=10))
    await asyncio.sleep(0.2)
    await client.insert_item(pk, "b", b"outside the range")
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await client.insert_item(pk, "a3", b"3")
    changed = await asyncio.wait_for(waiter, 5)
    assert [(i.sort_key, i.values) for i in changed.items] == [("a3", [b"3"])]
    assert await client.poll_range(pk, prefix="a", seen_marker=changed.seen_marker, timeout=1) is None

    batches = []

    async def writer():
        await asyncio.sleep(0.2)
        await client.insert_item(pk, "a4", b"4")
        await asyncio.sleep(0.2)
        await client.insert_item(pk, "a1", b"1bis")

    task = asyncio.create_task(writer())
    async for res in client.watch_range(pk, prefix="a", timeout=10):
        batches.append(res)
        if sum(len(b.items) for b in batches[1:]) >= 2:
            break
    await task
    assert [i.sort_key for i in batches[0].items] == ["a1", "a2", "a3"]  # the initial state
    changes = {i.sort_key: i.values for b in batches[1:] for i in b.items}
    assert changes == {"a4": [b"4"], "a1": [b"1", b"1bis"]}
    assert all(b.seen_marker for b in batches)
    # a stored marker resumes the watch: no initial scan, only what changed since
    resumed = client.watch_range(pk, prefix="a", seen_marker=batches[-1].seen_marker, timeout=10)
    await client.insert_item(pk, "a2", b"2bis")
    res = await asyncio.wait_for(resumed.__anext__(), 5)
    await resumed.aclose()
    assert [(i.sort_key, i.values) for i in res.items] == [("a2", [b"2", b"2bis"])]


# --- errors -----------------------------------------------------------------------------------


async def test_error_mapping_4xx(node, creds, client, pk):
    with pytest.raises(InvalidRequest) as ei:
        await client.read_range(pk, prefix="a", start="b")
    assert ei.value.status == 400 and ei.value.code == "InvalidRequest" and "prefix" in ei.value.message
    assert ei.value.region == REGION and ei.value.path == f"/{creds['bucket']}"
    with pytest.raises(InvalidRequest):
        await client.poll_item(pk, "a", "not a token!", timeout=1)
    with pytest.raises(InvalidCausalityToken) as ei:
        await client.insert_item(pk, "a", b"v", token="bad!")
    assert ei.value.code == "CausalityToken" and isinstance(ei.value, BadRequest)
    with pytest.raises(InvalidCausalityToken):
        await client.insert_batch([(pk, "a", b"v", "bad!")])
    with pytest.raises(InvalidUtf8String):
        await client.insert_item("\udcff", "a", b"v")
    with pytest.raises(InvalidHeaderValue):
        await client.insert_item(pk, "a", b"v", token="é")
    with pytest.raises(InvalidDigest):
        await client.request("PUT", pk, [("sort_key", "a")], b"body", content_sha256="0" * 64)
    with pytest.raises(NotAcceptable) as ei:
        await client.request("GET", pk, [("sort_key", "a")], headers={"Accept": "text/plain"})
    assert ei.value.status == 406
    with pytest.raises(EntityTooLarge) as ei:
        await client.insert_item(pk, "big", b"x" * (16 * 1024 * 1024 + 1))
    assert ei.value.status == 413
    with pytest.raises(NoSuchKey):
        await client.read_item(pk, "missing")

    await client.insert_item(pk, "c", b"1")
    await client.insert_item(pk, "c", b"2")
    with pytest.raises(Conflict) as ei:  # binary-only Accept on concurrent values
        await client.request("GET", pk, [("sort_key", "c")], headers={"Accept": "application/octet-stream"})
    assert ei.value.status == 409
    raw = await client.request(
        "GET", pk, [("sort_key", "c")], headers={"Accept": "application/octet-stream"}, check=False
    )
    assert raw.status == 409 and raw.headers["X-Garage-Causality-Token"]

    bad = {
        "region": (AuthorizationHeaderMalformed, {"region": "elsewhere"}),
        "secret": (AccessDenied, {"secret_access_key": "wrong"}),
        "key": (AccessDenied, {"access_key_id": "GK" + "0" * 24}),
        "clock": (RequestTimeTooSkewed, {"clock": lambda: time.time() - 3600}),
        "bucket": (NoSuchBucket, {"bucket": "no-such-bucket"}),
    }
    for name, (cls, kw) in bad.items():
        async with K2VClient(**kwargs(node, creds, **kw)) as other:
            with pytest.raises(cls) as ei:
                await other.read_item(pk, "a")
            assert ei.value.code == cls.default_code, name
            assert ei.value.status == (404 if cls is NoSuchBucket else 403 if issubclass(cls, Forbidden) else 400)


def test_permission_denied(node, creds, pk):
    key = node.admin("key.create", {"name": "read-only"})
    node.admin(
        "bucket.permissions",
        {
            "bucket": creds["bucket"],
            "key": key["accessKeyId"],
            "allow": True,
            "read": True,
            "write": False,
            "owner": False,
        },
    )
    with K2VClientSync(
        **kwargs(node, creds, access_key_id=key["accessKeyId"], secret_access_key=key["secretAccessKey"])
    ) as ro:
        with pytest.raises(NoSuchKey):
            ro.read_item(pk, "a")
        with pytest.raises(AccessDenied) as ei:
            ro.insert_item(pk, "a", b"v")
        assert ei.value.status == 403 and "not allowed" in ei.value.message


# --- signatures, constructors, sync -----------------------------------------------------------


def test_signatures_match_botocore_and_are_accepted(node, creds, pk, monkeypatch):
    now = time.time()
    c = K2VClient(**kwargs(node, creds, clock=lambda: now))
    monkeypatch.setattr(
        botocore.auth,
        "get_current_datetime",
        lambda *a, **k: dt.datetime.fromtimestamp(now, dt.UTC).replace(tzinfo=None),
    )
    bucket = creds["bucket"]
    cases = [
        ("PUT", pk + "/x y", [("sort_key", "a b&c")], b"value", {}),
        ("GET", pk + "/x y", [("sort_key", "a b&c")], b"", {"Accept": "application/json"}),
        (
            "POST",
            None,
            [("search", "")],
            json.dumps([{"partitionKey": pk + "/x y"}]).encode(),
            {"Content-Type": "application/json"},
        ),
        ("GET", None, [("prefix", pk), ("limit", "10")], b"", {}),
    ]
    for method, key, query, body, headers in cases:
        req = c.prepare(method, key, query, body, headers)
        plain = {k: v for k, v in req.headers.items() if k not in ("Authorization", "X-Amz-Date", "User-Agent")}
        aws = AWSRequest(method=method, url=req.url, data=body, headers=plain)
        botocore.auth.SigV4Auth(Credentials(creds["access_key"], creds["secret_key"]), "k2v", REGION).add_auth(aws)
        assert aws.headers["Authorization"] == req.headers["Authorization"]
        conn = http.client.HTTPConnection(node.endpoint, timeout=10)
        try:
            conn.request(method, req.path + (f"?{req.query}" if req.query else ""), body=body, headers=req.headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        assert resp.status in (200, 204), data
        if method == "GET" and key:
            assert json.loads(data) == ["dmFsdWU="]
    assert req.path == f"/{bucket}"


def test_sync_client_end_to_end(node, creds, pk):
    dev = {
        "k2v_endpoint": f"http://{node.endpoint}",
        "region": REGION,
        "access_key_id": creds["access_key"],
        "secret_access_key": creds["secret_key"],
        "bucket": creds["bucket"],
        "nodes": [],
    }
    with K2VClientSync.from_dev_json(json.dumps(dev)) as k2v:
        k2v.insert_item(pk, "s", b"sync")
        item = k2v.read_item(pk, "s")
        assert item.values == [b"sync"]
        k2v.insert_batch([(pk, f"k{i}", b"v") for i in range(7)])
        assert [i.sort_key for i in k2v.iter_range(pk, prefix="k", page_size=2)] == [f"k{i}" for i in range(7)]
        assert len(list(k2v.iter_range_pages(pk, prefix="k", page_size=2))) == 4
        assert k2v.read_range(pk, prefix="k", limit=1).next_start == "k1"
        assert [i.sort_key for i in k2v.read_batch([ReadQuery(pk, start="s", single_item=True)])[0].items] == ["s"]
        assert k2v.poll_item(pk, "s", item.token, timeout=1) is None
        watch = k2v.watch_range(pk, prefix="k")
        assert len(next(watch).items) == 7
        watch.close()  # closes the async generator on the private loop
        assert k2v.delete_range(pk, prefix="k") == 7
        k2v.delete_item(pk, "s", item.token)
        assert k2v.read_item(pk, "s").values == [None]
        assert k2v.request("GET", None, [("prefix", pk)]).status == 200
    env = {
        "AWS_ACCESS_KEY_ID": creds["access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
        "GARAGEKV_K2V_ENDPOINT": node.endpoint,
        "GARAGEKV_BUCKET": creds["bucket"],
    }
    with K2VClientSync.from_env(env) as k2v:
        assert k2v.read_item(pk, "s").is_deleted
