"""The proposer against real acceptors (LMDB, group-commit writer) over a fake transport."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time

import pytest

from garagekv.consensus import ZERO_BALLOT, Decision, LayoutPlacement, Proposer, ReadTooLarge
from garagekv.consensus.acceptor import ACCEPT_COMMIT, CHECKED_PROPOSE, COMMIT, PREPARE, PROPOSE, READ
from garagekv.consensus.messages import Commit
from garagekv.consensus.proposer import CONTENTION_MEMORY
from garagekv.rpc.layout import NB_PARTITIONS, LayoutHistory, NodeRole
from garagekv.rpc.layout.manager import LayoutManager
from garagekv.rpc.quorum import QuorumError
from garagekv.util import codec
from garagekv.util.errors import EntityTooLarge, ServiceUnavailable
from tests.support.consensus_fakes import (
    REGISTER_TREE,
    Cluster,
    RegisterMachine,
    decode_register,
    encode_register,
    increment,
    increment_once,
    key_of,
    read,
    settle,
)

KEY = key_of(7)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 5)
    yield c
    c.close()


async def test_uncontended_rounds_commit_everywhere(cluster):
    sets = [cluster.ids(0, 1, 2)]
    p = cluster.proposer(0, sets)
    assert [await p.run(KEY, [b"x"], increment()) for _ in range(3)] == [1, 2, 3]
    await settle()
    for node in cluster.nodes[:3]:
        assert node.register_value(KEY) == (3, 3)
        assert node.acceptor.load(KEY).accepted is None  # every commit cleared its proposal
    assert cluster.nodes[3].register_value(KEY) == (0, 0)  # not a storage node of the key
    m = p.metrics
    assert (m.rounds, m.decided, m.contention, m.completions, m.failures) == (3, 3, 0, 0, 0)
    assert p.placement.locked == 0  # the layout write lock was held only during rounds


async def test_read_only_round_writes_nothing_but_is_accepted(cluster):
    sets = [cluster.ids(0, 1, 2)]
    await cluster.proposer(0, sets).run(KEY, [b"x"], increment())
    await settle()
    before = len(cluster.transport.calls)
    assert await cluster.proposer(1, sets).run(KEY, [b"x"], read()) == (1, 1)
    await settle()
    paths = [path for path, _ in cluster.transport.calls[before:]]
    assert COMMIT not in paths and PROPOSE in paths  # a no-op is accepted (it discards older
    # proposals in flight) but there is nothing to commit
    assert cluster.nodes[0].register_value(KEY) == (1, 1)


async def test_loser_of_a_ballot_backs_off_and_retries(cluster):
    """A prepares, then B runs a whole round before A's Propose lands: A's ballot is refused, A
    retries with a higher ballot and its increment builds on B's."""
    sets = [cluster.ids(0, 1, 2)]
    a, b = cluster.proposer(0, sets), cluster.proposer(1, sets)
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="a")
    b_done = asyncio.Event()
    b_task = None

    async def run_b() -> None:
        who.set("b")  # calls made by B's round inherit this context
        await b.run(KEY, [b"x"], increment())
        b_done.set()

    async def before(path: str, node: bytes) -> None:
        nonlocal b_task
        if path == PROPOSE and who.get() == "a" and not b_done.is_set():
            if b_task is None:
                b_task = asyncio.create_task(run_b())
            await b_done.wait()

    cluster.transport.before = before
    assert await a.run(KEY, [b"x"], increment()) == 2
    assert a.metrics.contention >= 1 and a.metrics.decided == 1
    assert b.metrics.decided == 1
    await settle()
    assert {n.register_value(KEY) for n in cluster.nodes[:3]} == {(2, 2)}


async def test_competing_proposers_choose_one_value_per_instance(cluster):
    """Many concurrent compare-and-set increments from several nodes: every successful one wrote
    a distinct version, and the final value counts exactly the successful increments."""
    sets = [cluster.ids(0, 1, 2)]
    proposers = [cluster.proposer(i, sets) for i in range(3)]

    async def client(i, p):
        # An attempt that lost its ballot after proposing may still be completed by another
        # round: the increment must then not apply a second time (``increment_once``).
        return [await p.run(KEY, [b"x", b"op%d.%d" % (i, j)], increment_once(b"op%d.%d" % (i, j))) for j in range(8)]

    results = await asyncio.gather(*(client(i, p) for i, p in enumerate(proposers)))
    versions = sorted(v for r in results for v in r)
    assert versions == list(range(1, 25))
    await settle()
    assert {n.register_value(KEY) for n in cluster.nodes[:3]} == {(24, 24)}


