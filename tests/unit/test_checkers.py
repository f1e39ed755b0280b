"""The history checkers on hand-made histories: each accepts a good one and rejects a bad one.

Times are set by hand (seconds since the history's ``t0``), so the histories say exactly what
happened when, without any cluster.
"""

from __future__ import annotations

from tests.support.checker import History, Read, Write
from tests.support.checker.registers import ABSENT, ANY, CasOp, ConsensusHistory, ConsensusWorkload
from tests.support.checker.sets import SetHistory, SetRead
from tests.support.checker.watch import Observation, WatchHistory

A = ("pk", "a")


def write(h: History, key, start: float, end: float, status: str = "ok", covers=()) -> Write:
    w = h.begin_write(key, "n0", covers=frozenset(covers))
    w.start, w.end, w.status = h.t0 + start, h.t0 + end, status
    return w


def read(h: History, key, start: float, end: float, seen, final: bool = False, via: str = "n1") -> Read:
    r = Read(key, via, h.t0 + start, h.t0 + end, frozenset(seen), False, None, final=final)
    h.reads.append(r)
    return r


def kinds(anomalies) -> list[str]:
    return sorted(a.kind for a in anomalies)


# ---- (a) no acknowledged write lost ----------------------------------------------------------------


def test_final_reads_that_show_or_supersede_every_acknowledged_write_pass():
    h = History()
    w1 = write(h, A, 0, 1)
    w2 = write(h, A, 2, 3, covers={w1.id})  # read-modify-write: supersedes w1
    w3 = write(h, A, 2.5, 3.5)  # blind: a sibling of w2
    write(h, A, 4, 5, status="unknown")  # timed out: may be missing
    read(h, A, 10, 11, {w2.id, w3.id}, final=True)
    assert h.check_reads() == []


def test_an_acknowledged_write_missing_from_the_final_read_is_a_lost_write():
    h = History()
    w1 = write(h, A, 0, 1)
    w2 = write(h, A, 2, 3)  # blind: does not supersede w1
    read(h, A, 10, 11, {w2.id}, final=True)
    assert kinds(h.check_reads()) == ["lost-write"]
    assert f"w{w1.id}" in h.check_reads()[0].message


def test_a_value_nobody_wrote_is_a_phantom():
    h = History()
    write(h, A, 0, 1)
    h.record_read(A, "n0", h.t0, [b"w999:forged"], None, check=False)
    assert "phantom" in kinds(h.check_reads())


# ---- (b) read-your-writes through any node ------------------------------------------------------------


def test_a_read_concurrent_with_the_write_may_miss_it():
    h = History()
    w1 = write(h, A, 0, 1)
    w2 = write(h, A, 2, 4)
    read(h, A, 3, 5, {w1.id})  # started before w2 was acknowledged
    read(h, A, 6, 7, {w2.id, w1.id}, via="n2")
    assert h.check_reads() == []


def test_a_read_started_after_the_ack_that_misses_the_write_is_stale():
    h = History()
    w1 = write(h, A, 0, 1)
    write(h, A, 2, 3)
    read(h, A, 3.5, 4, {w1.id}, via="n2")  # through another node, after w2's ack
    assert kinds(h.check_reads()) == ["stale-read"]


def test_a_superseded_value_that_comes_back_is_noted_as_resurrected_but_is_no_anomaly():
    # A write stored twice (two coordinators) can surface again next to the newer value.
    h = History()
    w1 = write(h, A, 0, 1)
    w2 = write(h, A, 2, 3, covers={w1.id})
    read(h, A, 4, 5, {w1.id, w2.id})
    assert kinds(h.check_resurrections()) == ["resurrected"]
    assert h.check_reads() == []
    # Alone, it would be a stale read: the acknowledged w2 is missing.
    read(h, A, 6, 7, {w1.id})
    assert kinds(h.check_reads()) == ["stale-read"]


# ---- (c) sets read back complete -----------------------------------------------------------------------


def set_history(found_final, found_during=None) -> SetHistory:
    s = SetHistory()
    t = s.t0
    b1 = s.begin_batch([("set-0", "e1-0"), ("set-1", "e1-1")], "n0")
    b1.start, b1.end, b1.status = t + 0, t + 1, "ok"
    b2 = s.begin_batch([("set-0", "e2-0")], "n1")
    b2.start, b2.end, b2.status = t + 2, t + 3, "unknown"  # may or may not be there
    b3 = s.begin_batch([("set-1", "e3-0")], "n2")
    b3.start, b3.end, b3.status = t + 4, t + 6, "ok"
    if found_during is not None:
        s.add_read(SetRead("n1", ("set-0", "set-1"), t + 5, t + 5.5, frozenset(found_during), pages=2))
    s.add_read(SetRead("n2", ("set-0", "set-1"), t + 10, t + 11, frozenset(found_final), pages=3, final=True))
    return s


