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


def test_dot_discarded_tells_superseded_from_never_applied():
    from garagekv.model.k2v.txn import dot_discarded

    mine = item("a", (9, b"mine"))  # dot (9, 101)
    assert has_dot(mine, 9, 101) and not dot_discarded(mine, 9, 101)
    # Superseded by a write whose context covered it: not held, but covered.
    later = mine.copy()
    later.update(4, mine.causal_context(), b"later", 500)
    assert not has_dot(later, 9, 101) and dot_discarded(later, 9, 101)
    # Another node's concurrent value only: neither held nor covered (never applied).
    other = item("a", (4, b"other"))
    assert not has_dot(other, 9, 101) and not dot_discarded(other, 9, 101)
    assert not dot_discarded(None, 9, 101)


def test_latest_md5_compare_uses_the_latest_live_value():
    from garagekv.model.k2v.txn import LATEST_MD5, latest_value

    it = item("a", (1, b"old"), (2, b"new"), (3, None))
    assert latest_value(it) == b"new" and latest_value(None) is None
    assert Compare("a", LATEST_MD5, md5=hashlib.md5(b"new").hexdigest()).holds(it)
    assert not Compare("a", LATEST_MD5, md5=hashlib.md5(b"old").hexdigest()).holds(it)
    # Unlike the public md5 target, which needs exactly one live value.
    assert not Compare("a", MD5, md5=hashlib.md5(b"new").hexdigest()).holds(it)


# ---- several transactions in one round -----------------------------------------------------------


def batch(txns, state, previous=(), node_ts=1000):
    from garagekv.model.k2v.txn import decide_batch

    return decide_batch(txns, state, {}, BUCKET, "p", 9, node_ts, 1 << 24, previous)


def test_a_round_decides_its_transactions_in_order():
    create = Txn((Compare("a", EXISTS, exists=False),), (TxnOp(PUT, "a", b"first"),), (TxnOp(READ, "a"),))
    outcomes, written, attempt = batch([create, create, Txn(success=(TxnOp(READ, "a"),))], {"a": None})
    assert [o.succeeded for o in outcomes] == [True, False, True]
    # The second saw the first's write (its failure branch read it), as did the read.
    assert outcomes[1].results[0].item.values() == [b"first"]
    assert outcomes[2].results[0].item.values() == [b"first"]
    assert [i.values() for i in written] == [[b"first"]]
    assert attempt is not None and attempt.branches == (True, None, None) and attempt.dots == {"a": 1001}


def test_writes_to_one_item_in_a_round_get_increasing_dots():
    put = lambda v: Txn(success=(TxnOp(PUT, "a", v),))  # noqa: E731
    outcomes, written, attempt = batch([put(b"1"), put(b"2")], {"a": None})
    assert [i.values() for i in written] == [[b"2"]]
    t1 = outcomes[0].results[0].item.causal_context().get(9)
    t2 = outcomes[1].results[0].item.causal_context().get(9)
    assert (t1, t2) == (1001, 1002) and attempt.dots == {"a": 1002}


def test_an_attempt_applied_by_another_proposer_keeps_its_outcomes():
    put = Txn(success=(TxnOp(READ, "a"), TxnOp(PUT, "a", b"mine")))
    outcomes, written, attempt = batch([put], {"a": None})
    # The next attempt finds the dot: the first attempt's outcome (and its read) stands.
    again, written2, proposed = batch([put], {"a": written[0]}, previous=[attempt])
    assert again == outcomes and written2 == [] and proposed is None


def test_an_attempt_never_applied_is_decided_afresh_and_an_ambiguous_one_is_503():
    from garagekv.util.errors import ServiceUnavailable

    create = Txn((Compare("a", EXISTS, exists=False),), (TxnOp(PUT, "a", b"mine"),))
    _, _, attempt = batch([create], {"a": None})
    theirs = item("a", (4, b"theirs"))
    # Another value won, without seeing ours: ours never applied, the compare is now false.
    (out,), _, _ = batch([create], {"a": theirs}, previous=[attempt])
    assert out.succeeded is False
    # Another value superseded ours' dot (its context covers it): ours may have applied.
    covering = item("a", (9, b"x"))
    covering.update(4, CausalContext({9: 5000}), b"theirs", 10, 10**6)
    (out,), _, _ = batch([create], {"a": covering}, previous=[attempt])
    assert isinstance(out, ServiceUnavailable)


def test_an_operation_over_the_update_limit_waits_for_the_next_round():
    from garagekv.model.k2v import txn as txn_module

    big = Txn(success=(TxnOp(PUT, "a", b"x" * 1000),))
    big2 = Txn(success=(TxnOp(PUT, "b", b"y" * 1000),))
    old = txn_module.MAX_UPDATE_BYTES
    txn_module.MAX_UPDATE_BYTES = 1500
    try:
        outcomes, written, _ = batch([big, big2], {"a": None, "b": None})
        assert isinstance(outcomes[1], txn_module.Deferred) and len(written) == 1
        # Alone and still too large: 413.
        (alone,), _, _ = batch([Txn(success=(TxnOp(PUT, "a", b"x" * 2000),))], {"a": None})
        assert isinstance(alone, EntityTooLarge)
    finally:
        txn_module.MAX_UPDATE_BYTES = old


def test_of_several_lost_attempts_the_one_whose_dots_are_held_gives_the_outcomes():
    read_then_put = Txn(success=(TxnOp(READ, "b"), TxnOp(PUT, "a", b"mine")))
    first, written1, att1 = batch([read_then_put], {"a": None, "b": None}, node_ts=1000)
    b = item("b", (4, b"later"))
    second, _, att2 = batch([read_then_put], {"a": None, "b": b}, previous=[att1], node_ts=1010)
    assert att2.dots == {"a": 1011} and second != first
    # The first attempt was the one completed: its outcomes (its read of b included) stand.
    again, _, proposed = batch([read_then_put], {"a": written1[0], "b": b}, previous=[att1, att2], node_ts=1020)
    assert again == first and proposed is None
