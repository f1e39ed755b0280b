"""Stored forms of keys and buckets: the bytes in LMDB (and compared between replicas by the
Merkle trees) must not change, so encodings are pinned byte for byte, and deletion must win
every merge so that a stale replica never brings a deleted key or bucket back."""

from __future__ import annotations

import copy

import pytest

from garagekv.model.bucket_table import Bucket, BucketParams
from garagekv.model.key_table import Key, KeyParams
from garagekv.model.permission import BucketKeyPerm
from garagekv.util.crdt import Lww, LwwMap

BID = bytes(range(32))
KEY_ID = "GK0123456789abcdef01234567"
OTHER_KEY = "GK" + "0" * 24


def a_key() -> Key:
    params = KeyParams(
        "ab" * 32,
        Lww(5, "my key"),
        Lww(6, True),
        {BID: BucketKeyPerm(7, True, False, True)},
        LwwMap({"alias": Lww(8, BID), "gone": Lww(9, None)}),
    )
    return Key(KEY_ID, params)


def a_bucket() -> Bucket:
    params = BucketParams(
        1700000000000,
        {OTHER_KEY: BucketKeyPerm(3, True, True, False)},
        LwwMap({"global": Lww(4, True), "old": Lww(5, False)}),
        LwwMap({OTHER_KEY + ":loc": Lww(6, True)}),
    )
    return Bucket(BID, params)


# Encoded by the code that wrote the first databases; any change here breaks existing data.
KEY_HEX = (
    "0182a26964ba474b303132333435363738396162636465663031323334353637a17085a7616c69617365739293a5616c"
    "69617308c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f93a4676f6e6509c0a762"
    "75636b65747381c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f9407c3c2c3a663"
    "72656174659206c3a46e616d659205a66d79206b6579a6736563726574d9406162616261626162616261626162616261"
    "6261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162"
)
KEY_TOMBSTONE_HEX = "0182a26964ba474b303132333435363738396162636465663031323334353637a170c0"
BUCKET_HEX = (
    "0182a26964c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fa17084a7616c696173"
    "65739293a6676c6f62616c04c393a36f6c6405c2a763726561746564cf0000018bcfe56800a46b65797381ba474b3030"
    "303030303030303030303030303030303030303030309403c3c3c2a56c6f63616c9193be474b30303030303030303030"
    "30303030303030303030303030303a6c6f6306c3"
)
BUCKET_TOMBSTONE_HEX = "0182a26964c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fa170c0"


@pytest.mark.parametrize(
    "entry, hex_form",
    [
        (a_key(), KEY_HEX),
        (Key(KEY_ID, None), KEY_TOMBSTONE_HEX),
        (a_bucket(), BUCKET_HEX),
        (Bucket(BID, None), BUCKET_TOMBSTONE_HEX),
    ],
)
def test_encoding_is_pinned_and_round_trips(entry, hex_form):
    data = entry.encode()
    assert data.hex() == hex_form
    decoded = type(entry).decode(bytes.fromhex(hex_form))
    assert decoded == entry
    assert decoded.encode() == data
    assert decoded.is_tombstone() == (entry.params is None)


@pytest.mark.parametrize("make, ident", [(a_key, KEY_ID), (a_bucket, BID)])
def test_deletion_wins_every_merge(make, ident):
    live, dead = make(), type(make())(ident, None)
    for a, b in ((copy.deepcopy(live), dead), (copy.deepcopy(dead), live)):
        a.merge(b)
        assert a.is_tombstone() and a.params is None
    both = make()
    both.merge(make())
    assert both == make()


def test_live_params_merge_field_by_field():
    older, newer = a_key(), a_key()
    newer.params.name = Lww(50, "renamed")
    older.merge(newer)
    assert older.params.name.value == "renamed" and older.params.allow_create_bucket.value is True
    b1, b2 = a_bucket(), a_bucket()
    b2.params.creation_date = 1600000000000
    b2.params.aliases.put("extra", True, ts=10)
    b1.merge(b2)
    assert b1.params.creation_date == 1600000000000 and b1.params.aliases.get("extra") is True
