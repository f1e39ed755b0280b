"""The proposer: runs one operation as a Paxos round on one consensus key.

One attempt: pick a ballot, Prepare on every storage node of the key and wait for promises from
a majority of every live layout version's node set. If a promise reports an accepted proposal
not known to be committed, complete it first (re-propose it under our ballot, commit it) and
start again. If some promisers missed the most recent commit, commit it again first. Then merge
the states the promises carry, let the operation ``decide``, Propose the decision, and Commit it
to every storage node, waiting for a majority of every set. A refusal (a higher ballot promised
elsewhere) loses the attempt: back off for a random time and retry with a higher ballot.
Unreachable nodes or the deadline end the operation with a 503. Protocol and proofs:
docs/consensus.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from garagekv.consensus.acceptor import (
    ACCEPT_COMMIT,
    BATCH,
    BATCH_HELD,
    CHECKED_PROPOSE,
    COMMIT,
    PREPARE,
    PROPOSE,
    READ,
)
from garagekv.consensus.ballot import Ballot, BallotClock
from garagekv.consensus.machine import Decision, StateMachine
from garagekv.consensus.messages import (
    MIN_KEY_LEN,
    Accepted,
    CheckedAccepted,
    CheckedPropose,
    Commit,
    Prepare,
    Promise,
    Proposal,
    Propose,
    state_digest,
)
from garagekv.consensus.metrics import ConsensusMetrics
from garagekv.consensus.placement import Placement, majority
from garagekv.rpc.batching import MAX_BATCH_BYTES, CallBatcher, resolve_held, unwrap_answer
from garagekv.rpc.quorum import QuorumError, describe_failure
from garagekv.util import codec
from garagekv.util.errors import BadRequest, EntityTooLarge, ServiceUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Backoff after a lost ballot: uniform in [0, min(BACKOFF_MAX, BACKOFF_BASE * 2^lost)] seconds.
BACKOFF_BASE = 0.005
BACKOFF_MAX = 0.5
DEFAULT_TIMEOUT = 30.0
#: Keys whose next ballot this proposer holds, at most (the least recently used are forgotten,
#: which only costs their next operation a Prepare).
MAX_HOLDS = 16384
#: Seconds a key whose ballot another proposer took stays ``contended`` (at most MAX_HOLDS keys).
CONTENTION_MEMORY = 30.0
#: Seconds a held round waits for another holder that sends nothing at all (no answer to any
#: call, no ping: ``Transport.last_heard``) before it gives the hold up and asks every node
#: (docs/consensus.md §9): a holder that hangs (paused, stalled disk) is only marked down after
#: several missed pings, and a round waiting on it meanwhile would stall its key. One that keeps
#: sending is slow (a slow link, a long group commit), not hung, and is waited for: a full
#: attempt would cross the same link three times.
HOLDER_PATIENCE = 2.0


class Transport(Protocol):
    """``NetApp.call`` (a call to one's own node id runs the handler in-process)."""

    async def call(self, node_id: bytes, path: str, body: Any, timeout: float | None = ...) -> Any: ...

    def last_heard(self, node_id: bytes) -> float:
        """When that node last sent anything (``time.monotonic()``), as ``NetApp.last_heard``."""
        ...


class _Lost(Exception):
    """An attempt lost to a higher ballot (internal: the round retries)."""

    def __init__(self, ballot: Ballot) -> None:
        super().__init__(str(ballot))
        self.ballot = ballot


class _Unreachable(Exception):
    """Some of the nodes asked (``only``) failed: no majority among them (internal)."""


class _NotHeld(Exception):
    """A held ballot's attempt could not go on (internal: a full attempt follows). ``ballot``: the
    higher one that took the key, if a refusal said so; ``backoff``: wait before retrying."""

    def __init__(self, ballot: Ballot | None, *, backoff: bool) -> None:
        super().__init__(str(ballot))
        self.ballot = ballot
        self.backoff = backoff


@dataclass(frozen=True)
class _Hold:
    """A ballot a majority of every set promised to this proposer with its last commit on the
    key (docs/consensus.md §3b): the next operation may skip Prepare while the view is the same."""

    ballot: Ballot
    sets: tuple[tuple[bytes, ...], ...]
    #: The acceptors whose renewal made the hold: a majority of every set. The held round asks
    #: only them (the others would only add messages); if one of them fails, it falls back.
    holders: frozenset[bytes]


_background: set[asyncio.Future[Any]] = set()


class ReadTooLarge(EntityTooLarge):
    """The states an operation reads are too big for one acceptor's answer (the RPC frame
    limit): raised before anything was proposed, so the operation has not taken effect."""


#: Phases whose answers carry states; a refusal to send one for its size ends the operation.
_READ_PHASES = frozenset({PREPARE, READ, CHECKED_PROPOSE})


def _raise_if_too_large(path: str, err: BaseException) -> None:
    """An answer with states refused for its size ends the operation: every acceptor's would be
    as big, so it is not a node failing (a quorum error, a 503) but a request too big (413)."""
    if isinstance(err, EntityTooLarge) and path in _READ_PHASES:
        raise ReadTooLarge(
            f"the items this operation reads do not fit in one message between nodes ({err.message}); "
            "read fewer or smaller items per operation"
        ) from None


def _keep(task: asyncio.Future[Any]) -> None:
    """Let a call finish after its quorum was reached (a commit must still reach every node)."""
    _background.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _background.discard(task)
    if not task.cancelled():
        task.exception()


def background_tasks() -> set[asyncio.Future[Any]]:
    """Commits still running after their round returned (for shutdown and tests)."""
    return set(_background)


class Proposer:
    def __init__(
        self,
        placement: Placement,
        transport: Transport,
        machine: StateMachine,
        *,
        metrics: ConsensusMetrics | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        local: Callable[[str, Any], Awaitable[Any]] | None = None,
    ) -> None:
        self.placement = placement
        self.transport = transport
        self.machine = machine
        self.metrics = metrics if metrics is not None else ConsensusMetrics()
        self.timeout = timeout
        self.holder_patience = HOLDER_PATIENCE
        #: This node's acceptor endpoints, called in-process (``EndpointRegistry.dispatch`` of
        #: this node); without it, calls to this node go through the transport.
        self.local = local
        self.clock = BallotClock(placement.node_id)
        self._rng = rng or random.Random()
        self._holds: OrderedDict[bytes, _Hold] = OrderedDict()
        self._contended: OrderedDict[bytes, float] = OrderedDict()
        # Messages of concurrent rounds to one node leave as one call per loop turn: under load
        # the per-call costs (framing, encryption, dispatch, timers) are most of a round's CPU.
        self._batcher: CallBatcher[bytes] = CallBatcher(self._send_batch)

    async def run(
        self,
        key: bytes,
        read_keys: Sequence[bytes],
        decide: Callable[[Mapping[bytes, bytes | None]], Decision[T]],
        *,
        timeout: float | None = None,
    ) -> T:
        """Run one operation on ``key``; returns its decision's result once it is durable.

        Raises ``ServiceUnavailable`` (503) when no quorum can be reached or ``timeout`` (default:
        the proposer's) passes first; the operation may or may not have taken effect then.
        """
        if len(key) < MIN_KEY_LEN:
            raise BadRequest(f"a consensus key has at least {MIN_KEY_LEN} bytes")
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        self.metrics.count("rounds")
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                with self.placement.write_lock():
                    return await self._run(key, tuple(read_keys), decide, deadline)
        except TimeoutError:
            if not scope.expired():
                raise
            self.metrics.count("failures")
            raise ServiceUnavailable(f"consensus round did not complete within {limit}s") from None
        except ServiceUnavailable:
            self.metrics.count("failures")
            raise

    async def _run(
        self,
        key: bytes,
        read_keys: tuple[bytes, ...],
        decide: Callable[[Mapping[bytes, bytes | None]], Decision[T]],
        deadline: float,
    ) -> T:
        lost = 0
        hold = self._holds.pop(key, None)
        while True:
            # Read together (no await in between): the ballot's layout version is the one of the
            # view whose node sets this attempt uses.
            epoch = self.placement.layout_version()
            sets = self.placement.write_sets(key[:MIN_KEY_LEN])
            if not sets or not all(sets):
                raise QuorumError(1, 0, 0, ["no storage node for this partition"], operation="consensus_prepare")
            view = tuple(tuple(g) for g in sets)
            if hold is not None:
                held, hold = hold, None
                if held.ballot.epoch == epoch and held.sets == view:
                    try:
                        return await self._run_held(key, held, read_keys, decide, sets, deadline)
                    except _NotHeld as e:
                        if e.ballot is not None:
                            self._lost(key, e.ballot)
                        if e.backoff:
                            lost += 1
                            await self._backoff(lost, deadline)
                        continue
            ballot = self.clock.next(epoch)
            self.metrics.count("attempts")
            try:
                promises = await self._prepare(key, ballot, read_keys, sets, deadline)
                in_flight = _in_flight(promises)
                if in_flight is not None:
                    # Someone's proposal may have been chosen: finish it, then start over.
                    redo = Proposal(ballot, in_flight.update)
                    await self._propose(key, redo, sets, deadline)
                    await self._commit(key, redo, sets, deadline)
                    self.metrics.count("completions")
                    continue
                latest = _most_recent_commit(promises)
                if latest is not None and any(p.committed < latest.ballot for p in promises):
                    # Some replicas missed the last commit: it must be on a majority of every set
                    # before anything newer is proposed, or a later round could miss its data.
                    await self._commit(key, latest, sets, deadline)
                    self.metrics.count("repairs")
                decision = decide(_merge_states(self.machine, read_keys, [p.states for p in promises]))
                proposal = Proposal(ballot, decision.update)
                await self._propose(key, proposal, sets, deadline)
                if proposal.update is not None:
                    await self._commit_and_renew(key, proposal, epoch, view, sets, deadline)
                self.metrics.count("decided")
                return decision.result
            except _Lost as e:
                self._lost(key, e.ballot)
                lost += 1
                await self._backoff(lost, deadline)

    async def _run_held(
        self,
        key: bytes,
        hold: _Hold,
        read_keys: tuple[bytes, ...],
        decide: Callable[[Mapping[bytes, bytes | None]], Decision[T]],
        sets: list[list[bytes]],
        deadline: float,
    ) -> T:
        """An attempt under a held ballot (docs/consensus.md §3b): read the states from a
        majority of every set that still holds it, decide, and propose under it; no Prepare.

        Only the acceptors that renewed the hold are asked. Raises ``_NotHeld`` when the ballot is
        no longer held or one of them fails before the proposal is accepted.
        """
        self.metrics.count("attempts")
        me = self.placement.node_id
        others = hold.holders - {me}
        if len(sets) == 1 and len(others) <= 1 and me in hold.holders:
            other = next(iter(others), None)
            decision, committed = await self._run_checked(key, hold, other, read_keys, decide, sets, deadline)
        else:
            committed = False
            try:
                states = await self._read(key, hold.ballot, read_keys, sets, deadline, only=hold.holders)
            except _Lost as e:
                raise _NotHeld(e.ballot, backoff=False) from None
            except _Unreachable:
                raise _NotHeld(None, backoff=False) from None
            decision = self._decide_held(key, hold, decide, read_keys, [p.states for p in states])
        if not committed and decision.update is None:
            # Nothing to write: a majority still held the ballot when it answered, so nothing
            # newer was proposed before the read and nothing older can be accepted any more.
            self._remember(key, hold)
        elif not committed:  # (a checked round that committed has accepted it already, §3c)
            proposal = Proposal(hold.ballot, decision.update)
            try:
                await self._propose(key, proposal, sets, deadline, only=hold.holders)
            except _Lost as e:
                raise _NotHeld(e.ballot, backoff=True) from None  # a competitor: let it finish
            except _Unreachable:
                # A holder failed: the proposal may be accepted somewhere; the full attempt that
                # follows completes it or outbids it.
                raise _NotHeld(None, backoff=False) from None
            await self._commit_and_renew(key, proposal, hold.ballot.epoch, hold.sets, sets, deadline)
        self.metrics.count("held")
        self.metrics.count("decided")
        return decision.result

    async def _run_checked(
        self,
        key: bytes,
        hold: _Hold,
        other: bytes | None,
        read_keys: tuple[bytes, ...],
        decide: Callable[[Mapping[bytes, bytes | None]], Decision[T]],
        sets: list[list[bytes]],
        deadline: float,
    ) -> tuple[Decision[T], bool]:
        """A held round whose holders are this node and ``other`` (docs/consensus.md §3c), or
        this node alone (``None``: the partition's only storage node).

        Decide on this node's own states; a write is proposed to ``other`` with their digests, and
        ``other`` accepts only if its states are the same, this node's acceptor only after it.
        Then the write is committed: returns ``(decision, True)``. Otherwise, with ``other``'s
        states (from its answer, or from a Read when the local decision wrote nothing), returns
        the decision on both, as the Read of §3b would have made it, and ``False``: nothing is
        accepted yet.
        """
        me, ballot = self.placement.node_id, hold.ballot
        read = Prepare(key, ballot, read_keys).to_wire()
        own = await self._held_call(READ, read, me, deadline, _read_verdict(read_keys))
        decision = self._decide_held(key, hold, decide, read_keys, [own.states])
        if other is None:
            # This node alone is a majority: its states are a majority's, its acceptance chooses.
            if decision.update is None:
                return decision, False
        elif decision.update is None:
            theirs = await self._held_call(READ, read, other, deadline, _read_verdict(read_keys))
            return self._decide_held(key, hold, decide, read_keys, [own.states, theirs.states]), False
        proposal = Proposal(ballot, decision.update)
        if other is not None:
            answer = await self._checked_propose(key, proposal, read_keys, own.states, other, deadline)
            if answer.states is not None:
                self.metrics.count("mismatches")
                return self._decide_held(key, hold, decide, read_keys, [own.states, answer.states]), False
            # ``other`` accepted: its states were ours, and the two of us are a majority, so ours
            # hold every write acknowledged before this round. Only now may this node's acceptor
            # accept.
        # This node's acceptance makes the proposal chosen: it commits and renews in the same step.
        nxt = self.clock.next(ballot.epoch)
        body = Commit(key, proposal, nxt).to_wire()
        await self._held_call(ACCEPT_COMMIT, body, me, deadline, _accept_verdict)
        await self._commit_and_renew(key, proposal, ballot.epoch, hold.sets, sets, deadline, nxt=nxt, counted=me)
        self.metrics.count("checked")
        return decision, True

    async def _checked_propose(
        self,
        key: bytes,
        proposal: Proposal,
        read_keys: tuple[bytes, ...],
        states: tuple[tuple[bytes, bytes | None], ...],
        other: bytes,
        deadline: float,
    ) -> CheckedAccepted:
        def checked(raw: Any) -> tuple[bool, Ballot, CheckedAccepted]:
            a = CheckedAccepted.from_wire(raw)
            if a.states is not None:
                _check_states(a.states, read_keys)
            return a.ok or a.states is not None, a.promised, a

        digests = tuple(state_digest(v) for _, v in states)
        body = CheckedPropose(key, proposal, read_keys, digests).to_wire()
        return await self._held_call(CHECKED_PROPOSE, body, other, deadline, checked)

    async def _held_call(
        self,
        path: str,
        body: Any,
        node: bytes,
        deadline: float,
        verdict: Callable[[Any], tuple[bool, Ballot, R]],
    ) -> R:
        """One message of a held round to one holder; a refusal or a failure ends the round
        (``_NotHeld``: a full attempt follows, after a backoff if a proposal was refused)."""
        local = node == self.placement.node_id
        call = self._send(node, path, body, deadline)
        try:
            if not local:
                while not (await asyncio.wait({call}, timeout=self.holder_patience))[0]:
                    if self._silent(node):
                        self._impatient(node)
                        raise _NotHeld(None, backoff=False)
            raw = await call
            ok, seen, value = verdict(raw if local else unwrap_answer(raw))
        except _NotHeld:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of this one call ends the held round
            _raise_if_too_large(path, e)
            log.debug("held round: %s", describe_failure(node, e))
            raise _NotHeld(None, backoff=False) from None
        finally:
            call.cancel()  # no-op once done; a round cancelled meanwhile leaves nothing behind
        if not ok:
            raise _NotHeld(seen, backoff=path in (PROPOSE, ACCEPT_COMMIT))
        return value

    def _silent(self, node: bytes) -> bool:
        """Whether ``node`` sent nothing at all (answers, pings, requests) for ``holder_patience``."""
        return time.monotonic() - self.transport.last_heard(node) >= self.holder_patience

    def _impatient(self, node: bytes) -> None:
        """A holder answered nothing for ``holder_patience``: the held round is given up."""
        self.metrics.count("impatient")
        log.debug("holder %s silent for %.1fs: asking every node", node[:8].hex(), self.holder_patience)

    def _decide_held(
        self,
        key: bytes,
        hold: _Hold,
        decide: Callable[[Mapping[bytes, bytes | None]], Decision[T]],
        read_keys: tuple[bytes, ...],
        states: list[tuple[tuple[bytes, bytes | None], ...]],
    ) -> Decision[T]:
        try:
            return decide(_merge_states(self.machine, read_keys, states))
        except BaseException:
            self._remember(key, hold)  # nothing was proposed: the ballot is still held
            raise

    def _lost(self, key: bytes, ballot: Ballot) -> None:
        """A higher ballot took ``key`` from this proposer: outbid it next time, and remember
        that another proposer works on the key (``contended``)."""
        self.clock.observe(ballot)
        self.metrics.count("contention")
        if ballot.node != self.placement.node_id:
            self._contended[key] = time.monotonic()
            self._contended.move_to_end(key)
            while len(self._contended) > MAX_HOLDS:
                self._contended.popitem(last=False)

    def contended(self, key: bytes) -> bool:
        """Another proposer took one of this proposer's ballots on ``key`` in the last
        ``CONTENTION_MEMORY`` seconds: rounds run here on it would duel with that one."""
        since = self._contended.get(key)
        if since is None:
            return False
        if time.monotonic() - since > CONTENTION_MEMORY:
            del self._contended[key]
            return False
        return True

    def _remember(self, key: bytes, hold: _Hold) -> None:
        self._holds[key] = hold
        self._holds.move_to_end(key)
        while len(self._holds) > MAX_HOLDS:
            self._holds.popitem(last=False)

    async def _backoff(self, lost: int, deadline: float) -> None:
        cap = min(BACKOFF_MAX, BACKOFF_BASE * (2 ** min(lost, 16)))
        delay = self._rng.uniform(0, cap)
        await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    # ---- the three phases ------------------------------------------------------------------------

    async def _prepare(
        self, key: bytes, ballot: Ballot, read_keys: tuple[bytes, ...], sets: list[list[bytes]], deadline: float
    ) -> list[Promise]:
        body = Prepare(key, ballot, read_keys).to_wire()

        def verdict(raw: Any) -> tuple[bool, Ballot, Promise]:
            p = Promise.from_wire(raw)
            if p.ok and p.promised != ballot:
                raise ServiceUnavailable("acceptor promised another ballot than asked")
            if p.ok:
                _check_states(p.states, read_keys)
            return p.ok, p.promised, p

        return await self._quorum(PREPARE, body, sets, deadline, verdict, "consensus_prepare", keep=False)

    async def _propose(
        self,
        key: bytes,
        proposal: Proposal,
        sets: list[list[bytes]],
        deadline: float,
        only: Collection[bytes] | None = None,
    ) -> None:
        body = Propose(key, proposal).to_wire()
        await self._quorum(PROPOSE, body, sets, deadline, _accept_verdict, "consensus_propose", keep=False, only=only)

    async def _read(
        self,
        key: bytes,
        ballot: Ballot,
        read_keys: tuple[bytes, ...],
        sets: list[list[bytes]],
        deadline: float,
        only: Collection[bytes] | None = None,
    ) -> list[Promise]:
        body = Prepare(key, ballot, read_keys).to_wire()
        verdict = _read_verdict(read_keys)
        return await self._quorum(READ, body, sets, deadline, verdict, "consensus_read", keep=False, only=only)

    async def _commit(self, key: bytes, proposal: Proposal, sets: list[list[bytes]], deadline: float) -> None:
        body = Commit(key, proposal).to_wire()

        def verdict(raw: Any) -> tuple[bool, Ballot, None]:
            return True, proposal.ballot, None

        await self._quorum(COMMIT, body, sets, deadline, verdict, "consensus_commit", keep=True)

    async def _commit_and_renew(
        self,
        key: bytes,
        proposal: Proposal,
        epoch: int,
        view: tuple[tuple[bytes, ...], ...],
        sets: list[list[bytes]],
        deadline: float,
        *,
        nxt: Ballot | None = None,
        counted: bytes | None = None,
    ) -> None:
        """Commit our own decided proposal, asking each acceptor to promise our next ballot too.

        If the acceptors that renewed are a majority of every set, the next ballot is held
        (docs/consensus.md §3b). The commit waits for this node's own answer as well: it comes
        first as a rule (no network), and a hold with this node in it lets the next operation
        decide on local states (§3c). ``counted``: a node that already committed and renewed
        ``nxt`` (this node after an AcceptCommit, §3c); it is counted, not asked.
        """
        if nxt is None:
            nxt = self.clock.next(epoch)
        body = Commit(key, proposal, nxt).to_wire()

        def verdict(raw: Any) -> tuple[bool, Ballot, bool]:
            renewed = raw is not None and Accepted.from_wire(raw).ok
            return True, proposal.ballot, renewed

        answered: list[bytes] = []
        me = self.placement.node_id
        renewals = await self._quorum(
            COMMIT,
            body,
            sets,
            deadline,
            verdict,
            "consensus_commit",
            keep=True,
            answered=answered,
            also=me,
            counted=counted,
        )
        renewed = [node for node, ok in zip(answered, renewals, strict=True) if ok]
        if counted is not None:
            renewed.insert(0, counted)
        holders = _fewest(renewed, sets, me)
        if holders is not None:
            self._remember(key, _Hold(nxt, view, holders))

    # ---- calls ------------------------------------------------------------------------------------

    def _send(
        self, node: bytes, path: str, body: Any, deadline: float, item: bytes | None = None
    ) -> asyncio.Future[Any]:
        """One message to one acceptor, as a future: in-process for this node (through ``local``
        when given: no RPC layer, ``run`` enforces the deadline), otherwise batched with what the
        other rounds send that node in this loop turn. A batched answer is still wrapped (see
        ``unwrap_answer``); no task is made for it. ``item``: ``[path, body]`` already encoded
        (one encoding serves every node a message goes to)."""
        if node == self.placement.node_id:
            if self.local is not None:
                return asyncio.ensure_future(self.local(path, body))
        else:
            if item is None:
                item = _encode_item(path, body)
            if len(item) <= MAX_BATCH_BYTES:
                return resolve_held(
                    self._batcher.item_future(node, item),
                    lambda token: self.transport.call(node, BATCH_HELD, token, timeout=self.timeout),
                )
        remaining = max(0.0, deadline - time.monotonic())
        return asyncio.ensure_future(self._wrapped(node, path, body, remaining))

    async def _wrapped(self, node: bytes, path: str, body: Any, timeout: float) -> Any:
        """A call outside the batches, answered in the batches' form."""
        answer = await self.transport.call(node, path, body, timeout=timeout)
        return answer if node == self.placement.node_id else [True, answer]

    async def _send_batch(self, node: bytes, items: list[Any]) -> list[Any]:
        answers = await self.transport.call(node, BATCH, items, timeout=self.timeout)
        if not isinstance(answers, list) or len(answers) != len(items):
            raise ServiceUnavailable("malformed answer to a consensus batch")
        return answers

    # ---- waiting for a majority in every set -----------------------------------------------------

    async def _quorum(
        self,
        path: str,
        body: Any,
        sets: list[list[bytes]],
        deadline: float,
        verdict: Callable[[Any], tuple[bool, Ballot, R]],
        operation: str,
        *,
        keep: bool,
        only: Collection[bytes] | None = None,
        answered: list[bytes] | None = None,
        also: bytes | None = None,
        counted: bytes | None = None,
    ) -> list[R]:
        """The yes-answers once a majority of every set said yes.

        Raises ``_Lost`` once refusals leave some set short of a majority (with the highest ballot
        refused), and ``QuorumError`` once failures do. Calls still running at the end are
        cancelled, or kept running with ``keep`` (a commit must reach every node it can). With
        ``only``, just those nodes are asked, and one that answers nothing at all for
        ``holder_patience`` ends it (``_Unreachable``, as when one fails); ``answered`` receives
        the nodes that said yes, in the order of the answers. With ``also``, a majority is not
        enough while that node (if asked) has not answered yet. ``counted``: a node that already
        said yes (counted, not asked, not in the results).
        """
        me = self.placement.node_id
        members: dict[bytes, list[int]] = {}
        for i, group in enumerate(sets):
            for node in dict.fromkeys(group):
                if only is None or node in only:
                    members.setdefault(node, []).append(i)
        sizes = [sum(1 for n in set(g) if n in members) for g in sets]
        needed = [majority(g) for g in sets]
        yes = [0] * len(sets)
        no = [0] * len(sets)
        if counted is not None:
            for i in members.pop(counted, []):
                yes[i] += 1
        results: list[R] = []
        errors: list[str] = []
        refused: Ballot | None = None

        item = _encode_item(path, body) if len(members) > 1 else None
        running: dict[asyncio.Future[Any], bytes] = {self._send(n, path, body, deadline, item): n for n in members}
        # Held phases (``only``) wait for every holder: one silent for ``holder_patience`` ends
        # them (``_Unreachable``).
        patience = None if only is None else time.monotonic() + self.holder_patience
        finished = False
        try:
            while True:
                if all(y >= n for y, n in zip(yes, needed, strict=True)) and (
                    also is None or also not in running.values()
                ):
                    finished = True
                    return results
                short = [i for i, size in enumerate(sizes) if size - no[i] < needed[i]]
                if short:
                    finished = True
                    if refused is not None:
                        raise _Lost(refused)
                    if only is not None:
                        raise _Unreachable()  # the caller falls back to asking every node
                    raise QuorumError(max(needed), sum(yes), len(members), errors, sets=len(sets), operation=operation)
                wait = None if patience is None else max(0.0, patience - time.monotonic())
                done, _ = await asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    silent = [n for n in running.values() if n != me and self._silent(n)]
                    if not silent:  # only slow ones (or this node's own acceptor): wait on
                        patience = time.monotonic() + self.holder_patience
                        continue
                    finished = True
                    self._impatient(silent[0])
                    raise _Unreachable()
                for task in done:
                    node = running.pop(task)
                    ok = False
                    if task.cancelled():
                        errors.append(f"{node[:8].hex()}: cancelled")
                    elif task.exception() is not None:
                        err = task.exception()
                        assert err is not None
                        _raise_if_too_large(path, err)
                        errors.append(describe_failure(node, err))
                    else:
                        try:
                            ok, seen, value = verdict(unwrap_answer(task.result()) if node != me else task.result())
                        except Exception as e:  # noqa: BLE001 - a malformed answer counts as a failure
                            _raise_if_too_large(path, e)
                            errors.append(describe_failure(node, e))
                        else:
                            if ok:
                                results.append(value)
                                if answered is not None:
                                    answered.append(node)
                            elif refused is None or seen > refused:
                                refused = seen
                    for i in members[node]:
                        if ok:
                            yes[i] += 1
                        else:
                            no[i] += 1
        finally:
            for task in running:
                if keep and finished:
                    _keep(task)
                else:
                    task.cancel()
                    _keep(task)


def _encode_item(path: str, body: Any) -> bytes:
    """A message in a batch: consensus messages are made of lists only (no map to sort)."""
    return codec.encode_lists([path, body])


def _read_verdict(read_keys: tuple[bytes, ...]) -> Callable[[Any], tuple[bool, Ballot, Promise]]:
    def verdict(raw: Any) -> tuple[bool, Ballot, Promise]:
        p = Promise.from_wire(raw)
        if p.ok:
            _check_states(p.states, read_keys)
        return p.ok, p.promised, p

    return verdict


def _check_states(states: tuple[tuple[bytes, bytes | None], ...], read_keys: tuple[bytes, ...]) -> None:
    """An answer carrying states must carry those of exactly the keys asked, in order."""
    if tuple(k for k, _ in states) != read_keys:
        raise ServiceUnavailable("acceptor answered the state of other keys than asked")


def _accept_verdict(raw: Any) -> tuple[bool, Ballot, None]:
    a = Accepted.from_wire(raw)
    return a.ok, a.promised, None


def _fewest(answered: list[bytes], sets: list[list[bytes]], me: bytes) -> frozenset[bytes] | None:
    """The fewest of ``answered`` that are a majority of every set (``None``: they are not):
    this node first (its calls are in-process), then in the order they answered."""
    needed = [majority(g) for g in sets]
    chosen: list[bytes] = []
    for node in sorted(answered, key=lambda n: n != me):  # stable: answer order otherwise
        short = [i for i, g in enumerate(sets) if sum(1 for n in chosen if n in g) < needed[i]]
        if not short:
            break
        if any(node in sets[i] for i in short):
            chosen.append(node)
    if any(sum(1 for n in chosen if n in g) < needed[i] for i, g in enumerate(sets)):
        return None
    return frozenset(chosen)


def _in_flight(promises: list[Promise]) -> Proposal | None:
    """The proposal a new round must complete first, if any.

    The highest accepted proposal among the promises, unless a commit at or above its ballot was
    seen (then it is settled) or it is a no-op (completing it would change nothing: our own
    proposal, at a higher ballot, supersedes it just as well).
    """
    committed = max(p.committed for p in promises)
    best: Proposal | None = None
    for p in promises:
        acc = p.accepted
        if acc is not None and (best is None or acc.ballot > best.ballot):
            best = acc
    if best is None or best.ballot <= committed or best.update is None:
        return None
    return best


def _most_recent_commit(promises: list[Promise]) -> Proposal | None:
    commits = [p.commit for p in promises if p.commit is not None]
    return max(commits, key=lambda c: c.ballot) if commits else None


def _merge_states(
    machine: StateMachine, read_keys: tuple[bytes, ...], states: list[tuple[tuple[bytes, bytes | None], ...]]
) -> dict[bytes, bytes | None]:
    per_replica = [dict(s) for s in states]
    return {rk: machine.merge(rk, [states.get(rk) for states in per_replica]) for rk in read_keys}
