"""Forged clocks (causality tokens, seen markers) cannot push, exhaust or hide a node's clock."""

from __future__ import annotations

import struct

import pytest

from garagekv.model.k2v.causality import (
    CLOCK_HORIZON_MS,
    ITEM_CLOCK_SOFT_CAP,
    MAX_CLOCK_AHEAD_MS,
    MAX_CLOCK_ENTRIES,
    U64_MAX,
    CausalContext,
    check_client_clock,
)
from garagekv.model.k2v.item import ClockExhausted, DvvsEntry, K2VItem
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.util.errors import BadRequest
from garagekv.util.time import now_ms
from tests.support.standalone import NODE, StandaloneModel

BUCKET = b"\x07" * 32
NOW = 1_800_000_000_000


def token(vc: dict[int, int]) -> str:
    return CausalContext(vc).serialize()


# ---- tokens a client sends ---------------------------------------------------------------------


@pytest.mark.parametrize("t", [NOW + MAX_CLOCK_AHEAD_MS + 1, U64_MAX - 1, U64_MAX])
def test_token_time_beyond_any_node_clock_is_invalid_request(t):
    with pytest.raises(BadRequest) as e:
        CausalContext.parse_client(token({5: 1, 7: t}), now=NOW)
    assert e.value.code == "InvalidRequest" and e.value.status == 400
    assert e.value.message == f"Invalid causality token: time {t} for node 0000000000000007 is beyond any node's clock"


def test_token_time_at_the_bound_is_accepted():
    ctx = CausalContext.parse_client(token({5: NOW + MAX_CLOCK_AHEAD_MS}), now=NOW)
    assert ctx.vclock == {5: NOW + MAX_CLOCK_AHEAD_MS}


def test_token_with_too_many_entries_is_refused_before_decoding():
    CausalContext.parse_client(token({n: 1 for n in range(MAX_CLOCK_ENTRIES)}), now=NOW)
    for n in (MAX_CLOCK_ENTRIES + 1, 100_000):
        with pytest.raises(BadRequest) as e:
            CausalContext.parse_client(token({i: 1 for i in range(n)}), now=NOW)
        assert e.value.code == "InvalidRequest" and "clock entries" in e.value.message


def test_check_client_clock_refuses_more_entries_than_a_token_may_carry():
    """``parse_client`` refuses such a token by its length before decoding it; the clock check
    itself still refuses a clock of too many entries, and says how many it got."""
    check_client_clock({n: 1 for n in range(MAX_CLOCK_ENTRIES)}, "seen clock", now=NOW)
    with pytest.raises(BadRequest) as e:
        check_client_clock({n: 1 for n in range(MAX_CLOCK_ENTRIES + 1)}, "seen clock", now=NOW)
    assert e.value.message == f"Invalid seen clock: {MAX_CLOCK_ENTRIES + 1} clock entries (at most {MAX_CLOCK_ENTRIES})"


def test_bound_is_far_from_overflow_and_from_legitimate_load():
    """The arithmetic the docs argue: a node pushed to the bound has 2^63 writes of room, and
    getting from the horizon to the bound takes 2^47 writes beyond one per millisecond."""
    now = now_ms()
    assert now + MAX_CLOCK_AHEAD_MS < 2**63
    assert MAX_CLOCK_AHEAD_MS - CLOCK_HORIZON_MS == 2**47
    years_at_a_million_per_second = 2**47 / 1e6 / 86400 / 365
    assert years_at_a_million_per_second > 4


# ---- the coordinator's update --------------------------------------------------------------------


def new() -> K2VItem:
    return K2VItem.new(BUCKET, "p", "s")


def test_forged_own_time_does_not_push_the_coordinator_clock():
    it = new()
    t1 = it.update(1, None, b"a", NOW)
    t2 = it.update(1, CausalContext({1: U64_MAX - 1}), b"b", NOW)
    assert t2 == t1 + 1  # not U64_MAX: node 1 never issued a time beyond its own clock
    assert it.values() == [b"b"]  # what the client saw is still replaced


def test_forged_time_of_another_node_is_cut_to_the_horizon():
    it = new()
    it.update(1, CausalContext({2: U64_MAX - 1}), b"a", NOW, NOW + CLOCK_HORIZON_MS)
    assert it.items[2].t_discard == NOW + CLOCK_HORIZON_MS
    # Node 2 coordinating next jumps, but to the horizon only, far from the u64 limit.
    assert it.update(2, it.causal_context(), b"b", NOW) == NOW + CLOCK_HORIZON_MS + 1


def test_a_client_cannot_grow_an_items_clock_past_the_soft_cap():
    it = new()
    for round_ in range(3):
        forged = CausalContext({1000 + round_ * 200 + i: 5 for i in range(200)})
        it.update(1, forged, b"v", NOW)
    assert len(it.items) == ITEM_CLOCK_SOFT_CAP + 1  # the coordinator's own entry comes on top
    assert len(CausalContext.parse_client(it.causal_context().serialize(), now=NOW)) == ITEM_CLOCK_SOFT_CAP + 1


