"""The history checkers on hand-made histories: each accepts a good one and rejects a bad one.

Times are set by hand (seconds since the history's ``t0``), so the histories say exactly what
happened when, without any cluster.
"""

from __future__ import annotations

from tests.support.checker import History, Read, Write
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
