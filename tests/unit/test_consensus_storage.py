"""Acceptor state on a real LMDB environment through the real group-commit writer; state GC."""

from __future__ import annotations

import pytest

from garagekv.consensus import Ballot, ConsensusGcWorker, MalformedMessage, Proposal
from garagekv.consensus.acceptor import ACCEPT_COMMIT, BATCH, CHECKED_PROPOSE, COMMIT, PREPARE, PROPOSE, READ
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
from garagekv.util.background import WorkerState
from tests.support.consensus_fakes import Node, StaticPlacement, codec, encode_register, key_of

A, B = bytes([1]) * 32, bytes([2]) * 32
KEY = key_of(3)


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "n", 0, fsync=True)
    yield n
    n.close()


async def test_acceptor_state_survives_closing_and_reopening(tmp_path):
    path = tmp_path / "n"
    n = Node(path, 0, fsync=True)
    promise = await n.acceptor.prepare(Prepare(KEY, Ballot(0, 10, A), (b"x",)))
    assert promise.ok and promise.states == ((b"x", None),)
    assert (await n.acceptor.propose(Propose(KEY, Proposal(Ballot(0, 10, A), b"u")))).ok
    other = key_of(3, b"other")
    update = codec.encode_lists([[b"x", encode_register(1, 41)]])
    await n.acceptor.commit(Commit(other, Proposal(Ballot(0, 7, B), update)))
    n.close()

    n = Node(path, 0, fsync=True)
    try:
        s = n.acceptor.load(KEY)
        assert s.promised == Ballot(0, 10, A) and s.accepted == Proposal(Ballot(0, 10, A), b"u")
        assert n.acceptor.load(other).committed == Ballot(0, 7, B)
        assert n.register_value(other) == (1, 41)  # the update landed with its commit ballot
        refused = await n.acceptor.prepare(Prepare(KEY, Ballot(0, 9, B), (b"x",)))
        assert not refused.ok and refused.promised == Ballot(0, 10, A) and refused.states == ()
        again = await n.acceptor.prepare(Prepare(other, Ballot(0, 11, A), (b"x",)))
        assert again.ok and again.committed == Ballot(0, 7, B) and again.accepted is None
        assert again.states == ((b"x", encode_register(1, 41)),)
    finally:
        n.close()


async def test_a_failing_apply_records_no_commit(node):
    """The update and the commit ballot are one transaction: if applying fails, neither stays."""
    with pytest.raises(Exception):  # noqa: B017 - whatever the state machine raises
        await node.acceptor.commit(Commit(KEY, Proposal(Ballot(0, 5, A), b"not msgpack \xc1")))
    assert node.acceptor.load(KEY).committed < Ballot(0, 5, A)


async def test_handlers_validate_messages_once(node):
    reply = await node.registry.dispatch(A, PREPARE, Prepare(KEY, Ballot(0, 3, A), ()).to_wire())
    assert Promise.from_wire(reply).ok
    for path in (PREPARE, PROPOSE, COMMIT, READ, CHECKED_PROPOSE, ACCEPT_COMMIT):
        with pytest.raises(MalformedMessage):
            await node.registry.dispatch(A, path, ["garbage"])
    assert node.acceptor.load(KEY).promised == Ballot(0, 3, A)  # nothing changed by bad messages


async def test_a_batch_answers_each_message_on_its_own(node):
    """Good messages take effect and answer; a malformed one, an unknown endpoint or bytes that
    are not msgpack answer a typed error in their slot and change nothing."""
    b1, nxt = Ballot(0, 3, A), Ballot(0, 4, A)
    other = key_of(4)
    items = [
        codec.encode([PREPARE, Prepare(KEY, b1, ()).to_wire()]),
        codec.encode([PROPOSE, ["garbage"]]),
        codec.encode(["garagekv/table/whatever", []]),
        b"\xc1 not msgpack",
        codec.encode([PREPARE, Prepare(other, b1, ()).to_wire()]),
    ]
    answers = await node.registry.dispatch(A, BATCH, items)
    assert [ok for ok, _ in answers] == [True, False, False, False, True]
    assert Promise.from_wire(answers[0][1]).ok
    assert {answers[i][1]["code"] for i in (1, 2, 3)} == {"InvalidRequest"}
    # The commit renews the next ballot; a Read under it answers the states, under another refuses.
    answers = await node.registry.dispatch(
        A,
        BATCH,
        [
            codec.encode([PROPOSE, Propose(KEY, Proposal(b1, None)).to_wire()]),
            codec.encode([COMMIT, Commit(other, Proposal(b1, codec.encode_lists([])), nxt).to_wire()]),
        ],
    )
    assert Accepted.from_wire(answers[0][1]).ok and Accepted.from_wire(answers[1][1]).ok
    held = await node.registry.dispatch(A, READ, Prepare(other, nxt, (b"x",)).to_wire())
    assert Promise.from_wire(held) == Promise(True, nxt, None, None, ((b"x", None),))
    refused = await node.registry.dispatch(A, READ, Prepare(other, Ballot(0, 5, A), (b"x",)).to_wire())
    assert Promise.from_wire(refused) == Promise(False, nxt, None, None, ())
    with pytest.raises(MalformedMessage):
        await node.registry.dispatch(A, BATCH, "not a list")