def test_a_set_read_with_every_acknowledged_key_passes():
    every = {("set-0", "e1-0"), ("set-1", "e1-1"), ("set-1", "e3-0")}
    # During the run: b3 was not acknowledged yet, b2 never was.
    s = set_history(every, found_during={("set-0", "e1-0"), ("set-1", "e1-1"), ("set-0", "e2-0")})
    assert s.check() == []


def test_a_set_read_missing_an_acknowledged_key_is_incomplete():
    s = set_history({("set-0", "e1-0"), ("set-1", "e3-0")})  # e1-1 lost (e.g. a page cut short)
    found = s.check()
    assert kinds(found) == ["set-incomplete"] and "('set-1', 'e1-1')" in found[0].message


def test_a_set_read_with_a_key_never_inserted_is_rejected():
    s = set_history({("set-0", "e1-0"), ("set-1", "e1-1"), ("set-1", "e3-0"), ("set-1", "zz")})
    assert kinds(s.check()) == ["set-phantom"]


# ---- (d) watch completeness -------------------------------------------------------------------------------


def watched(steps: list[tuple[str, object]]) -> tuple[WatchHistory, dict]:
    """A single writer's history on item A, and one watcher's answers.

    ``steps``: ("w", covers-index-or-None) appends an acknowledged write (covering the write at
    that index), ("u", ...) one that timed out, ("o", [indexes]) an answer showing those writes.
    """
    h = History()
    watch = WatchHistory(h)
    watch.watchers.add("range@n0")
    writes: list[Write] = []
    t = 0.0
    for op, arg in steps:
        t += 1
        if op in ("w", "u"):
            covers = {writes[arg].id} if arg is not None else set()
            writes.append(write(h, A, t, t + 0.5, "ok" if op == "w" else "unknown", covers))
        else:
            ids = frozenset(writes[i].id for i in arg)
            watch.observations.append(Observation("range@n0", A, h.t0 + t, h.t0 + t + 0.5, ids))
    return watch, {"writes": writes}


def final_of(ctx: dict, *indexes: int) -> dict:
    return {A: frozenset(ctx["writes"][i].id for i in indexes)}


def test_a_watcher_that_skips_intermediate_states_but_sees_the_final_one_passes():
    watch, ctx = watched([("w", None), ("o", [0]), ("w", 0), ("w", 1), ("w", 2), ("o", [3])])
    assert watch.check(final_of(ctx, 3)) == []


def test_a_late_sibling_from_a_timed_out_write_is_neither_required_nor_going_back():
    # w1 timed out but landed later, concurrent with w2; an answer shows it alone (one replica's
    # new value), after the watcher saw w2; the final state has both.
    watch, ctx = watched([("w", None), ("o", [0]), ("u", 0), ("w", 0), ("o", [2]), ("o", [1])])
    assert watch.check(final_of(ctx, 1, 2)) == []
    # The same, with the final state showing only the acknowledged value.
    assert watch.check(final_of(ctx, 2)) == []


def test_a_watcher_shown_an_older_state_again_went_backwards():
    watch, ctx = watched([("w", None), ("o", [0]), ("w", 0), ("o", [1]), ("o", [0]), ("o", [1])])
    assert kinds(watch.check(final_of(ctx, 1))) == ["watch-backwards"]


def test_a_superseded_value_surfacing_again_next_to_the_newer_one_is_not_going_back():
    # w0 stored twice: its second copy shows up again beside w1, which superseded the first.
    watch, ctx = watched([("w", None), ("o", [0]), ("w", 0), ("o", [1]), ("o", [0, 1]), ("o", [1])])
    assert watch.check(final_of(ctx, 1)) == []


def test_a_watcher_never_shown_the_final_state_missed_it():
    watch, ctx = watched([("w", None), ("o", [0]), ("w", 0), ("o", [1]), ("w", 1)])
    assert kinds(watch.check(final_of(ctx, 2))) == ["watch-missed-change", "watch-missed-final"]


def test_a_watcher_that_never_answered_missed_everything():
    watch, ctx = watched([("w", None), ("w", 0)])
    assert kinds(watch.check(final_of(ctx, 1))) == ["watch-missed-change", "watch-missed-final"]


def test_caught_up_once_every_acknowledged_final_value_was_shown():
    watch, ctx = watched([("w", None), ("u", 0), ("w", 0), ("o", [2])])
    assert watch.caught_up(final_of(ctx, 1, 2))  # w1 timed out: not required
    watch2, ctx2 = watched([("w", None), ("w", 0), ("o", [0])])
    assert not watch2.caught_up(final_of(ctx2, 1))


