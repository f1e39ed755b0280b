"""Transaction evaluation (model/k2v/txn.py): pure functions of the round's merged state."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.txn import (
    DELETE,
    EXISTS,
    MD5,
    PUT,
    READ,
    TOKEN,
    VALUE,
    Compare,
    Txn,
    TxnOp,
    evaluate,
    from_wire,
    has_dot,
    to_wire,
)
from garagekv.rpc.messages import MalformedMessage
from garagekv.util.errors import BadRequest, EntityTooLarge

BUCKET = b"\x05" * 32


def item(sk: str, *writes: tuple[int, bytes | None]) -> K2VItem:
    """An item with one concurrent value per (node, value) write."""
    it = K2VItem.new(BUCKET, "p", sk)
    for i, (node, value) in enumerate(writes):
        it.update(node, None, value, 100 + i)
    return it


def run(txn: Txn, state: dict, node: int = 9, ts: int = 1000, max_bytes: int = 1 << 20):
    return evaluate(txn, state, BUCKET, "p", node, ts, max_bytes, {})


def holds(c: Compare, it: K2VItem | None) -> bool:
    return c.holds(it)


def test_compare_targets():
    one = item("a", (1, b"x"))
    two = item("a", (1, b"x"), (2, b"y"))
    dead = item("a", (1, None))
    md5 = hashlib.md5(b"x").hexdigest()
    assert holds(Compare("a", TOKEN, one.causal_context()), one)
    assert not holds(Compare("a", TOKEN, one.causal_context()), two)
    assert not holds(Compare("a", TOKEN, CausalContext({})), None)
    assert [holds(Compare("a", EXISTS, exists=True), i) for i in (None, one, two, dead)] == [False, True, True, False]
    assert [holds(Compare("a", EXISTS, exists=False), i) for i in (None, one, two, dead)] == [True, False, False, True]
    assert [holds(Compare("a", VALUE, value=b"x"), i) for i in (None, one, two, dead)] == [False, True, False, False]
    assert [holds(Compare("a", MD5, md5=md5), i) for i in (None, one, two, dead)] == [False, True, False, False]
    assert not holds(Compare("a", VALUE, value=b""), dead)


def test_branch_writes_supersede_the_state_and_reads_see_them():
    before = item("a", (1, b"x"), (2, b"y"))
    txn = Txn(
        (Compare("a", EXISTS, exists=True),),
        (TxnOp(PUT, "a", b"z"), TxnOp(READ, "a"), TxnOp(DELETE, "b"), TxnOp(READ, "c")),
    )
    ev = run(txn, {"a": before, "b": None, "c": None})
    assert ev.succeeded
    written = {i.sort_key: i for i in ev.written}
    assert written["a"].values() == [b"z"] and written["b"].values() == [None]
    assert ev.results[1].item is written["a"]
    assert ev.results[3].item is None
    # Exactly one new dot per written item, the reserved one.
    assert has_dot(written["a"], 9, 1001) and has_dot(written["b"], 9, 1001)
    assert not has_dot(before, 9, 1001) and not has_dot(None, 9, 1001)
    # The input state is not modified.
    assert sorted(before.values()) == [b"x", b"y"]


def test_false_compare_runs_the_failure_branch():
    ev = run(Txn((Compare("a", EXISTS, exists=True),), (TxnOp(PUT, "a", b"1"),), (TxnOp(READ, "a"),)), {"a": None})
    assert not ev.succeeded and ev.written == [] and ev.results[0].item is None


def test_item_size_limit_applies_to_each_write():
    with pytest.raises(EntityTooLarge):
        run(Txn(success=(TxnOp(PUT, "a", b"v" * 2000),)), {"a": None}, max_bytes=1000)


def test_shape_limits():
    with pytest.raises(BadRequest, match="written twice"):
        Txn(success=(TxnOp(PUT, "a", b""), TxnOp(DELETE, "a")))
    with pytest.raises(BadRequest, match="limit of 64"):
        Txn(compare=tuple(Compare("a", EXISTS) for _ in range(65)))
    with pytest.raises(BadRequest, match="limit of 128"):
        Txn(failure=tuple(TxnOp(READ, "a") for _ in range(129)))
    # The same key in both branches, or read twice, is fine.
    Txn(success=(TxnOp(PUT, "a", b""), TxnOp(READ, "a"), TxnOp(READ, "a")), failure=(TxnOp(PUT, "a", b""),))


def test_read_keys_are_unique_in_first_use_order():
    txn = Txn((Compare("b", EXISTS),), (TxnOp(PUT, "a", b""), TxnOp(READ, "b")), (TxnOp(READ, "c"),))
    assert txn.read_keys() == ["b", "a", "c"]


keys = st.text(min_size=0, max_size=5)
compares = st.one_of(
    st.builds(Compare, keys, st.just(EXISTS), exists=st.booleans()),
    st.builds(Compare, keys, st.just(VALUE), value=st.binary(max_size=8)),
    st.builds(Compare, keys, st.just(MD5), md5=st.just("0" * 32)),
    st.builds(Compare, keys, st.just(TOKEN), st.just(CausalContext({3: 7}))),
)
ops = st.one_of(
    st.builds(TxnOp, st.just(PUT), keys, st.binary(max_size=8), st.one_of(st.none(), st.integers(1, 99))),
    st.builds(TxnOp, st.just(READ), keys),
)


@given(st.lists(compares, max_size=4), st.lists(ops, max_size=4), st.lists(ops, max_size=4))
def test_wire_round_trip(cs, success, failure):
    def unique(branch):
        seen, out = set(), []
        for o in branch:
            if o.op == PUT and o.sort_key in seen:
                continue
            seen.add(o.sort_key)
            out.append(o)
        return tuple(out)

    txn = Txn(tuple(cs), unique(success), unique(failure))
    assert from_wire("t", to_wire(txn)) == txn


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [[], []],
        [[], [], 5],
        [[["a", "exists", None, "yes", b"", ""]], [], []],
        [[["a", "token", None, False, b"", ""]], [], []],
        [[["a", "value", None, False, "text", ""]], [], []],
        [[], [["upsert", "a", b"", None]], []],
        [[], [["put", "a", b"", 0]], []],
        [[], [["put", "a", b"", True]], []],
        [[], [["put", 7, b"", None]], []],
    ],
)
def test_malformed_wire_transactions(raw):
    with pytest.raises(MalformedMessage):
        from_wire("t", raw)
