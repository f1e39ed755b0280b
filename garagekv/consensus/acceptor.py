"""The acceptor: answers Prepare, Propose and Commit for the keys this node stores.

Each answer is computed inside one job of the group-commit writer, which reads the key's state,
applies the transition, stores the new state (and, for a Prepare, reads the promised-upon
states; for a Commit, applies the update) and returns only once that transaction is fsynced. The
single writer thread serialises all of it per node, so two messages for one key never race.

Tree ``consensus:state``: key = the consensus key (its first 32 bytes are the partition's ring
hash), value = ``AcceptorState.encode()`` (docs/consensus.md, "Storage").
"""

from __future__ import annotations

import logging
from typing import Any

from garagekv.consensus.machine import StateMachine
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
from garagekv.consensus.metrics import ConsensusMetrics
from garagekv.consensus.state import AcceptorState
from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, ReadTxn, WriteTxn
from garagekv.rpc.batching import HeldAnswers, answer_each
from garagekv.rpc.endpoint import EndpointRegistry, endpoint_path
from garagekv.rpc.messages import malformed

log = logging.getLogger(__name__)

#: Messages in one batch call, at most (a proposer sends what one loop turn queued).
MAX_BATCH = 4096

TREE = "consensus:state"
PREPARE = endpoint_path("consensus/acceptor", "Prepare")
PROPOSE = endpoint_path("consensus/acceptor", "Propose")
COMMIT = endpoint_path("consensus/acceptor", "Commit")
READ = endpoint_path("consensus/acceptor", "Read")
CHECKED_PROPOSE = endpoint_path("consensus/acceptor", "CheckedPropose")
ACCEPT_COMMIT = endpoint_path("consensus/acceptor", "AcceptCommit")
#: Several of the messages above in one call: ``[msgpack([path, body]), ...]`` answered by
#: ``[[true, answer] | [false, {"code", "message"}], ...]`` in the same order (a proposer sends
#: what its rounds queued for this node during one event-loop turn, docs/consensus.md §5).
BATCH = endpoint_path("consensus/acceptor", "Batch")
#: Fetches an answer of a batch that was too big to travel with the others (``HeldAnswers``).
BATCH_HELD = endpoint_path("consensus/acceptor", "BatchHeld")