def test_every_history_serializes_to_json_records_with_invoke_and_complete_times():
    import json

    watch, ctx = watched([("w", None), ("u", 0), ("o", [0])])
    watch.poll("range@n0", "n0", watch.history.t0 + 1, "not-modified", "marker")
    watch.history.read_failed(A, "n1", watch.history.t0 + 2, "TimeoutError")
    sets = set_history({("set-0", "e1-0")})
    sets.read_failed("n0", ["set-0"], sets.t0 + 3, "503")
    records = watch.history.records() + watch.records() + sets.records()
    types = sorted({r["type"] for r in records})
    assert types == ["insert_batch", "observation", "poll", "read", "set_read", "write"], types
    for r in records:
        assert {"invoke", "complete", "status"} <= set(r), r
        json.dumps(r)
    assert {r["status"] for r in records if r["type"] == "write"} == {"ok", "unknown"}


# ---- (e) linearizability of the consensus path ----------------------------------------------------

REG = ("cas-0", ("r0",))
PAIR = ("cas-0", ("a0", "b0"))


def cas(h: ConsensusHistory, obj, kind: str, start: float, end: float | None, status: str = "ok", **kw) -> CasOp:
    """A recorded consensus operation on ``obj`` (``REG`` or ``PAIR``), as ``run_op`` fills it."""
    pk, sks = obj
    name = f"{pk}/{'reg' if len(sks) == 1 else 'pair'}/g0"
    op = CasOp(len(h.ops) + 1, kw.pop("client", 0), "n0", name, pk, sks, kind, **kw)
    op.start, op.end, op.status = h.t0 + start, None if end is None else h.t0 + end, status
    h.ops.append(op)
    return op


def read_reg(h, start, end, value, token, **kw):
    return cas(h, REG, "read-item", start, end, reads=(0,), observed={0: value}, tokens={0: token}, **kw)


def put_reg(h, start, end, expected, token, new, succeeded=True, after=None, status="ok", **kw):
    """If-Match ``token`` (``expected`` its value) or If-None-Match (``expected`` None)."""
    if expected is None:
        compares, kind = ((0, ABSENT, None, None),), "if-none-match"
    else:
        compares, kind = ((0, "token", expected, token),), "if-match"
    return cas(
        h,
        REG,
        kind,
        start,
        end,
        status,
        compares=compares,
        writes=((0, new),),
        fail_reads=(0,),
        succeeded=succeeded if status == "ok" else None,
        tokens={0: after} if status == "ok" else {},
        **kw,
    )


def good_consensus_history() -> ConsensusHistory:
    h = ConsensusHistory()
    read_reg(h, 0, 1, None, None)
    put_reg(h, 2, 3, None, None, "v2.0", after="T2")  # insert if absent
    put_reg(h, 2.5, 4, None, None, "v3.0", succeeded=False, after="T2", client=1)  # 412: it is there
    read_reg(h, 5, 6, "v2.0", "T2", client=2)
    put_reg(h, 7, 8, "v2.0", "T2", "v5.0", after="T5")
    put_reg(h, 7.5, None, "v2.0", "T2", "v6.0", status="unknown", client=1)  # 503: lost its round
    put_reg(h, 9, 10, "v2.0", "T2", "v7.0", succeeded=False, after="T5", client=2)  # 412 shows v5.0
    cas(h, REG, "if-match-any", 11, 12, compares=((0, ANY, "*", None),), writes=((0, "v8.0"),), fail_reads=(0,))
    h.ops[-1].succeeded, h.ops[-1].tokens = True, {0: "T8"}
    read_reg(h, 13, 14, "v8.0", "T8")
    # The pair: a transaction writes both, a read-only transaction sees both or neither.
    cas(h, PAIR, "txn", 0, 5, compares=((0, ABSENT, None, None), (1, ABSENT, None, None)))
    h.ops[-1].writes, h.ops[-1].fail_reads = ((0, "v10.0"), (1, "v10.1")), (0, 1)
    h.ops[-1].succeeded, h.ops[-1].tokens = True, {0: "A10", 1: "B10"}
    cas(h, PAIR, "txn-read", 1, 2, reads=(0, 1), observed={0: None, 1: None}, tokens={0: None, 1: None})
    cas(h, PAIR, "txn-read", 6, 7, reads=(0, 1), observed={0: "v10.0", 1: "v10.1"}, tokens={0: "A10", 1: "B10"})
    cas(h, PAIR, "txn", 8, 9, compares=((0, "value", "v10.0", None), (1, "token", "v10.1", "B10")))
    h.ops[-1].writes, h.ops[-1].fail_reads = ((1, None),), (0, 1)  # delete b if a and b are as read
    h.ops[-1].succeeded, h.ops[-1].tokens = True, {1: "B13"}
    cas(h, PAIR, "read-item", 10, 11, reads=(1,), observed={1: None}, tokens={1: "B13"})
    return h


