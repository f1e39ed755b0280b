"""The benchmark scripts behind `make bench` and `make bench-scale` are not run by the suite
(minutes of load); importing them at least catches a renamed or moved import."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["bench", "bench_scale", "bench_expiry", "bench_workers", "storage_accounting"])
def test_script_imports(name):
    assert callable(_load(name).main)


def test_storage_accounting_splits_an_item_into_parts_that_sum_to_its_size():
    from garagekv.model.k2v.item import K2VItem

    acc = _load("storage_accounting")
    item = K2VItem.new(bytes(32), "pk-0001", "sk-01")
    item.update(7, None, b"v" * 100, 1_700_000_000_000)
    raw = item.encode()
    parts = acc.item_breakdown(raw)
    assert sum(parts.values()) == len(raw)
    assert parts["value"] == 100 and parts["bucket id"] == 32
    assert parts["partition key"] == 7 and parts["sort key"] == 5
    assert parts["causal context"] == 1 + 1 + 9  # node id 7, t_discard 0, a u64 timestamp
    assert parts["msgpack framing"] > 0


def test_storage_accounting_splits_a_packed_item(tmp_path):
    from garagekv.db.env import Database
    from garagekv.db.writer import GroupCommitWriter
    from garagekv.model.k2v.item import K2VItem
    from garagekv.model.k2v.stored import BucketNumbers, ItemStoredForm

    acc = _load("storage_accounting")
    db = Database(tmp_path, fsync=False)
    writer = GroupCommitWriter(db)
    try:
        item = K2VItem.new(bytes(range(32)), "pk-0001", "sk-01")
        item.update(7, None, b"v" * 100, 1_700_000_000_000)
        form = ItemStoredForm(BucketNumbers(db))
        packed = writer.run_sync(lambda tx: form.pack(tx, item.tree_key(), item.encode()))
    finally:
        writer.close()
        db.close()
    parts = acc.item_breakdown(packed, item.tree_key())
    assert sum(parts.values()) == len(packed) == len(item.encode()) - 35 - 6 + 1
    assert parts["bucket number"] == 1 and parts["partition key"] == 7 and parts["value"] == 100
    assert "sort key" not in parts and "bucket id" not in parts
    assert parts["causal context"] == 1 + 1 + 9


def test_storage_accounting_measures_every_tree_of_an_environment(tmp_path):
    from garagekv.db.env import Database
    from garagekv.model.k2v.item import K2VItem

    acc = _load("storage_accounting")
    db = Database(tmp_path, fsync=False)  # the environment is tmp_path/db.lmdb
    items, sums = db.tree(acc.ITEM_TREE), db.tree(acc.SUMS_TREE)
    with db.environment.begin(write=True) as txn:
        for i in range(10):
            item = K2VItem.new(bytes(32), "p", f"s{i}")
            item.update(1, None, b"x" * 100, 5)
            txn.put(item.tree_key(), item.encode(), db=items)
        txn.put(b"\x00", b"meta", db=sums)
        txn.put(b"\x01\x00", bytes(32), db=sums)
        txn.put(b"\x01" + b"k" * 40, bytes(32), db=sums)
        txn.put(b"\x02\x00", bytes(32), db=sums)
    db.close()
    out = acc.account(tmp_path / "db.lmdb")
    trees = {t["name"]: t for t in out["trees"]}
    assert trees[acc.ITEM_TREE]["entries"] == 10 and trees[acc.ITEM_TREE]["key_bytes"] == 10 * 34
    parts = trees[acc.SUMS_TREE]["parts"]
    assert parts["level 1 records"] == 2 and parts["level 1 key bytes"] == 2 + 41
    assert parts["level 2 records"] == 1 and parts["level 2 value bytes"] == 32 and parts["meta records"] == 1
    assert out["item_sample"] == 10 and out["item_parts"]["value"] == 1000
    text = acc.render(out, 10, 100, "test")
    assert acc.ITEM_TREE in text and "data.mdb" in text