async def test_accepted_but_uncommitted_proposal_is_completed_first(cluster):
    sets = [cluster.ids(0, 1, 2)]
    a = cluster.proposer(0, sets, timeout=2.0)
    cluster.transport.drop = lambda path, node, body=None: path == COMMIT
    with pytest.raises(ServiceUnavailable):
        await a.run(KEY, [b"x"], increment())  # accepted by a majority, committed nowhere
    await settle()
    # The round goes on once a majority accepted: the third accept may still be in flight or dropped.
    assert sum(n.acceptor.load(KEY).accepted is not None for n in cluster.nodes[:3]) >= 2
    assert cluster.nodes[0].register_value(KEY) == (0, 0)

    cluster.transport.drop = lambda path, node, body=None: False
    b = cluster.proposer(1, sets)
    assert await b.run(KEY, [b"x"], read()) == (1, 1)  # it sees the completed increment
    assert b.metrics.completions == 1
    await settle()
    assert {n.register_value(KEY) for n in cluster.nodes[:3]} == {(1, 1)}
    assert all(n.acceptor.load(KEY).committed > ZERO_BALLOT for n in cluster.nodes[:3])


async def test_a_proposer_holding_the_next_ballot_skips_prepare(cluster):
    """Its commit got the next ballot promised (docs/consensus.md §3b): the following writes read
    the states and propose at once, and a read under the held ballot is one round trip."""
    sets = [cluster.ids(0, 1, 2)]
    p = cluster.proposer(0, sets)
    assert await p.run(KEY, [b"x"], increment()) == 1
    before = len(cluster.transport.calls)
    assert [await p.run(KEY, [b"x"], increment()) for _ in range(2)] == [2, 3]
    paths = {path for path, _ in cluster.transport.calls[before:]}
    assert PREPARE not in paths and {READ, CHECKED_PROPOSE, ACCEPT_COMMIT, COMMIT} <= paths
    before = len(cluster.transport.calls)
    assert await p.run(KEY, [b"x"], read()) == (3, 3)
    assert {path for path, _ in cluster.transport.calls[before:]} == {READ}
    assert (p.metrics.held, p.metrics.decided, p.metrics.contention) == (3, 4, 0)
    await settle()
    assert {n.register_value(KEY) for n in cluster.nodes[:3]} == {(3, 3)}


async def test_a_ballot_taken_by_another_proposer_is_no_longer_held(cluster):
    sets = [cluster.ids(0, 1, 2)]
    a, b = cluster.proposer(0, sets), cluster.proposer(1, sets)
    assert await a.run(KEY, [b"x"], increment()) == 1
    assert await b.run(KEY, [b"x"], increment()) == 2  # prepares above a's held ballot
    before = len(cluster.transport.calls)
    assert await a.run(KEY, [b"x"], increment()) == 3  # the read is refused: a prepares again
    assert PREPARE in {path for path, _ in cluster.transport.calls[before:]}
    assert a.metrics.held == 0
    await settle()
    assert {n.register_value(KEY) for n in cluster.nodes[:3]} == {(3, 3)}


async def test_a_key_is_contended_once_another_proposer_took_a_ballot_from_us(cluster):
    sets = [cluster.ids(0, 1, 2)]
    a, b = cluster.proposer(0, sets), cluster.proposer(1, sets)
    assert await a.run(KEY, [b"x"], increment()) == 1
    assert await a.run(KEY, [b"x"], increment()) == 2
    assert not a.contended(KEY)
    assert await b.run(KEY, [b"x"], increment()) == 3
    assert not b.contended(KEY)  # it outbid a's hold without being refused
    assert await a.run(KEY, [b"x"], increment()) == 4  # its held round is refused: b's ballot
    assert a.contended(KEY) and not a.contended(key_of(8))
    a._contended[KEY] = time.monotonic() - CONTENTION_MEMORY - 1  # long ago: forgotten
    assert not a.contended(KEY) and KEY not in a._contended


