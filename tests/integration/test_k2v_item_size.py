"""``[k2v_api] max_item_bytes``: a write that would grow an item (all its values and its causal
context) past the limit gets 413 ``EntityTooLarge`` and changes nothing, so no item ever outgrows
what one RPC message can carry (docs/k2v-compat.md, limits)."""

from __future__ import annotations

import pytest

from tests.support import K2VHttp, NodeProcess
from tests.support.k2v import (
    BUCKET,
    TOKEN,
    assert_error,
    assert_partition_empty,
    b64,
    ipath,
    partition,
    put,
    q,
    read_json,
)

MAX_ITEM = 4096
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> K2VHttp:
    """A node of its own with a tiny item limit."""
    n = NodeProcess(tmp_path_factory.mktemp("small-items"), k2v_extra=f"max_item_bytes = {MAX_ITEM}")
    n.start()
    key = n.admin("key.create", {"name": "small"})
    n.admin("bucket.create", {"name": BUCKET})
    n.admin(
        "bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, "read": True, "write": True}
    )
    yield K2VHttp(n.endpoint, key["accessKeyId"], key["secretAccessKey"])
    n.stop()


def put_raw(k2v: K2VHttp, pk: str, sk: str, value: bytes, token: str | None = None):
    headers = {TOKEN: token} if token is not None else None
    return k2v.request("PUT", ipath(pk), f"sort_key={q(sk)}", value, headers=headers)


def test_second_tokenless_write_over_the_limit_is_413_and_changes_nothing(small, pk):
    put(small, pk, "s", b"a" * 3000)
    before = read_json(small, pk, "s")
    r = put_raw(small, pk, "s", b"b" * 3000)
    assert_error(r, 413, "EntityTooLarge", prefix="Entity too large: ", message="max_item_bytes")
    assert read_json(small, pk, "s") == before


def test_a_single_value_over_the_limit_is_413(small, pk):
    r = put_raw(small, pk, "s", b"x" * (MAX_ITEM + 1))
    assert_error(r, 413, "EntityTooLarge")
    assert_partition_empty(small, pk)


def test_a_write_that_replaces_the_values_is_accepted(small, pk):
    """With the token, old values are discarded: the item does not grow, the write goes through."""
    put(small, pk, "s", b"a" * 3000)
    _, token = read_json(small, pk, "s")
    put(small, pk, "s", b"b" * 3000, token=token)
    values, _ = read_json(small, pk, "s")
    assert values == [b64(b"b" * 3000)]


def test_insert_batch_with_one_item_too_big_writes_nothing(small, pk):
    put(small, pk, "big", b"a" * 3000)
    other = pk + "-other"
    items = [
        {"pk": other, "sk": "fine", "ct": None, "v": b64(b"ok")},
        {"pk": pk, "sk": "small", "ct": None, "v": b64(b"ok")},
        {"pk": pk, "sk": "big", "ct": None, "v": b64(b"b" * 3000)},
    ]
    r = small.json("POST", f"/{BUCKET}", items)
    body = assert_error(r, 413, "EntityTooLarge")
    assert "'big'" in body["message"]
    assert_partition_empty(small, other)
    assert partition(small, pk) == {"big": [b64(b"a" * 3000)]}


def test_insert_batch_items_for_one_key_add_up(small, pk):
    items = [{"pk": pk, "sk": "s", "ct": None, "v": b64(b"x" * 3000)} for _ in range(2)]
    assert_error(small.json("POST", f"/{BUCKET}", items), 413, "EntityTooLarge")
    assert_partition_empty(small, pk)


def test_default_limit_refuses_two_9_mib_values(k2v, pk):
    """With the default ``max_item_bytes``: 9 MiB + 9 MiB concurrent values do not fit."""
    put(k2v, pk, "s", b"a" * (9 * MiB))
    r = put_raw(k2v, pk, "s", b"b" * (9 * MiB))
    assert_error(r, 413, "EntityTooLarge")
    values, _ = read_json(k2v, pk, "s")
    assert len(values) == 1 and len(values[0]) == len(b64(b"a" * (9 * MiB)))
