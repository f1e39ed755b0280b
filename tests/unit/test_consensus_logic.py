"""Pure logic of the consensus layer: ballots, acceptor transitions, message validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garagekv.consensus import ZERO_BALLOT, Ballot, BallotClock, MalformedMessage, Proposal
from garagekv.consensus.messages import (
    Accepted,
    CheckedAccepted,
    CheckedPropose,
    Commit,
    Prepare,
    Promise,
    Propose,
    state_digest,
)
from garagekv.consensus.proposer import _in_flight
from garagekv.consensus.state import AcceptorState, CorruptState
from garagekv.util import codec

A, B, C = (bytes([i]) * 32 for i in (1, 2, 3))


# ---- ballots ---------------------------------------------------------------------------------------


def test_ballots_order_by_time_then_node():
    assert Ballot(0, 1, B) < Ballot(0, 2, A) < Ballot(0, 2, B)
    assert Ballot(0, 0, A) > ZERO_BALLOT
    assert Ballot(0, 5, A) == Ballot.from_wire(Ballot(0, 5, A).to_wire())


def test_a_newer_layout_version_outranks_any_clock():
    assert Ballot(2, 0, A) > Ballot(1, 10**15, C)
    clock = BallotClock(A)
    clock.observe(Ballot(5, 10, B))  # a newer layout's ballot: no borrowing its version
    assert clock.next(4).epoch == 4 and clock.next(4) < Ballot(5, 10, B)


def test_a_clock_issues_strictly_increasing_ballots_and_outbids_what_it_saw():
    clock = BallotClock(A)
    issued = [clock.next(0) for _ in range(100)]
    assert issued == sorted(set(issued))
    far = Ballot(0, issued[-1].time + 10**9, C)
    clock.observe(far)
    assert clock.next(0) > far


def test_two_clocks_never_issue_the_same_ballot():
    a, b = BallotClock(A), BallotClock(B)
    ballots = [c.next(0) for _ in range(200) for c in (a, b)]
    assert len(set(ballots)) == len(ballots)


@pytest.mark.parametrize(
    "bad",
    [None, [], [1, A], [0, 1, A, 3], [0, -1, A], [True, 1, A], [0, 1, b"short"], [0, 1, "x" * 32], [0, 2**64, A]],
)
def test_malformed_ballots_are_refused(bad):
    with pytest.raises(ValueError):
        Ballot.from_wire(bad)


# ---- acceptor transitions --------------------------------------------------------------------------


def test_promise_only_strictly_above_and_accept_at_or_above():
    s = AcceptorState()
    s, ok = s.on_prepare(Ballot(0, 5, A))
    assert ok and s.promised == Ballot(0, 5, A)
    assert s.on_prepare(Ballot(0, 5, A)) == (s, False)  # the same ballot is never promised twice
    assert s.on_prepare(Ballot(0, 4, C)) == (s, False)
    refused, ok = s.on_propose(Proposal(Ballot(0, 4, C), b"v"))
    assert not ok and refused is s
    s, ok = s.on_propose(Proposal(Ballot(0, 5, A), b"v"))
    assert ok and s.accepted == Proposal(Ballot(0, 5, A), b"v")
    s2, ok = s.on_propose(Proposal(Ballot(0, 6, B), b"w"))  # a higher ballot may skip the prepare
    assert ok and s2.promised == Ballot(0, 6, B) and s2.accepted == Proposal(Ballot(0, 6, B), b"w")


def test_commit_clears_older_accepted_and_never_regresses():
    s = AcceptorState()
    s, _ = s.on_prepare(Ballot(0, 5, A))
    s, _ = s.on_propose(Proposal(Ballot(0, 5, A), b"v"))
    s = s.on_commit(Proposal(Ballot(0, 5, A), b"v"))
    assert s.accepted is None and s.committed == Ballot(0, 5, A)
    late = s.on_commit(Proposal(Ballot(0, 3, B), b"old"))  # a late commit of an older decision
    assert late.committed == Ballot(0, 5, A) and late.promised == Ballot(0, 5, A)
    s, _ = s.on_prepare(Ballot(0, 9, B))
    s, _ = s.on_propose(Proposal(Ballot(0, 9, B), b"w"))
    kept = s.on_commit(Proposal(Ballot(0, 7, C), b"x"))  # older than what is accepted: kept
    assert kept.accepted == Proposal(Ballot(0, 9, B), b"w") and kept.committed == Ballot(0, 7, C)
    # A propose at the committed ballot itself is settled: not reported as in flight.
    s = AcceptorState(Ballot(0, 4, A), None, Proposal(Ballot(0, 4, A), b"v"))
    s, ok = s.on_propose(Proposal(Ballot(0, 4, A), b"v"))
    assert ok and s.accepted is None


def test_a_commit_renews_the_promise_only_if_nothing_happened_since():
    """The next ballot is promised with a commit only while that commit is the most recent and
    nothing newer is accepted; then it is held until anything else is promised or accepted."""
    b1, nxt = Ballot(0, 5, A), Ballot(0, 6, A)
    s = AcceptorState(b1).on_commit(Proposal(b1, b"v"))
    renewed, ok = s.on_renew(b1, nxt)
    assert ok and renewed.promised == nxt and renewed.holds(nxt) and not renewed.holds(b1)
    newer = AcceptorState(Ballot(0, 7, B)).on_commit(Proposal(Ballot(0, 7, B), b"w"))
    assert newer.on_renew(b1, Ballot(0, 8, A)) == (newer, False)  # a newer commit landed first
    s, _ = AcceptorState().on_prepare(Ballot(0, 9, C))
    s, _ = s.on_propose(Proposal(Ballot(0, 9, C), b"x"))
    s = s.on_commit(Proposal(b1, b"v"))  # our commit arrives after C's proposal was accepted
    assert s.on_renew(b1, Ballot(0, 10, A)) == (s, False)
    assert not renewed.on_prepare(Ballot(0, 7, B))[0].holds(nxt)
    taken, _ = renewed.on_propose(Proposal(nxt, b"y"))
    assert not taken.holds(nxt)  # a proposal under the held ballot uses it up


def test_state_round_trips_and_corruption_is_detected():
    s = AcceptorState(Ballot(0, 9, B), Proposal(Ballot(0, 8, A), None), Proposal(Ballot(0, 2, C), b"u"))
    assert AcceptorState.decode(s.encode()) == s
    assert AcceptorState.decode(None) == AcceptorState()
    for bad in (b"", b"\x07", b"\x01\xc1", b"\x01" + codec.encode([1, 2])):
        with pytest.raises(CorruptState):
            AcceptorState.decode(bad)


ballots = st.builds(Ballot, st.integers(0, 2), st.integers(0, 20), st.sampled_from([A, B, C]))
proposals = st.builds(Proposal, ballots, st.one_of(st.none(), st.binary(max_size=3)))
events = st.lists(
    st.one_of(
        st.tuples(st.just("prepare"), ballots),
        st.tuples(st.just("propose"), proposals),
        st.tuples(st.just("commit"), proposals),
    ),
    max_size=40,
)


@given(events)
def test_acceptor_invariants_hold_under_any_message_sequence(seq):
    s = AcceptorState()
    for kind, arg in seq:
        before = s
        if kind == "prepare":
            s, ok = s.on_prepare(arg)
            assert ok == (arg > before.promised)
        elif kind == "propose":
            s, ok = s.on_propose(arg)
            assert ok == (arg.ballot >= before.promised)
        else:
            s = s.on_commit(arg)
        assert s.promised >= before.promised and s.committed >= before.committed
        assert s.committed <= s.promised
        if kind == "commit" and arg.ballot > before.committed:
            assert s.commit == arg  # the most recent commit is kept whole
        if s.accepted is not None:
            assert s.committed < s.accepted.ballot <= s.promised
        assert AcceptorState.decode(s.encode()) == s


# ---- single-decree safety over random interleavings -----------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["prepare", "propose"]), st.integers(0, 3), st.integers(0, 2)), max_size=60),
    st.permutations([0, 1, 2, 3]),
)
def test_random_interleavings_never_choose_two_values(schedule, order):
    """Four proposers with distinct ballots send Prepares and Proposes to three acceptors in any
    order (messages may be lost: a step may never happen). A proposer proposes only after a
    majority promised, the highest accepted value among its promises or else its own. Whatever
    the interleaving, every ballot accepted by a majority carries the same value."""
    acceptors = [AcceptorState() for _ in range(3)]
    ballot = [Ballot(0, 10 + order[i], bytes([i + 1]) * 32) for i in range(4)]
    promises: list[dict[int, Proposal | None]] = [{} for _ in range(4)]
    value: list[bytes | None] = [None] * 4
    accepted_by: dict[Ballot, set[int]] = {}
    for kind, p, a in schedule:
        if kind == "prepare":
            before = acceptors[a]
            acceptors[a], ok = before.on_prepare(ballot[p])
            if ok:
                promises[p][a] = before.accepted
        else:
            if len(promises[p]) < 2:
                continue
            if value[p] is None:
                seen = [x for x in promises[p].values() if x is not None]
                value[p] = max(seen, key=lambda x: x.ballot).update if seen else b"own-%d" % p
            before = acceptors[a]
            acceptors[a], ok = before.on_propose(Proposal(ballot[p], value[p]))
            assert acceptors[a].promised >= before.promised
            if ok:
                accepted_by.setdefault(ballot[p], set()).add(a)
    chosen = {value[ballot.index(b)] for b, who in accepted_by.items() if len(who) >= 2}
    assert len(chosen) <= 1


def test_in_flight_picks_the_highest_uncommitted_real_proposal():
    def promise(acc, committed=ZERO_BALLOT):
        commit = None if committed == ZERO_BALLOT else Proposal(committed, b"c")
        return Promise(True, Ballot(0, 50, A), acc, commit, ())

    old, new = Proposal(Ballot(0, 3, A), b"old"), Proposal(Ballot(0, 4, B), b"new")
    assert _in_flight([promise(old), promise(new), promise(None)]) == new
    assert _in_flight([promise(new), promise(None, Ballot(0, 4, B))]) is None  # committed elsewhere
    assert _in_flight([promise(Proposal(Ballot(0, 5, C), None)), promise(old)]) is None  # a no-op on top
    assert _in_flight([promise(None), promise(None)]) is None


# ---- messages --------------------------------------------------------------------------------------

KEY = b"\x01" * 32 + b"pk"


@pytest.mark.parametrize(
    "msg",
    [
        Prepare(KEY, Ballot(0, 1, A), (b"a", b"b")),
        Promise(
            True, Ballot(0, 1, A), Proposal(Ballot(0, 0, B), b"u"), Proposal(Ballot(0, 0, C), b"c"), ((b"a", b"s"),)
        ),
        Promise(False, Ballot(0, 3, A), None, None, ()),
        Propose(KEY, Proposal(Ballot(0, 1, A), None)),
        Accepted(False, Ballot(0, 2, B)),
        Commit(KEY, Proposal(Ballot(0, 1, A), b"u")),
        Commit(KEY, Proposal(Ballot(0, 1, A), b"u"), Ballot(0, 2, A)),
        CheckedPropose(KEY, Proposal(Ballot(0, 1, A), b"u"), (b"a", b"b"), (state_digest(b"s"), state_digest(None))),
        CheckedAccepted(True, Ballot(0, 1, A)),
        CheckedAccepted(False, Ballot(0, 1, A), ((b"a", b"s"), (b"b", None))),
    ],
)
def test_messages_round_trip_through_msgpack(msg):
    wire = codec.decode(codec.encode(msg.to_wire()))
    assert type(msg).from_wire(wire) == msg


@pytest.mark.parametrize(
    "cls, bad",
    [
        (Prepare, None),
        (Prepare, [KEY, [0, 1, A]]),
        (Prepare, [b"short", [0, 1, A], []]),
        (Prepare, [KEY, [0, 1, A], "notalist"]),
        (Prepare, [KEY, [0, 1, A], [1, 2]]),
        (Prepare, [KEY, [0, 1, A], [b"k"] * 2000]),
        (Prepare, [KEY, "ballot", []]),
        (Promise, [1, [0, 1, A], None, None, []]),
        (Promise, [True, [0, 1, A], [1], None, []]),
        (Promise, [True, [0, 1, A], None, [0, 0, b""], []]),
        (Promise, [True, [0, 1, A], None, None, [[b"k"]]]),
        (Promise, [True, [0, 1, A], None, None, [[b"k", 5]]]),
        (Propose, [KEY, [[0, 1, A], "text"]]),
        (Propose, [KEY]),
        (Accepted, [True]),
        (Commit, [KEY * 20, [[0, 1, A], None]]),
        (Commit, {"key": KEY}),
        (Commit, [KEY, [[0, 1, A], None], "next"]),
        (CheckedPropose, [KEY, [[0, 1, A], b"u"], [b"a"]]),
        (CheckedPropose, [KEY, [[0, 1, A], b"u"], [b"a"], []]),  # a digest per read key
        (CheckedPropose, [KEY, [[0, 1, A], b"u"], [b"a"], ["text"]]),
        (CheckedPropose, [KEY, [[0, 1, A], b"u"], [b"a"], [b"d" * 65]]),
        (CheckedPropose, [KEY, [[0, 1, A], b"u"], "keys", []]),
        (CheckedAccepted, [True, [0, 1, A]]),
        (CheckedAccepted, [True, [0, 1, A], [[b"k", 5]]]),
        (CheckedAccepted, ["yes", [0, 1, A], None]),
    ],
)
def test_malformed_messages_are_protocol_errors(cls, bad):
    with pytest.raises(MalformedMessage) as info:
        cls.from_wire(bad)
    assert info.value.status == 400 and info.value.code == "InvalidRequest"
    assert cls.__name__ in info.value.message or "proposal" in info.value.message