def test_a_linearizable_consensus_history_passes():
    h = good_consensus_history()
    assert h.check() == []
    stats = h.stats()
    assert stats["histories"] == 2 and stats["operations"] == 14 and stats["non_linearizable"] == 0
    assert stats["by_status"] == {"ok": 13, "unknown": 1}
    # The records read back give the same history.
    again = ConsensusHistory.from_records(h.records())
    assert [op.record(0.0) for op in again.ops] == [op.record(h.t0) for op in h.ops]
    assert again.check() == []


def test_a_stale_linearizable_read_is_not_linearizable():
    h = good_consensus_history()
    read_reg(h, 15, 16, "v5.0", "T5")  # v8.0 replaced v5.0 at 12, before this read began
    (a,) = h.check()
    assert a.kind == "non-linearizable" and "cas-0/reg/g0" in a.message and "v5.0" in a.message


def test_two_winners_from_one_token_are_not_linearizable():
    h = good_consensus_history()
    put_reg(h, 7.2, 8.5, "v2.0", "T2", "v9.0", after="T9", client=3)  # also won, from v2.0
    assert [a.kind for a in h.check()] == ["non-linearizable"]


def test_a_torn_transaction_is_not_linearizable():
    h = good_consensus_history()
    cas(h, PAIR, "txn-read", 6.5, 7.5, reads=(0, 1), observed={0: "v10.0", 1: None}, tokens={0: "A10", 1: None})
    assert [a.kind for a in h.check()] == ["non-linearizable"]


def test_a_412_whose_token_stands_for_the_expected_value_is_not_linearizable():
    h = good_consensus_history()
    # If-Match T8 refused with the current token T8: the condition held, yet nothing was written.
    put_reg(h, 15, 16, "v8.0", "T8", "v20.0", succeeded=False, after="T8")
    assert [a.kind for a in h.check()] == ["non-linearizable"]


def test_a_write_applied_twice_is_not_linearizable():
    h = good_consensus_history()
    read_reg(h, 15, 16, "v5.0", "T5b")  # v5.0 (replaced at 12) is back, under another token
    assert [a.kind for a in h.check()] == ["non-linearizable"]


def test_one_token_for_two_states_and_refused_requests_are_reported():
    h = good_consensus_history()
    read_reg(h, 15, 16, "v8.0", "T5")  # T5 stood for v5.0
    cas(h, REG, "read-item", 17, 18, status="refused", reads=(0,), detail="400 InvalidRequest")
    kinds = sorted(a.kind for a in h.check())
    assert kinds == ["refused", "token-conflict"]


class _Version:
    """A layout version as the workload's layout hooks use it: partition -> node set."""

    def __init__(self, version: int, nodes: dict[int, list[bytes]], default: list[bytes]) -> None:
        self.version, self.nodes, self.default = version, nodes, default

    def nodes_of_hash(self, h: bytes) -> list[bytes]:
        return self.nodes.get(h[0], self.default)


def test_the_workload_aims_at_a_hot_partition_that_a_layout_change_moves():
    n0, n1, n2, n3 = (bytes([i]) * 32 for i in range(4))
    w = ConsensusWorkload(ConsensusHistory(), {}, "b", bucket_id=b"\x01" * 32, hot_count=2)
    assert w.hot == ["cas-0", "cas-1"]
    target = w._partition("cas-7")[0]
    hot = {w._partition(pk)[0] for pk in w.hot}
    assert target not in hot  # (else pick another pool key for this test)
    old = _Version(3, {}, [n0, n1, n2])
    new = _Version(4, {target: [n0, n3, n2]}, [n0, n1, n2])  # only cas-7's partition moves
    assert w.layout_planned(old, new)
    assert "cas-7" in w.hot and len(w.hot) == 2
    said = w.layout_applied(old, new, {n0: "n0", n1: "n1", n2: "n2", n3: "n3"}, w.history.t0 + 5)
    assert said == "cas-7 moved n0,n1,n2 -> n0,n2,n3"
    move = {"pk": "cas-7", "partition": target, "from": ["n0", "n1", "n2"], "to": ["n0", "n2", "n3"]}
    move |= {"version": 4, "at": 5.0}
    assert w.history.moves == [move]
    # Operations on the moved key within 10 s of the change are counted.
    for start in (6, 16):
        cas(w.history, ("cas-7", ("r0",)), "read-item", start, start + 1, reads=(0,), observed={0: None})
    assert w.history.stats()["hot_partition_moves"] == [{**move, "answered_within_10s": 1}]
    # A hot key already moves: nothing changes. A change that moves nothing: nothing either.
    before = list(w.hot)
    assert w.layout_planned(old, new) and not w.layout_planned(old, old)
    assert w.hot == before and w.layout_applied(old, old, {}, 0.0) == ""