async def test_a_held_read_never_hides_a_write_that_could_still_apply(cluster):
    """b's increment is promised everywhere, accepted by node 2 only, then fails (503). A read
    by a, which held the key's ballot before, must not answer from the states alone: b's
    proposal could be completed after it. a's ballot is no longer held (b's promise replaced
    it), so a runs a full round, which completes or discards b's increment for good."""
    sets = [cluster.ids(0, 1, 2)]
    a, b = cluster.proposer(0, sets), cluster.proposer(1, sets, timeout=1.0)
    c = cluster.proposer(2, sets)
    assert await a.run(KEY, [b"x"], increment()) == 1
    n0, n1, n2 = cluster.ids(0, 1, 2)
    cluster.transport.drop = lambda path, node, body=None: path == PROPOSE and node != n2
    with pytest.raises(ServiceUnavailable):
        await b.run(KEY, [b"x"], increment())
    await settle()
    cluster.transport.drop = lambda path, node, body=None: False
    seen = await a.run(KEY, [b"x"], read())
    cluster.transport.down = {n0}  # c's quorum is {1, 2}: it would find b's proposal if it survived
    assert await c.run(KEY, [b"x"], read()) == seen


async def test_a_held_round_asks_only_the_holders_and_falls_back_when_one_fails(cluster):
    sets = [cluster.ids(0, 1, 2)]
    p = cluster.proposer(0, sets)
    assert await p.run(KEY, [b"x"], increment()) == 1
    holders = p._holds[KEY].holders
    assert len(holders) == 2  # a majority of the three, no more
    before = len(cluster.transport.calls)
    assert await p.run(KEY, [b"x"], increment()) == 2
    asked = [(path, node) for path, node in cluster.transport.calls[before:] if path != COMMIT]
    me = cluster.ids(0)[0]
    (peer,) = holders - {me}
    assert asked == [(READ, me), (CHECKED_PROPOSE, peer), (ACCEPT_COMMIT, me)]  # docs/consensus.md §3c
    holders = p._holds[KEY].holders
    peer = sorted(holders - {me})[0]
    cluster.transport.down = {peer}
    assert await p.run(KEY, [b"x"], increment()) == 3  # the peer fails: a full attempt
    assert p.metrics.failures == 0 and p.metrics.held == 1
    assert peer not in p._holds[KEY].holders
    assert await p.run(KEY, [b"x"], increment()) == 4  # held again, by the nodes that are up
    assert p.metrics.held == 2


@pytest.mark.parametrize("voters", [3, 5])
async def test_a_held_round_gives_up_on_a_holder_that_hangs(cluster, voters):
    """A holder that neither answers nor fails (paused: pings take a while to mark it down) ends
    the held round after ``holder_patience``, not at the deadline: a full attempt follows, and the
    new hold leaves it out. With three voters the held round is the checked one of §3c (one call to
    one holder); with five it reads and proposes to the two other holders (§3b)."""
    sets = [cluster.ids(*range(voters))]
    p = cluster.proposer(0, sets, timeout=5.0)
    p.holder_patience = 0.05
    assert await p.run(KEY, [b"x"], increment()) == 1
    me = cluster.ids(0)[0]
    peer = sorted(p._holds[KEY].holders - {me})[0]
    cluster.transport.hung = {peer}
    assert await p.run(KEY, [b"x"], increment()) == 2
    assert p.metrics.impatient == 1 and p.metrics.failures == 0
    assert peer not in p._holds[KEY].holders
    assert await p.run(KEY, [b"x"], increment()) == 3  # held again, without it
    assert p.metrics.held == 1 and p.metrics.impatient == 1


