"""The consensus RPC messages: one small class per message, checked once when received.

Every message travels as a msgpack array (``to_wire``) and is rebuilt with ``from_wire``, which
checks arity and types and raises ``MalformedMessage`` (a 400-class protocol error carried back
to the sender by its code) instead of letting a bad field surface later as an internal error.
Formats are in docs/consensus.md, "Messages".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from garagekv.consensus.ballot import ZERO_BALLOT, Ballot
from garagekv.rpc.messages import MalformedMessage, malformed

#: A consensus key starts with the 32-byte ring hash of its partition; LMDB caps keys at 511 B.
MIN_KEY_LEN = 32
MAX_KEY_LEN = 511
#: Sort keys one operation may read (a transaction reads at most a few hundred).
MAX_READ_KEYS = 1024


def _fail(kind: str, why: str) -> MalformedMessage:
    return malformed(f"consensus {kind}", why)


def _fields(kind: str, w: Any, n: int) -> Sequence[Any]:
    if not isinstance(w, list | tuple) or len(w) != n:
        raise _fail(kind, f"expected an array of {n} fields")
    return w


def _ballot(kind: str, w: Any) -> Ballot:
    try:
        return Ballot.from_wire(w)
    except ValueError as e:
        raise _fail(kind, str(e)) from None


def _key(kind: str, w: Any) -> bytes:
    if not isinstance(w, bytes) or not MIN_KEY_LEN <= len(w) <= MAX_KEY_LEN:
        raise _fail(kind, f"key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes")
    return w


def _opt_bytes(kind: str, what: str, w: Any) -> bytes | None:
    if w is not None and not isinstance(w, bytes):
        raise _fail(kind, f"{what} must be bytes or nil")
    return w


def _read_keys(kind: str, w: Any) -> tuple[bytes, ...]:
    if not isinstance(w, list | tuple) or len(w) > MAX_READ_KEYS:
        raise _fail(kind, f"read keys must be an array of at most {MAX_READ_KEYS}")
    if not all(isinstance(k, bytes) and len(k) <= MAX_KEY_LEN for k in w):
        raise _fail(kind, "every read key must be bytes")
    return tuple(w)


def _states(kind: str, w: Any) -> tuple[tuple[bytes, bytes | None], ...]:
    if not isinstance(w, list | tuple) or len(w) > MAX_READ_KEYS:
        raise _fail(kind, "states must be an array")
    parsed = []
    for s in w:
        k, v = _fields(kind, s, 2)
        if not isinstance(k, bytes):
            raise _fail(kind, "a state's key must be bytes")
        parsed.append((k, _opt_bytes(kind, "a state", v)))
    return tuple(parsed)


def state_digest(state: bytes | None) -> bytes:
    """What a checked proposal compares instead of the state itself (an item may be large)."""
    return b"" if state is None else hashlib.blake2b(state, digest_size=16).digest()


def _bool(kind: str, what: str, w: Any) -> bool:
    if not isinstance(w, bool):
        raise _fail(kind, f"{what} must be a boolean")
    return w


@dataclass(frozen=True)
class Proposal:
    """A value proposed under a ballot. ``update`` is the state machine's opaque bytes; ``None``
    is a no-op (a round that decided to write nothing still gets it accepted, which discards any
    older proposal in flight)."""

    ballot: Ballot
    update: bytes | None

    def to_wire(self) -> list[Any]:
        return [self.ballot.to_wire(), self.update]

    @classmethod
    def from_wire(cls, w: Any, kind: str = "proposal") -> Proposal:
        b, update = _fields(kind, w, 2)
        return cls(_ballot(kind, b), _opt_bytes(kind, "update", update))


@dataclass(frozen=True)
class Prepare:
    """Phase 1a: promise ``ballot`` for ``key`` and send the state of ``read_keys``."""

    key: bytes
    ballot: Ballot
    read_keys: tuple[bytes, ...]

    def to_wire(self) -> list[Any]:
        return [self.key, self.ballot.to_wire(), list(self.read_keys)]

    @classmethod
    def from_wire(cls, w: Any) -> Prepare:
        key, b, rks = _fields("Prepare", w, 3)
        return cls(_key("Prepare", key), _ballot("Prepare", b), _read_keys("Prepare", rks))


@dataclass(frozen=True)
class Promise:
    """Phase 1b. ``ok``: ``promised`` is the ballot of the Prepare, now promised; otherwise it is
    the higher ballot already promised (a refusal: the other fields are empty). ``accepted`` is
    the accepted proposal not yet known committed; ``commit`` the most recent committed proposal
    (``None``: never any); ``states`` one entry per read key: the local state bytes, ``None`` if
    absent."""

    ok: bool
    promised: Ballot
    accepted: Proposal | None
    commit: Proposal | None
    states: tuple[tuple[bytes, bytes | None], ...]

    @property
    def committed(self) -> Ballot:
        return ZERO_BALLOT if self.commit is None else self.commit.ballot

    def to_wire(self) -> list[Any]:
        acc = None if self.accepted is None else self.accepted.to_wire()
        com = None if self.commit is None else self.commit.to_wire()
        return [self.ok, self.promised.to_wire(), acc, com, [list(s) for s in self.states]]

    @classmethod
    def from_wire(cls, w: Any) -> Promise:
        ok, promised, acc, com, states = _fields("Promise", w, 5)
        return cls(
            _bool("Promise", "ok", ok),
            _ballot("Promise", promised),
            None if acc is None else Proposal.from_wire(acc, "Promise"),
            None if com is None else Proposal.from_wire(com, "Promise"),
            _states("Promise", states),
        )


@dataclass(frozen=True)
class Propose:
    """Phase 2a: accept ``proposal`` for ``key``."""

    key: bytes
    proposal: Proposal

    def to_wire(self) -> list[Any]:
        return [self.key, self.proposal.to_wire()]

    @classmethod
    def from_wire(cls, w: Any) -> Propose:
        key, p = _fields("Propose", w, 2)
        return cls(_key("Propose", key), Proposal.from_wire(p, "Propose"))


@dataclass(frozen=True)
class CheckedPropose:
    """Phase 2a of a held ballot's round decided on the proposer's own state alone
    (docs/consensus.md §3c): accept ``proposal`` only if its ballot is still held here and the
    local state of each read key has the digest (``state_digest``) the decision was made on."""

    key: bytes
    proposal: Proposal
    read_keys: tuple[bytes, ...]
    digests: tuple[bytes, ...]

    def to_wire(self) -> list[Any]:
        return [self.key, self.proposal.to_wire(), list(self.read_keys), list(self.digests)]

    @classmethod
    def from_wire(cls, w: Any) -> CheckedPropose:
        key, p, rks, digests = _fields("CheckedPropose", w, 4)
        read_keys = _read_keys("CheckedPropose", rks)
        if not isinstance(digests, list | tuple) or len(digests) != len(read_keys):
            raise _fail("CheckedPropose", "one digest per read key")
        if not all(isinstance(d, bytes) and len(d) <= 64 for d in digests):
            raise _fail("CheckedPropose", "every digest must be bytes")
        return cls(_key("CheckedPropose", key), Proposal.from_wire(p, "CheckedPropose"), read_keys, tuple(digests))


@dataclass(frozen=True)
class CheckedAccepted:
    """Answer to ``CheckedPropose``: ``ok`` (accepted), or nothing accepted and either ``states``
    (the ballot is still held but the local states differ: here they are) or, without states, a
    refusal naming the ballot promised instead."""

    ok: bool
    promised: Ballot
    states: tuple[tuple[bytes, bytes | None], ...] | None = None

    def to_wire(self) -> list[Any]:
        states = None if self.states is None else [list(s) for s in self.states]
        return [self.ok, self.promised.to_wire(), states]

    @classmethod
    def from_wire(cls, w: Any) -> CheckedAccepted:
        ok, promised, states = _fields("CheckedAccepted", w, 3)
        return cls(
            _bool("CheckedAccepted", "ok", ok),
            _ballot("CheckedAccepted", promised),
            None if states is None else _states("CheckedAccepted", states),
        )


@dataclass(frozen=True)
class Accepted:
    """Phase 2b: ``ok``, or a refusal naming the higher ballot promised."""

    ok: bool
    promised: Ballot

    def to_wire(self) -> list[Any]:
        return [self.ok, self.promised.to_wire()]

    @classmethod
    def from_wire(cls, w: Any) -> Accepted:
        ok, promised = _fields("Accepted", w, 2)
        return cls(_bool("Accepted", "ok", ok), _ballot("Accepted", promised))


@dataclass(frozen=True)
class Commit:
    """Phase 3: ``proposal`` was chosen for ``key``: apply it and record its ballot. With
    ``next_ballot``, also promise that ballot for the proposer's next operation on the key, if
    nothing else happened on it since (docs/consensus.md §3b); the answer is then an
    ``Accepted`` saying whether it did."""

    key: bytes
    proposal: Proposal
    next_ballot: Ballot | None = None

    def to_wire(self) -> list[Any]:
        w = [self.key, self.proposal.to_wire()]
        if self.next_ballot is not None:
            w.append(self.next_ballot.to_wire())
        return w

    @classmethod
    def from_wire(cls, w: Any) -> Commit:
        if isinstance(w, list | tuple) and len(w) == 3:
            key, p, nb = w
            return cls(_key("Commit", key), Proposal.from_wire(p, "Commit"), _ballot("Commit", nb))
        key, p = _fields("Commit", w, 2)
        return cls(_key("Commit", key), Proposal.from_wire(p, "Commit"))