async def test_a_checked_proposal_is_accepted_only_on_the_same_states_under_the_held_ballot(node):
    """docs/consensus.md §3c: other states are answered and nothing is accepted; a ballot no longer
    held is refused; only the same states under the held ballot accept."""
    b1, held, higher = Ballot(0, 3, A), Ballot(0, 4, A), Ballot(0, 9, B)
    state = encode_register(1, 10)
    await node.acceptor.commit(Commit(KEY, Proposal(b1, codec.encode_lists([[b"x", state]])), held))
    update = codec.encode_lists([[b"x", encode_register(2, 11)]])

    def checked(ballot: Ballot, seen: bytes | None) -> list:
        return CheckedPropose(KEY, Proposal(ballot, update), (b"x",), (state_digest(seen),)).to_wire()

    other = CheckedAccepted.from_wire(await node.registry.dispatch(A, CHECKED_PROPOSE, checked(held, None)))
    assert other == CheckedAccepted(False, held, ((b"x", state),))
    refused = CheckedAccepted.from_wire(await node.registry.dispatch(A, CHECKED_PROPOSE, checked(b1, state)))
    assert refused == CheckedAccepted(False, held)
    assert node.acceptor.load(KEY).accepted is None and node.acceptor.load(KEY).promised == held
    ok = CheckedAccepted.from_wire(await node.registry.dispatch(A, CHECKED_PROPOSE, checked(held, state)))
    assert ok == CheckedAccepted(True, held)
    assert node.acceptor.load(KEY).accepted == Proposal(held, update)
    # Accepted once: the ballot is no longer merely held (nothing accepted), so a second is refused.
    assert not CheckedAccepted.from_wire(await node.registry.dispatch(A, CHECKED_PROPOSE, checked(held, state))).ok
    await node.acceptor.prepare(Prepare(KEY, higher, ()))
    refused = CheckedAccepted.from_wire(await node.registry.dispatch(A, CHECKED_PROPOSE, checked(held, state)))
    assert refused == CheckedAccepted(False, higher)
    assert node.register_value(KEY) == (1, 10)  # a proposal is not a commit


async def test_accept_and_commit_is_one_step_refused_under_a_higher_promise(node):
    """The proposer's own acceptor after the other holder accepted (docs/consensus.md §3c)."""
    held, nxt, higher = Ballot(0, 4, A), Ballot(0, 5, A), Ballot(0, 9, B)
    await node.acceptor.prepare(Prepare(KEY, held, ()))
    update = codec.encode_lists([[b"x", encode_register(1, 11)]])
    answer = await node.registry.dispatch(A, ACCEPT_COMMIT, Commit(KEY, Proposal(held, update), nxt).to_wire())
    assert Accepted.from_wire(answer) == Accepted(True, nxt)
    state = node.acceptor.load(KEY)
    assert (state.committed, state.promised, state.accepted) == (held, nxt, None)
    assert node.register_value(KEY) == (1, 11)
    await node.acceptor.prepare(Prepare(KEY, higher, ()))
    late = Commit(KEY, Proposal(nxt, codec.encode_lists([[b"x", encode_register(2, 12)]])), Ballot(0, 10, A))
    answer = await node.registry.dispatch(A, ACCEPT_COMMIT, late.to_wire())
    assert Accepted.from_wire(answer) == Accepted(False, higher)
    assert node.acceptor.load(KEY).committed == held and node.register_value(KEY) == (1, 11)


async def test_gc_forgets_partitions_no_longer_stored_here(node):
    kept, gone = key_of(3, b"a"), key_of(9, b"b")
    for k in (kept, gone):
        await node.acceptor.prepare(Prepare(k, Ballot(0, 1, A), ()))

    class Placement(StaticPlacement):
        def storage_nodes(self, h32: bytes) -> list[bytes]:
            return [node.id, B] if h32[0] == 3 else [B]

    worker = ConsensusGcWorker(node.db, node.writer, Placement(node.id, []))
    assert await worker.work() is WorkerState.IDLE
    assert worker.progress() == {"deleted": 1, "passes": 1}
    assert node.acceptor.load(kept).promised == Ballot(0, 1, A)
    assert node.acceptor.load(gone).promised < Ballot(0, 1, A)


async def test_gc_works_in_batches(node, monkeypatch):
    monkeypatch.setattr("garagekv.consensus.gc.BATCH", 2)
    for i in range(5):
        await node.acceptor.prepare(Prepare(key_of(9, b"%d" % i), Ballot(0, 1, A), ()))
    worker = ConsensusGcWorker(node.db, node.writer, StaticPlacement(node.id, [[B]]))
    states = [await worker.work() for _ in range(3)]
    assert states == [WorkerState.BUSY, WorkerState.BUSY, WorkerState.IDLE]
    assert worker.deleted == 5