async def test_a_held_round_waits_for_a_holder_that_is_slow_but_answering(cluster):
    """A holder whose answers take longer than ``holder_patience`` but who keeps answering other
    calls meanwhile (a slow link under load) is waited for: giving the hold up would only cross
    the same link three times (Prepare, Propose, Commit) instead of once."""
    p = cluster.proposer(0, [cluster.ids(0, 1, 2)], timeout=5.0)
    p.holder_patience = 0.1
    assert await p.run(KEY, [b"x"], increment()) == 1
    me = cluster.ids(0)[0]
    peer = sorted(p._holds[KEY].holders - {me})[0]
    cluster.transport.delay = lambda: 0.15  # each way: 0.3 s per call, three times the patience

    async def answering_others() -> None:  # what its answers to other rounds' calls record
        while True:
            cluster.transport.heard[peer] = time.monotonic()
            await asyncio.sleep(0.02)

    others = asyncio.create_task(answering_others())
    try:
        assert await p.run(KEY, [b"x"], increment()) == 2
    finally:
        others.cancel()
    assert p.metrics.impatient == 0 and p.metrics.held == 1


async def plain_write(node, key: bytes, version: int, value: int) -> None:
    """A write outside consensus (as a plain K2V write lands on some replicas only)."""
    tree = node.db.tree(REGISTER_TREE)
    await node.writer.submit(lambda tx: tx.put(tree, key + b"/x", encode_register(version, value)))


async def test_a_checked_write_never_stands_on_stale_local_states(cluster):
    """docs/consensus.md §3c: a write acknowledged by the two replicas other than the proposer's
    node is missing from its own states. The other holder has it, so it refuses the proposal
    decided without it and answers its states: the round decides again on both."""
    sets = [cluster.ids(0, 1, 2)]
    p = cluster.proposer(0, sets)
    assert await p.run(KEY, [b"x"], increment()) == 1
    me = cluster.ids(0)[0]
    assert me in p._holds[KEY].holders
    for node in cluster.nodes[1:3]:
        await plain_write(node, KEY, 5, 50)
    assert await p.run(KEY, [b"x"], increment()) == 6
    assert (p.metrics.mismatches, p.metrics.checked, p.metrics.held) == (1, 0, 1)
    assert await p.run(KEY, [b"x"], increment()) == 7  # the states agree again
    assert (p.metrics.mismatches, p.metrics.checked) == (1, 1)
    await settle()
    assert {n.register_value(KEY) for n in cluster.nodes[:3]} == {(7, 52)}


async def test_a_checked_write_is_accepted_here_only_after_the_other_holder(cluster):
    """Our own acceptor accepting a proposal decided on its own states alone could leave a stale
    proposal for a later round to complete: it may accept only once the other holder did."""
    sets = [cluster.ids(0, 1, 2)]
    p = cluster.proposer(0, sets)
    assert await p.run(KEY, [b"x"], increment()) == 1
    me = cluster.ids(0)[0]
    (peer,) = p._holds[KEY].holders - {me}
    seen: list[object] = []

    async def before(path: str, node: bytes) -> None:
        if path == ACCEPT_COMMIT and node == me:
            seen.append(cluster.by_id[peer].acceptor.load(KEY).accepted)

    cluster.transport.before = before
    assert await p.run(KEY, [b"x"], increment()) == 2
    assert len(seen) == 1 and seen[0] is not None and p.metrics.checked == 1
    # The other holder fails on the checked proposal: nothing was accepted here under the held
    # ballot, and the full attempt that follows writes the increment once.
    (peer,) = p._holds[KEY].holders - {me}
    cluster.transport.before = None
    held = p._holds[KEY].ballot
    cluster.transport.drop = lambda path, node, body=None: path == CHECKED_PROPOSE
    assert await p.run(KEY, [b"x"], increment()) == 3
    assert p.metrics.checked == 1 and cluster.by_id[me].acceptor.load(KEY).committed > held
    await settle()
    assert {n.register_value(KEY) for n in cluster.nodes[:3]} == {(3, 3)}


async def test_a_held_read_asks_the_other_holder_too(cluster):
    """A decision that writes nothing is still made on a majority's states (docs/consensus.md
    §3b): the proposer's own states may miss an acknowledged write."""
    sets = [cluster.ids(0, 1, 2)]
    p = cluster.proposer(0, sets)
    assert await p.run(KEY, [b"x"], increment()) == 1
    me = cluster.ids(0)[0]
    (peer,) = p._holds[KEY].holders - {me}
    for node in cluster.nodes[1:3]:
        await plain_write(node, KEY, 5, 50)
    before = len(cluster.transport.calls)
    assert await p.run(KEY, [b"x"], read()) == (5, 50)
    assert cluster.transport.calls[before:] == [(READ, me), (READ, peer)]