class Acceptor:
    def __init__(
        self,
        db: Database,
        writer: GroupCommitWriter,
        machine: StateMachine,
        metrics: ConsensusMetrics | None = None,
    ) -> None:
        self.db = db
        self.writer = writer
        self.machine = machine
        self.metrics = metrics if metrics is not None else ConsensusMetrics()
        self.tree = db.tree(TREE)
        self.held = HeldAnswers()

    def register(self, registry: EndpointRegistry) -> None:
        registry.register(PREPARE, self._handle_prepare)
        registry.register(PROPOSE, self._handle_propose)
        registry.register(COMMIT, self._handle_commit)
        registry.register(READ, self._handle_read)
        registry.register(CHECKED_PROPOSE, self._handle_checked_propose)
        registry.register(ACCEPT_COMMIT, self._handle_accept_commit)
        registry.register(BATCH, self._handle_batch)
        registry.register(BATCH_HELD, self._handle_batch_held)
        self._handlers = {
            PREPARE: self._handle_prepare,
            PROPOSE: self._handle_propose,
            COMMIT: self._handle_commit,
            READ: self._handle_read,
            CHECKED_PROPOSE: self._handle_checked_propose,
            ACCEPT_COMMIT: self._handle_accept_commit,
        }

    # ---- state -----------------------------------------------------------------------------------

    def load(self, key: bytes) -> AcceptorState:
        """The stored state of ``key`` (a short read transaction; for tests and tools)."""
        with self.db.read() as txn:
            raw = txn.get(key, db=self.tree)
            return AcceptorState.decode(None if raw is None else bytes(raw))

    def _state_in(self, tx: WriteTxn, key: bytes) -> AcceptorState:
        raw = tx.get(self.tree, key)
        return AcceptorState.decode(None if raw is None else bytes(raw))

    def _store(self, tx: WriteTxn, key: bytes, old: AcceptorState, new: AcceptorState) -> None:
        if new != old:
            tx.put(self.tree, key, new.encode())

    def _commit_in(
        self, tx: WriteTxn, msg: Commit, old: AcceptorState, state: AcceptorState
    ) -> tuple[AcceptorState, bool]:
        """Record the chosen ``msg.proposal`` on top of ``state`` (``old``: what is stored), renew
        ``msg.next_ballot`` if given, store the result and apply the update, in ``tx``. Returns
        the new state and whether it renewed."""
        new = state.on_commit(msg.proposal)
        renewed = False
        if msg.next_ballot is not None:
            new, renewed = new.on_renew(msg.proposal.ballot, msg.next_ballot)
        self._store(tx, msg.key, old, new)
        if msg.proposal.update is not None:
            self.machine.apply_in(tx, msg.key, msg.proposal.update)
        return new, renewed

    # ---- the three messages ----------------------------------------------------------------------

    async def prepare(self, msg: Prepare) -> Promise:
        def job(tx: WriteTxn) -> Promise:
            old = self._state_in(tx, msg.key)
            new, ok = old.on_prepare(msg.ballot)
            if not ok:
                return Promise(False, old.promised, None, None, ())
            self._store(tx, msg.key, old, new)
            values = self.machine.read_in(tx, msg.key, msg.read_keys)
            if len(values) != len(msg.read_keys):
                raise ValueError("state machine returned the wrong number of states")
            states = tuple(zip(msg.read_keys, values, strict=True))
            return Promise(True, new.promised, new.in_flight(), new.commit, states)

        promise = await self.writer.submit(job)
        self.metrics.count("promises" if promise.ok else "refusals")
        return promise

    async def propose(self, msg: Propose) -> Accepted:
        def job(tx: WriteTxn) -> Accepted:
            old = self._state_in(tx, msg.key)
            new, ok = old.on_propose(msg.proposal)
            self._store(tx, msg.key, old, new)
            return Accepted(ok, new.promised)

        answer = await self.writer.submit(job)
        self.metrics.count("accepts" if answer.ok else "refusals")
        return answer

    async def checked_propose(self, msg: CheckedPropose) -> CheckedAccepted:
        """Accept a held ballot's proposal only if this node's states are the ones it was decided
        on (docs/consensus.md §3c). Otherwise nothing changes: a refusal if the ballot is no
        longer held here, the local states if they differ."""

        def job(tx: WriteTxn) -> CheckedAccepted:
            old = self._state_in(tx, msg.key)
            if not old.holds(msg.proposal.ballot):
                return CheckedAccepted(False, old.promised)
            values = self.machine.read_in(tx, msg.key, msg.read_keys)
            if len(values) != len(msg.read_keys):
                raise ValueError("state machine returned the wrong number of states")
            if tuple(state_digest(v) for v in values) != msg.digests:
                return CheckedAccepted(False, old.promised, tuple(zip(msg.read_keys, values, strict=True)))
            new, ok = old.on_propose(msg.proposal)
            assert ok  # the ballot is the promise
            self._store(tx, msg.key, old, new)
            return CheckedAccepted(True, new.promised)

        answer = await self.writer.submit(job)
        if answer.ok or answer.states is None:
            self.metrics.count("accepts" if answer.ok else "refusals")
        return answer

    async def accept_and_commit(self, msg: Commit) -> Accepted:
        """The proposer's own acceptor in a §3c round, once the other holder accepted: with this
        acceptance the proposal is chosen (the two are a majority), so accept, commit and renew
        the next ballot in one transaction; or, if a higher ballot was promised here since,
        refuse and change nothing."""

        def job(tx: WriteTxn) -> Accepted:
            old = self._state_in(tx, msg.key)
            accepted, ok = old.on_propose(msg.proposal)
            if not ok:
                return Accepted(False, old.promised)
            new, _ = self._commit_in(tx, msg, old, accepted)
            return Accepted(True, new.promised)

        answer = await self.writer.submit(job)
        if answer.ok:
            self.metrics.count("accepts")
            self.metrics.count("commits")
        else:
            self.metrics.count("refusals")
        return answer

    async def commit(self, msg: Commit) -> Accepted | None:
        def job(tx: WriteTxn) -> Accepted | None:
            old = self._state_in(tx, msg.key)
            new, renewed = self._commit_in(tx, msg, old, old)
            return None if msg.next_ballot is None else Accepted(renewed, new.promised)

        renewal = await self.writer.submit(job)
        self.metrics.count("commits")
        if renewal is not None and renewal.ok:
            self.metrics.count("promises")
        return renewal

    async def read(self, msg: Prepare) -> Promise:
        """The states of the read keys if ``msg.ballot`` is still this node's promise and nothing
        was accepted since (a holder's round, docs/consensus.md §3b); a refusal otherwise.

        Reads one snapshot on the event loop: it writes nothing, so it needs neither the writer
        thread nor an fsync; the promise it checks and the states it reads are of one instant.
        """
        with self.db.read() as txn:
            view = ReadTxn(txn)
            raw = view.get(self.tree, msg.key)
            state = AcceptorState.decode(None if raw is None else bytes(raw))
            if not state.holds(msg.ballot):
                return Promise(False, state.promised, None, None, ())
            values = self.machine.read_in(view, msg.key, msg.read_keys)
        if len(values) != len(msg.read_keys):
            raise ValueError("state machine returned the wrong number of states")
        return Promise(True, state.promised, None, None, tuple(zip(msg.read_keys, values, strict=True)))

    # ---- RPC handlers: validate once, then work on typed messages ---------------------------------

    async def _handle_prepare(self, from_node: bytes, body: Any) -> Any:
        return (await self.prepare(Prepare.from_wire(body))).to_wire()

    async def _handle_propose(self, from_node: bytes, body: Any) -> Any:
        return (await self.propose(Propose.from_wire(body))).to_wire()

    async def _handle_commit(self, from_node: bytes, body: Any) -> Any:
        renewal = await self.commit(Commit.from_wire(body))
        return None if renewal is None else renewal.to_wire()

    async def _handle_read(self, from_node: bytes, body: Any) -> Any:
        return (await self.read(Prepare.from_wire(body))).to_wire()

    async def _handle_checked_propose(self, from_node: bytes, body: Any) -> Any:
        return (await self.checked_propose(CheckedPropose.from_wire(body))).to_wire()

    async def _handle_accept_commit(self, from_node: bytes, body: Any) -> Any:
        return (await self.accept_and_commit(Commit.from_wire(body))).to_wire()

    async def _handle_batch(self, from_node: bytes, body: Any) -> Any:
        async def one(msg: Any) -> Any:
            if not isinstance(msg, list) or len(msg) != 2 or msg[0] not in self._handlers:
                raise malformed("consensus batch", "a message is [consensus endpoint, body]")
            return await self._handlers[msg[0]](from_node, msg[1])

        return await answer_each("consensus batch", body, one, MAX_BATCH, self.held)

    async def _handle_batch_held(self, from_node: bytes, body: Any) -> Any:
        return self.held.take(body)