def test_entry_at_the_u64_limit_refuses_instead_of_overflowing():
    it = new()
    it.items[1] = DvvsEntry(U64_MAX, [])  # as stored before clocks were bounded
    with pytest.raises(ClockExhausted):
        it.update(1, None, b"a", NOW)
    assert it.update(2, None, b"a", NOW) == NOW + 1  # another node still can
    K2VItem.decode(it.encode())


# ---- the store: a poisoned stored timestamp ------------------------------------------------------


class Opened(StandaloneModel):
    def __init__(self, path) -> None:
        super().__init__(path)
        self.store = self.model.k2v
        self.local = self.model.store


async def test_stored_timestamp_at_the_limit_does_not_stop_writes(tmp_path):
    """A node whose persisted timestamp reached 2^64 - 1 (before the fix) still coordinates."""
    o = Opened(tmp_path / "db")
    try:
        o.writer.run_sync(lambda tx: tx.put(o.local._local_ts, b"timestamp", struct.pack(">Q", U64_MAX)))
        await o.store.insert(BUCKET, InsertedItem("p", "a", None, b"1"))
        item = await o.store.read_item(BUCKET, "p", "a")
        t = item.causal_context().get(NODE)
        assert t <= now_ms() + 1000
        assert o.local.issued_clock() == t
    finally:
        o.close()


async def test_item_with_an_entry_beyond_the_bound_is_refused_not_issued(tmp_path):
    o = Opened(tmp_path / "db")
    try:
        await o.store.insert(BUCKET, InsertedItem("p", "a", None, b"1"))
        stored = await o.store.read_item(BUCKET, "p", "a")
        poisoned = stored.copy()
        poisoned.items[NODE] = DvvsEntry(U64_MAX - 5, [])
        o.writer.run_sync(lambda tx: tx.put(o.local.item_data.store, poisoned.tree_key(), poisoned.encode()))
        with pytest.raises(Exception, match="beyond the clock bound|no timestamp left"):
            await o.store.insert(BUCKET, InsertedItem("p", "a", None, b"2"))
        # The node's clock was not moved, and other items are still written.
        await o.store.insert(BUCKET, InsertedItem("p", "b", None, b"3"))
        b = await o.store.read_item(BUCKET, "p", "b")
        assert b.causal_context().get(NODE) <= now_ms() + 1000
    finally:
        o.close()


# ---- seen markers: a forged discard time does not hide later writes ------------------------------


def test_forged_discard_time_beyond_the_nodes_clock_does_not_advance_the_marker():
    x = new()
    x.update(1, None, b"x", NOW)
    # A client forged node 2's time; node 1 coordinated, so node 2's entry is only a discard time.
    x.update(1, CausalContext({2: NOW + CLOCK_HORIZON_MS}), b"x2", NOW, NOW + CLOCK_HORIZON_MS)
    m = RangeSeenMarker()
    m.mark_seen_node_items(2, [x], issued=NOW + 10)  # node 2's own clock is NOW + 10
    assert m.vector_clock.get(2, 0) <= NOW + 10
    assert not m.is_new_item(x)  # x is still seen (remembered under its sort key)
    later = K2VItem.new(BUCKET, "p", "y")
    later.update(2, None, b"y", NOW + 11)  # node 2's next write
    assert m.is_new_item(later)
    m2 = RangeSeenMarker.decode(m.encode())
    assert m2.is_new_item(later) and not m2.is_new_item(x)


def test_discard_time_within_the_nodes_clock_advances_the_marker():
    x = new()
    t = x.update(2, None, b"x", NOW)
    x.update(1, x.causal_context(), b"x2", NOW)  # discards node 2's dot: only its discard time is left
    m = RangeSeenMarker()
    m.mark_seen_node_items(2, [x], issued=t)
    assert m.vector_clock[2] == t


def test_a_discard_time_the_node_has_not_issued_adds_nothing_to_the_vector_clock():
    """Node 2's entry of x is only a discard time (1), beyond what node 2 says it issued (0), or
    with no ``issued`` given at all (then no discard time is trusted). The marker's clock gets no
    entry for node 2, not even a 0 or a 1: a 1 would hide node 2's first dot on any other key."""
    x = K2VItem.new(BUCKET, "p", "x")
    x.update(1, CausalContext({2: 1}), b"x", 0)
    assert x.items[2] == DvvsEntry(1, [])
    for issued in ({}, {"issued": 0}):
        m = RangeSeenMarker()
        m.mark_seen_node_items(2, [x], **issued)
        assert m.vector_clock == {}
        assert m.items == {"x": {1: 1, 2: 1}}  # x itself is seen, under its sort key
        y = K2VItem.new(BUCKET, "p", "y")
        y.update(2, None, b"y", 0)  # node 2's dot at time 1
        assert m.is_new_item(y) and not m.is_new_item(x)