async def test_a_sole_storage_node_accepts_and_commits_its_held_writes_in_one_step(cluster):
    """Replication factor 1: the node is a majority by itself (docs/consensus.md §3c)."""
    me = cluster.ids(0)[0]
    p = cluster.proposer(0, [[me]])
    assert await p.run(KEY, [b"x"], increment()) == 1
    before = len(cluster.transport.calls)
    assert await p.run(KEY, [b"x"], increment()) == 2
    assert await p.run(KEY, [b"x"], read()) == (2, 2)
    assert cluster.transport.calls[before:] == [(READ, me), (ACCEPT_COMMIT, me), (READ, me)]
    assert (p.metrics.checked, p.metrics.held) == (1, 2)
    assert cluster.nodes[0].register_value(KEY) == (2, 2)


async def test_a_held_ballot_is_dropped_when_the_view_changes(cluster):
    sets = [cluster.ids(0, 1, 2)]
    p = cluster.proposer(0, sets)
    assert await p.run(KEY, [b"x"], increment()) == 1
    p.placement.sets = [cluster.ids(0, 1, 2), cluster.ids(2, 3, 4)]
    p.placement.epoch = 1
    before = len(cluster.transport.calls)
    assert await p.run(KEY, [b"x"], increment()) == 2
    assert PREPARE in {path for path, _ in cluster.transport.calls[before:]}
    assert p.metrics.held == 0


async def test_a_majority_is_needed_in_every_live_version(cluster):
    """Two live versions {0,1,2} and {2,3,4}: nodes 3 and 4 down leave a majority of the first
    set only, which is not enough; with only node 4 down both sets have one."""
    sets = [cluster.ids(0, 1, 2), cluster.ids(2, 3, 4)]
    cluster.transport.down = set(cluster.ids(3, 4))
    p = cluster.proposer(0, sets)
    with pytest.raises(QuorumError):
        await p.run(KEY, [b"x"], increment())
    assert p.metrics.failures == 1
    cluster.transport.down = set(cluster.ids(4))
    assert await p.run(KEY, [b"x"], increment()) == 1
    await settle()
    assert cluster.nodes[3].register_value(KEY) == (1, 1)  # committed in the new version's set too


async def test_unreachable_majority_fails_with_503(cluster):
    cluster.transport.down = set(cluster.ids(1, 2))
    p = cluster.proposer(0, [cluster.ids(0, 1, 2)])
    with pytest.raises(ServiceUnavailable) as info:
        await p.run(KEY, [b"x"], increment())
    assert info.value.status == 503


async def test_silent_majority_fails_with_503_at_the_deadline(cluster):
    cluster.transport.hung = set(cluster.ids(1, 2))
    p = cluster.proposer(0, [cluster.ids(0, 1, 2)], timeout=0.3)
    with pytest.raises(ServiceUnavailable) as info:
        await p.run(KEY, [b"x"], increment())
    assert info.value.status == 503 and "within" in info.value.message
    assert p.metrics.failures == 1 and p.placement.locked == 0


async def test_layout_placement_standalone_node_is_its_own_quorum(cluster):
    class Layout:
        node_id = cluster.nodes[0].id
        history = LayoutHistory.new(3)

        def write_lock(self):
            return contextlib.nullcontext()

    placement = LayoutPlacement(Layout())
    assert placement.write_sets(KEY[:32]) == [[cluster.nodes[0].id]]
    assert placement.storage_nodes(KEY[:32]) == [cluster.nodes[0].id]


