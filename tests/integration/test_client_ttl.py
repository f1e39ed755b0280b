"""TTL writes through the Python client and ``garagekv k2v``: ``ttl=``, ``InsertOp.ttl``, ``--ttl``,
and the expiry shown on what they read."""

from __future__ import annotations

import json
import subprocess

import pytest

from garagekv.client import BadRequest, InsertOp, Read, ReadQuery
from tests.support import wait_for
from tests.support.client import command, run_env


def k2v_cli(node, creds, *args: str) -> str:
    r = subprocess.run(command(*args), capture_output=True, timeout=60, env=run_env(node, creds), input=b"")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout.decode()


def test_client_ttl_writes_and_expiry_on_reads(sync, pk):
    sync.insert_item(pk, "a", b"temp", ttl=1)
    sync.insert_item(pk, "b", b"kept")
    sync.insert_batch([InsertOp(pk, "c", b"batch", ttl=3600)])
    a = sync.read_item(pk, "a")
    assert a.value == b"temp" and a.expires is not None
    assert sync.read_item(pk, "b").expires is None
    (page,) = sync.read_batch([ReadQuery(pk)])
    exp = {i.sort_key: i.expires for i in page.items}
    assert exp["a"] == a.expires and exp["b"] is None and exp["c"] > a.expires
    assert page.items[0].to_json()["exp"] == a.expires
    wait_for(lambda: sync.read_item(pk, "a").is_deleted, timeout=30)
    assert sync.read_item(pk, "a").expires is None
    with pytest.raises(BadRequest):
        sync.insert_item(pk, "d", b"x", ttl=0)


def test_cli_insert_ttl_and_read_shows_the_expiry(node, creds, pk):
    k2v_cli(node, creds, "insert", pk, "a", "hello", "--ttl", "3600")
    item = json.loads(k2v_cli(node, creds, "read", pk, "a", "--json"))
    assert isinstance(item["exp"], int)
    assert f"({item['exp']})" in k2v_cli(node, creds, "read", pk, "a")
    k2v_cli(node, creds, "insert", pk, "b", "short", "--ttl", "1")
    wait_for(lambda: json.loads(k2v_cli(node, creds, "read", pk, "b", "--json"))["v"] == [None], timeout=30)


def test_the_expiry_comes_with_linearizable_reads_and_transaction_reads(sync, pk):
    for sk in ("", "x"):
        sync.insert_item(pk, sk, b"temp", ttl=600)
        plain = sync.read_item(pk, sk).expires
        assert plain is not None
        assert sync.read_item(pk, sk, linearizable=True).expires == plain, sk
        res = sync.txn(pk, success=[Read(sk)])
        assert res.results[0].expires == plain and res.results[0].item(pk).expires == plain
        assert res.to_json()["results"][0]["exp"] == plain


def test_insert_ops_take_text_values_as_tuples_do(sync, pk):
    sync.insert_batch([InsertOp(pk, "t", "text"), InsertOp(pk, "b", bytearray(b"ba"))])
    assert sync.read_item(pk, "t").value == b"text" and sync.read_item(pk, "b").value == b"ba"
