"""The linearizability checker accepts what is linearizable and rejects what is not."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.lincheck import (
    CAS_REGISTER,
    INFINITY,
    LIVE,
    REGISTERS,
    UNKNOWN,
    Op,
    SearchLimitExceeded,
    check,
)


def op(inp, out, call, ret=INFINITY, key="k", client=0):
    return Op(key, inp, out, call, ret, client)


def ok(history):
    return check(history, CAS_REGISTER).ok


def test_sequential_history_is_linearizable():
    h = [
        op(("read",), None, 0, 1),
        op(("cas", None, "a"), True, 2, 3),
        op(("read",), "a", 4, 5),
        op(("cas", "a", "b"), True, 6, 7),
        op(("cas", "a", "c"), False, 8, 9),
        op(("read",), "b", 10, 11),
    ]
    result = check(h, CAS_REGISTER)
    assert result.ok and [o.call for o in result.keys[0].order] == [0, 2, 4, 6, 8, 10]


def test_stale_read_after_a_completed_write_is_rejected():
    h = [op(("write", "a"), None, 0, 1), op(("write", "b"), None, 2, 3), op(("read",), "a", 4, 5)]
    result = check(h, CAS_REGISTER)
    assert not result.ok
    assert "not linearizable" in result.explain(CAS_REGISTER)


def test_concurrent_operations_may_take_either_order():
    # The read overlaps the write: it may see the old or the new value.
    for seen in (None, "a"):
        assert ok([op(("write", "a"), None, 0, 10), op(("read",), seen, 1, 2)])


def test_two_winners_of_insert_if_absent_are_rejected():
    h = [op(("cas", None, "x"), True, 0, 5, client=1), op(("cas", None, "y"), True, 1, 6, client=2)]
    assert not ok(h)
    h[1] = op(("cas", None, "y"), False, 1, 6, client=2)
    assert ok(h)


def test_a_read_cannot_go_back_in_time():
    # Two reads in sequence, both overlapping one write: new then old is impossible.
    write = op(("write", "b"), None, 0, 100)
    assert ok([op(("write", "a"), None, -2, -1), write, op(("read",), "a", 1, 2), op(("read",), "b", 3, 4)])
    assert not ok([op(("write", "a"), None, -2, -1), write, op(("read",), "b", 1, 2), op(("read",), "a", 3, 4)])


def test_lost_increment_is_rejected():
    # Two CAS increments from 0 both succeed: one must have seen the other's result.
    h = [
        op(("write", 0), None, 0, 1),
        op(("cas", 0, 1), True, 2, 10, client=1),
        op(("cas", 0, 1), True, 3, 11, client=2),
    ]
    assert not ok(h)


def test_unknown_outcome_may_apply_or_not():
    pending = op(("cas", None, "a"), UNKNOWN, 0)  # timed out: never returned
    assert ok([pending, op(("read",), None, 5, 6)])  # not (yet) applied
    assert ok([pending, op(("read",), "a", 5, 6)])  # applied
    # ...but once seen applied, it cannot be un-applied.
    assert not ok([pending, op(("read",), "a", 5, 6), op(("read",), None, 7, 8)])


def test_unknown_outcome_cannot_apply_before_its_invocation():
    h = [op(("read",), "a", 0, 1), op(("cas", None, "a"), UNKNOWN, 2)]
    assert not ok(h)


def test_keys_are_checked_independently():
    h = [
        op(("write", "a"), None, 0, 1, key="x"),
        op(("read",), "a", 2, 3, key="x"),
        op(("write", "b"), None, 0, 1, key="y"),
        op(("read",), "a", 2, 3, key="y"),  # y never held "a"
    ]
    result = check(h, CAS_REGISTER)
    assert not result.ok and [k.key for k in result.failures] == ["y"]


def test_a_return_before_invocation_is_a_bad_history():
    with pytest.raises(ValueError):
        check([op(("read",), None, 5, 4)], CAS_REGISTER)


def test_search_limit_is_reported_not_passed():
    # Many overlapping writes, then a read no order explains: the search space is 2^20 orders.
    h = [op(("write", f"v{i}"), None, 0, 100, client=i) for i in range(20)]
    h.append(op(("read",), "never", 200, 201, client=99))
    with pytest.raises(SearchLimitExceeded):
        check(h, CAS_REGISTER, max_steps=50)


def _sequential_run(rng: random.Random, n: int) -> list[tuple]:
    """A valid sequential execution of the register: (input, output) pairs."""
    state = None
    out = []
    for i in range(n):
        kind = rng.choice(["read", "write", "cas", "cas"])
        if kind == "read":
            out.append((("read",), state))
        elif kind == "write":
            state = f"w{i}"
            out.append((("write", state), None))
        else:
            expected = rng.choice([state, None, "nope"])
            holds = state == expected
            out.append((("cas", expected, f"c{i}"), holds))
            if holds:
                state = f"c{i}"
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 25))
def test_real_executions_with_overlap_are_accepted(seed, n):
    """Operations run in sequence at linearization points; their intervals stretch around them."""
    rng = random.Random(seed)
    history = []
    for point, (inp, out) in enumerate(_sequential_run(rng, n)):
        call = point - rng.random() * 3  # invoked up to 3 points earlier
        ret = point + rng.random() * 3  # answered up to 3 points later
        history.append(op(inp, out, call, ret, client=point))
    assert ok(history)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 25))
def test_a_read_of_a_value_never_written_is_rejected(seed, n):
    rng = random.Random(seed)
    history = [
        op(inp, out, p - rng.random(), p + rng.random(), client=p)
        for p, (inp, out) in enumerate(_sequential_run(rng, n))
    ]
    history.append(op(("read",), "never-written", n + 5, n + 6, client=n))
    assert not ok(history)


def test_memoisation_prunes_orders_that_reach_the_same_state():
    # Ten overlapping writes of one value: 10! orders, but only 2^10 (placed set, state) pairs.
    h = [op(("write", "a"), None, 0, 100, client=i) for i in range(10)]
    h.append(op(("read",), "never", 200, 201, client=99))
    result = check(h, CAS_REGISTER, max_steps=100_000)
    assert not result.ok and result.keys[0].explored < 100_000


def test_many_unanswered_operations_stay_cheap():
    # 40 writes that never answered, each may or may not have applied: 2^40 subsets. Only the
    # ones a read needs are placed; the rest go last, so the search stays tiny.
    h = [op(("write", f"v{i}"), UNKNOWN, i * 0.1, client=i) for i in range(40)]
    h += [op(("read",), "v7", 10, 11, client=99), op(("read",), "v31", 12, 13, client=98)]
    result = check(h, CAS_REGISTER, max_steps=10_000)
    assert result.ok and result.keys[0].explored < 10_000
    order = [o.input for o in result.keys[0].order]
    assert order[:4] == [("write", "v7"), ("read",), ("write", "v31"), ("read",)]  # the others come last
    assert len(order) == 42
    # ...and a read that needs one of them twice is still rejected, as cheaply.
    h += [op(("read",), "v7", 14, 15, client=97)]
    result = check(h, CAS_REGISTER, max_steps=10_000)
    assert not result.ok and result.keys[0].explored < 10_000


def test_unanswered_compare_and_sets_can_chain():
    # Two unanswered CAS, the second building on the first, explain a read: both must be placed.
    h = [
        op(("write", "a"), None, 0, 1),
        op(("cas", "a", "b"), UNKNOWN, 2, client=1),
        op(("cas", "b", "c"), UNKNOWN, 3, client=2),
        op(("read",), "c", 5, 6),
    ]
    result = check(h, CAS_REGISTER)
    assert result.ok and [o.input for o in result.keys[0].order][1:3] == [("cas", "a", "b"), ("cas", "b", "c")]
    # Without the first one, the second cannot apply.
    assert not ok([h[0], h[2], h[3]])


# ---- REGISTERS: the items of one object, written by transactions -----------------------------------


def txn(compares, writes, fail_reads=()):
    return ("txn", tuple(compares), tuple(writes), tuple(fail_reads))


def rok(history):
    return check(history, REGISTERS).ok


def test_registers_sequential_transactions():
    h = [
        op(("read", (0, 1)), (None, None), 0, 1),
        op(txn([(0, None), (1, None)], [(0, "a"), (1, "b")]), (True, None), 2, 3),
        op(("read", (1,)), ("b",), 4, 5),
        op(txn([(0, "a")], [(0, "c")]), (True, None), 6, 7),  # a conditional write of register 0
        op(txn([(0, "a"), (1, "b")], [(1, "d")], (0, 1)), (False, ("c", "b")), 8, 9),  # fails, shows both
        op(txn([(1, LIVE)], [(1, None)]), (True, None), 10, 11),  # If-Match: * delete
        op(("read", (0, 1)), ("c", None), 12, 13),
        op(txn([(1, LIVE)], [(1, "e")], (1,)), (False, (None,)), 14, 15),
    ]
    assert rok(h)


def test_registers_reject_a_torn_transaction():
    # A read sees one of the two writes of a transaction and not the other.
    put_both = op(txn([], [(0, "a"), (1, "b")]), (True, None), 0, 1)
    assert not rok([put_both, op(("read", (0, 1)), ("a", None), 2, 3)])
    # Even while the transaction runs: it is all or nothing at its one point in time.
    put_both = op(txn([], [(0, "a"), (1, "b")]), (True, None), 0, 10)
    assert rok([put_both, op(("read", (0, 1)), (None, None), 2, 3)])
    assert not rok([put_both, op(("read", (0, 1)), (None, "b"), 2, 3)])


def test_registers_reject_a_failure_that_shows_a_state_the_compare_holds_on():
    h = [op(txn([], [(0, "a")]), (True, None), 0, 1), op(txn([(0, "a")], [(0, "b")], (0,)), (False, ("a",)), 2, 3)]
    assert not rok(h)
    h[1] = op(txn([(0, "z")], [(0, "b")], (0,)), (False, ("a",)), 2, 3)
    assert rok(h)
    h[1] = op(txn([(0, "z")], [(0, "b")], (0,)), (False, ("q",)), 2, 3)  # "q" was never there
    assert not rok(h)
    h[1] = op(txn([(0, "z")], [(0, "b")], (0,)), (False, (UNKNOWN,)), 2, 3)  # not observed
    assert rok(h)


def test_registers_reject_two_winners_from_one_value():
    h = [
        op(txn([(0, None)], [(0, "a")]), (True, None), 0, 1),
        op(txn([(0, "a")], [(0, "b")]), (True, None), 2, 6, client=1),
        op(txn([(0, "a")], [(0, "c")]), (True, None), 3, 7, client=2),
    ]
    assert not rok(h)
    # One of them unanswered: it may have failed, or applied before the other... but not both.
    h[2] = op(txn([(0, "a")], [(0, "c")]), UNKNOWN, 3, client=2)
    assert rok(h)
    assert not rok([*h, op(("read", (0,)), ("c",), 8, 9), op(("read", (0,)), ("b",), 10, 11)])


def test_registers_a_write_applied_twice_is_rejected():
    # If-Match: * applied, replaced by another client, then shown again: applied a second time.
    h = [
        op(txn([(0, None)], [(0, "a")]), (True, None), 0, 1),
        op(txn([(0, LIVE)], [(0, "m")]), (True, None), 2, 20, client=1),
        op(("read", (0,)), ("m",), 3, 4, client=2),
        op(txn([(0, "m")], [(0, "t")]), (True, None), 5, 6, client=2),
        op(("read", (0,)), ("t",), 7, 8, client=2),
    ]
    assert rok(h)
    assert not rok([*h, op(("read", (0,)), ("m",), 21, 22, client=2)])


def test_registers_a_fork_is_never_a_state():
    h = [op(txn([], [(0, "a")]), (True, None), 0, 1), op(("read", (0,)), (("fork", "a", "b"),), 2, 3)]
    assert not rok(h)