async def test_a_commit_missed_by_some_replicas_is_repaired_before_a_new_proposal(cluster):
    """X, Y, Z. Increment of ``a`` accepted by X and Y, committed on X only. A second round with
    X and Z (Y down) proposes ``b``, committed on Z only. A third round with Y and Z (X down) sees
    Y's accepted ``a`` as settled (Z has a newer commit), so it must find ``a`` in Z's state: the
    second round had to repair ``a`` onto Z before proposing. Without the repair ``a`` is lost."""
    x, y, z = cluster.ids(0, 1, 2)
    sets = [[x, y, z]]
    cluster.transport.drop = lambda path, node, body=None: (
        (path == PROPOSE and node == z) or (path == COMMIT and node != x)
    )
    with pytest.raises(ServiceUnavailable):
        await cluster.proposer(0, sets, timeout=2.0).run(KEY, [b"a"], increment(b"a"))
    await settle()

    cluster.transport.down = {y}

    def commit_of_b(body) -> bool:
        update = Commit.from_wire(body).proposal.update
        return update is not None and codec.decode(update)[0][0] == b"b"

    cluster.transport.drop = lambda path, node, body=None: path == COMMIT and node == x and commit_of_b(body)
    p2 = cluster.proposer(0, sets, timeout=2.0)
    with pytest.raises(ServiceUnavailable):
        await p2.run(KEY, [b"b"], increment(b"b"))
    await settle()

    cluster.transport.down = {x}
    cluster.transport.drop = lambda path, node, body=None: False

    def read_both(merged):
        return Decision(None, (decode_register(merged[b"a"]), decode_register(merged[b"b"])))

    assert await cluster.proposer(2, sets).run(KEY, [b"a", b"b"], read_both) == ((1, 1), (1, 1))
    assert p2.metrics.repairs == 1


async def test_layout_placement_during_a_migration(tmp_path):
    """With the real layout manager: a partition moving between two live versions needs both
    sets, the ballots carry the newest version, and the commit reaches every storage node."""
    cluster = Cluster(tmp_path / "nodes", 4)
    try:
        h = LayoutHistory.new(3)
        for i, zone in enumerate(["dc1", "dc2", "dc3"]):
            h.stage_role(cluster.nodes[i].id, NodeRole(zone, 10**9))
        h, _ = h.apply_staged_changes(1)
        h.stage_role(cluster.nodes[3].id, NodeRole("dc4", 10**9))
        h, _ = h.apply_staged_changes(2)
        manager = LayoutManager(cluster.nodes[0].id, tmp_path, 3, "consistent")
        manager.replace(h)
        assert [v.version for v in manager.history.versions] == [1, 2]
        moved = next(p for p in range(NB_PARTITIONS) if h.versions[0].nodes_of(p) != h.versions[1].nodes_of(p))
        key = key_of(moved)
        placement = LayoutPlacement(manager)
        old_set, new_set = placement.write_sets(key[:32])
        assert set(old_set) != set(new_set) and len(placement.storage_nodes(key[:32])) == 4
        assert placement.layout_version() == 2

        p = Proposer(placement, cluster.transport, RegisterMachine())
        assert await p.run(key, [b"x"], increment()) == 1
        await settle()
        assert all(n.register_value(key) == (1, 1) for n in cluster.nodes)
        assert all(n.acceptor.load(key).committed.epoch == 2 for n in cluster.nodes)
    finally:
        cluster.close()


@pytest.mark.parametrize("held", [False, True])
async def test_states_too_big_for_an_answer_end_the_operation_before_any_proposal(cluster, held):
    """An acceptor whose answer with the read states would pass the RPC frame limit is not a node
    that failed (any node's answer would be as big): the operation ends at once with a 413 that
    says nothing was proposed, with or without a held ballot, and nothing was written."""
    sets = [cluster.ids(0, 1, 2)]
    p = cluster.proposer(0, sets)
    if held:
        assert await p.run(KEY, [b"x"], increment()) == 1  # the commit renews: p holds a ballot
        await settle()

    async def too_big(path: str, node: bytes) -> None:
        if path in (PREPARE, READ, CHECKED_PROPOSE) and node != cluster.nodes[0].id:
            raise EntityTooLarge("the answer is 17000000 bytes, over the RPC frame limit")

    cluster.transport.before = too_big
    before = len(cluster.transport.calls)
    for decide in (increment(), read()):
        with pytest.raises(ReadTooLarge) as e:
            await p.run(KEY, [b"x"], decide)
        assert e.value.status == 413 and "do not fit in one message" in e.value.message
    await settle()
    paths = [path for path, _ in cluster.transport.calls[before:]]
    assert PROPOSE not in paths and ACCEPT_COMMIT not in paths and COMMIT not in paths, paths
    for node in cluster.nodes[:3]:
        assert node.register_value(KEY) == ((1, 1) if held else (0, 0))
    cluster.transport.before = None
    assert await p.run(KEY, [b"x"], increment()) == (2 if held else 1)
