"""Partition transactions: compares, then one branch of puts, deletes and reads, as one decision.

A transaction is the general form of every operation the consensus path runs for K2V
(docs/k2v-api.md §5b): a conditional write is a transaction with one
compare, a put or delete in ``success`` and a read in ``failure`` (the 412's current token); a
linearizable read is a transaction with one read. ``evaluate`` is pure: it takes the merged
state of the round and returns the items to commit and the results, so the round can run it
again on every attempt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from garagekv.model.k2v.causality import CLOCK_HORIZON_MS, CausalContext
from garagekv.model.k2v.item import MAX_TTL_SEC, ClockExhausted, K2VItem, Value
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.store import check_context
from garagekv.rpc.messages import malformed
from garagekv.table.data import check_size
from garagekv.util.errors import BadRequest, EntityTooLarge, GarageKVError, ServiceUnavailable
from garagekv.util.time import now_ms

# Compare targets (E2's names).
TOKEN = "token"  # the item's causal context is exactly ``token``
EXISTS = "exists"  # the item has a live value (``exists``) / has none (``not exists``)
VALUE = "value"  # the item has exactly one live value, equal to ``value``
MD5 = "md5"  # the same, by the value's MD5 (lower-case hex)
TARGETS = (TOKEN, EXISTS, VALUE, MD5)
#: Not in the HTTP API: the MD5 of the item's latest live value (``latest_value``), the one a
#: Hulykvs client sees in an item with concurrent values (docs/hulykvs.md).
LATEST_MD5 = "latest-md5"
WIRE_TARGETS = (*TARGETS, LATEST_MD5)

# Operations of a branch.
PUT = "put"
DELETE = "delete"
READ = "read"
OPS = (PUT, DELETE, READ)

MAX_COMPARES = 64
MAX_OPS = 128
MAX_TTL_SECONDS = MAX_TTL_SEC
#: The encoded items one consensus round may commit: Propose and Commit carry them in one RPC
#: frame (16 MiB + 64 KiB), with room for the rest of the message.
MAX_UPDATE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Compare:
    sort_key: str
    target: str
    token: CausalContext | None = None
    exists: bool = False
    value: bytes = b""
    md5: str = ""

    def holds(self, item: K2VItem | None) -> bool:
        if self.target == TOKEN:
            assert self.token is not None
            return item is not None and dict(item.causal_context().items()) == dict(self.token.items())
        if self.target == LATEST_MD5:
            latest = latest_value(item)
            return latest is not None and hashlib.md5(latest, usedforsecurity=False).hexdigest() == self.md5
        live = [] if item is None else [v for v in item.values() if v is not None]
        if self.target == EXISTS:
            return bool(live) == self.exists
        if len(live) != 1:
            return False
        if self.target == VALUE:
            return live[0] == self.value
        return hashlib.md5(live[0], usedforsecurity=False).hexdigest() == self.md5


def latest_value(item: K2VItem | None) -> bytes | None:
    """The live value with the highest DVVS timestamp (ties: the highest node number); a
    tombstone among the values does not hide a live one. ``None``: no live value."""
    if item is None:
        return None
    best: tuple[int, int] | None = None
    value = None
    for node, entry in item.items.items():
        for ts, v in entry.values:
            if v is not None and (best is None or (ts, node) > best):
                best, value = (ts, node), v
    return value


@dataclass(frozen=True)
class TxnOp:
    op: str
    sort_key: str
    value: bytes | None = None  # a put's value
    ttl: int | None = None  # a put's time to live in seconds (docs/k2v-api.md §5c)

    @property
    def writes(self) -> bool:
        return self.op != READ


@dataclass(frozen=True)
class Txn:
    compare: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()

    def __post_init__(self) -> None:
        check_shape(self)

    def read_keys(self) -> list[str]:
        """Every sort key the transaction compares or touches, once each, in first-use order."""
        seen: dict[str, None] = {}
        for c in self.compare:
            seen.setdefault(c.sort_key)
        for o in (*self.success, *self.failure):
            seen.setdefault(o.sort_key)
        return list(seen)

    def branch(self, succeeded: bool) -> tuple[TxnOp, ...]:
        return self.success if succeeded else self.failure


@dataclass(frozen=True)
class OpResult:
    """One op's result: the item after it (``None``: never written) and, for a read, its values."""

    op: str
    sort_key: str
    item: K2VItem | None


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    results: list[OpResult] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluation:
    succeeded: bool
    written: list[K2VItem]
    results: list[OpResult]


def valid_ttl(ttl: Any) -> bool:
    return isinstance(ttl, int) and not isinstance(ttl, bool) and 1 <= ttl <= MAX_TTL_SECONDS


def check_shape(txn: Txn) -> None:
    """The limits every transaction obeys, whoever built it (an API body or a peer's message)."""
    if len(txn.compare) > MAX_COMPARES:
        raise BadRequest(f"`compare` holds {len(txn.compare)} entries, over the limit of {MAX_COMPARES}")
    for name in ("success", "failure"):
        ops: tuple[TxnOp, ...] = getattr(txn, name)
        if len(ops) > MAX_OPS:
            raise BadRequest(f"`{name}` holds {len(ops)} operations, over the limit of {MAX_OPS}")
        written: set[str] = set()
        for i, o in enumerate(ops):
            if o.writes:
                if o.sort_key in written:
                    raise BadRequest(f"{name}[{i}]: sort key {o.sort_key!r} is written twice in one branch")
                written.add(o.sort_key)


def evaluate(
    txn: Txn,
    state: Mapping[str, K2VItem | None],
    bucket_id: bytes,
    partition_key: str,
    node: int,
    node_ts: int,
    max_item_bytes: int,
    sizes: Mapping[str, int | None],
    now: int | None = None,
) -> Evaluation:
    """Run the compares on ``state`` (the round's merged items), then the branch they select.

    Every write is a dot ``(node, node_ts + 1)`` with the item's current causal context, so it
    supersedes exactly what the compares saw; a read sees the branch's earlier writes.
    ``sizes`` are the stored sizes of the items before, for the item size limit. ``now`` (unix
    ms, the clock by default) is when the transaction sees the items: values expired by then
    are tombstones to its compares and reads, and a put's ``ttl`` counts from it.
    """
    now = now_ms() if now is None else now
    work: dict[str, K2VItem | None] = {sk: None if i is None else i.at(now) for sk, i in state.items()}
    succeeded = all(c.holds(work.get(c.sort_key)) for c in txn.compare)
    written: dict[str, K2VItem] = {}
    results: list[OpResult] = []
    for o in txn.branch(succeeded):
        current = work.get(o.sort_key)
        if o.op == READ:
            results.append(OpResult(READ, o.sort_key, current))
            continue
        new = current.copy() if current is not None else K2VItem.new(bucket_id, partition_key, o.sort_key)
        ctx = None if current is None else current.causal_context()
        value: Value = o.value if o.op == PUT else None
        expires = now + o.ttl * 1000 if o.op == PUT and o.ttl is not None else None
        before = len(new.items)
        try:
            new.update(node, ctx, value, node_ts, node_ts + CLOCK_HORIZON_MS, expires)
        except ClockExhausted as e:  # only data stored before clocks were bounded
            raise ServiceUnavailable(str(e)) from None
        check_context(InsertedItem(partition_key, o.sort_key, ctx, value), before, len(new.items))
        check_size(len(new.encode()), sizes.get(o.sort_key), max_item_bytes)
        work[o.sort_key] = new
        written[o.sort_key] = new
        results.append(OpResult(o.op, o.sort_key, new))
    return Evaluation(succeeded, list(written.values()), results)


def has_dot(item: K2VItem | None, node: int, ts: int) -> bool:
    """The dot ``(node, ts)`` is among ``item``'s values: a timestamp reserved for one operation
    marks that operation's writes, which no other write of this node carries."""
    if item is None:
        return False
    entry = item.items.get(node)
    return entry is not None and any(t == ts for t, _ in entry.values)


def dot_discarded(item: K2VItem | None, node: int, ts: int) -> bool:
    """``item``'s context covers the dot ``(node, ts)`` without holding it: the write with that
    dot may have been applied and superseded since. (A client-supplied context may also claim a
    time of this node it never issued, so this is "maybe", never proof.) When a dot is neither
    held nor discarded, no write carrying it was ever applied."""
    if item is None:
        return False
    entry = item.items.get(node)
    return entry is not None and entry.t_discard >= ts


# ---- several transactions in one round ------------------------------------------------------------


class Deferred(Exception):
    """The operation did not fit in this round's update: it runs in a later round."""


@dataclass(frozen=True)
class Attempt:
    """What an attempt proposed: each operation's outcome, the branch whose writes it proposed
    for each (``None``: none), and the dot of each written item's final version."""

    outcomes: tuple[BatchOutcome, ...]
    branches: tuple[bool | None, ...]
    dots: Mapping[str, int]


BatchOutcome = TxnResult | GarageKVError | Deferred


def decide_batch(
    txns: Sequence[Txn],
    state: Mapping[str, K2VItem | None],
    sizes: Mapping[str, int | None],
    bucket_id: bytes,
    partition_key: str,
    node: int,
    node_ts: int,
    max_item_bytes: int,
    previous: Sequence[Attempt] = (),
    now: int | None = None,
) -> tuple[list[BatchOutcome], list[K2VItem], Attempt | None]:
    """Decide the transactions of one round, in order, each seeing the writes of those before it.

    Returns each one's outcome, the items to commit (final versions) and what this attempt
    proposes (``None``: nothing to commit). ``previous`` are what the earlier attempts of the
    same round proposed before losing their ballots (each with its own dots), of which at most
    one was chosen. If the dots of one are held, it was chosen (and completed by another
    proposer): its outcomes stand, as of the state it was decided on, which is where it took
    effect. If none is held or covered, none was ever applied, and everything is decided afresh
    (the caller then proposes with new dots). Otherwise one may have applied and been superseded
    since: every operation whose writes they proposed answers 503 (outcome unknown), as deciding
    it again could apply it a second time; the others (reads, false compares) have no effect and
    are decided afresh.
    """
    for att in previous:
        if any(has_dot(state.get(sk), node, dot) for sk, dot in att.dots.items()):
            return list(att.outcomes), [], None
    unknown = {
        i
        for att in previous
        if any(dot_discarded(state.get(sk), node, dot) for sk, dot in att.dots.items())
        for i, branch in enumerate(att.branches)
        if branch is not None
    }
    now = now_ms() if now is None else now  # one time for every transaction of the round
    work: dict[str, K2VItem | None] = dict(state)
    written: dict[str, K2VItem] = {}
    outcomes: list[BatchOutcome] = []
    branches: list[bool | None] = []
    update_bytes = 0
    for i, txn in enumerate(txns):
        branches.append(None)
        if i in unknown:
            outcomes.append(
                ServiceUnavailable(
                    "the transaction lost its round to a concurrent one after proposing and its items "
                    "changed since: it may or may not have been applied (read the items to know)"
                )
            )
            continue
        try:
            ev = evaluate(txn, work, bucket_id, partition_key, node, node_ts, max_item_bytes, sizes, now)
        except GarageKVError as e:
            outcomes.append(e)
            continue
        if ev.written:
            grown = {i.sort_key: len(i.encode()) for i in ev.written}
            size = update_bytes + sum(grown.values()) - sum(len(written[k].encode()) for k in grown if k in written)
            if size > MAX_UPDATE_BYTES:
                outcomes.append(
                    Deferred()
                    if written
                    else EntityTooLarge(
                        f"the transaction writes {size} bytes of items, over the limit of one commit "
                        f"({MAX_UPDATE_BYTES} bytes)"
                    )
                )
                continue
            update_bytes = size
            for item in ev.written:
                work[item.sort_key] = item
                written[item.sort_key] = item
            branches[i] = ev.succeeded
        outcomes.append(TxnResult(ev.succeeded, ev.results))
    if not written:
        return outcomes, [], None
    dots = {sk: item.items[node].values[-1][0] for sk, item in written.items()}
    return outcomes, list(written.values()), Attempt(tuple(outcomes), tuple(branches), dots)


# ---- the wire form, for forwarding a transaction to a storage node of its partition --------------


def to_wire(txn: Txn) -> list[Any]:
    compares = [
        [c.sort_key, c.target, None if c.token is None else c.token.serialize(), c.exists, c.value, c.md5]
        for c in txn.compare
    ]

    def ops(branch: Sequence[TxnOp]) -> list[Any]:
        return [[o.op, o.sort_key, o.value, o.ttl] for o in branch]

    return [compares, ops(txn.success), ops(txn.failure)]


def from_wire(what: str, raw: Any) -> Txn:
    """A peer's transaction, checked field by field (a bad one is a ``MalformedMessage``)."""
    if not isinstance(raw, list) or len(raw) != 3 or not all(isinstance(x, list) for x in raw):
        raise malformed(what, "a transaction is [compares, success, failure]")
    compares = []
    for c in raw[0]:
        if not isinstance(c, list) or len(c) != 6:
            raise malformed(what, "a compare has 6 fields")
        sk, target, token, exists, value, md5 = c
        if not isinstance(sk, str) or target not in WIRE_TARGETS or not isinstance(exists, bool):
            raise malformed(what, "bad compare")
        if not isinstance(value, bytes) or not isinstance(md5, str):
            raise malformed(what, "bad compare operand")
        if target == TOKEN:
            if not isinstance(token, str):
                raise malformed(what, "a token compare needs a token")
            ctx: CausalContext | None = CausalContext.parse_client(token)
        else:
            ctx = None
        compares.append(Compare(sk, target, ctx, exists, value, md5))

    def ops(branch: list[Any]) -> tuple[TxnOp, ...]:
        out = []
        for o in branch:
            if not isinstance(o, list) or len(o) != 4:
                raise malformed(what, "an operation has 4 fields")
            op, sk, value, ttl = o
            if op not in OPS or not isinstance(sk, str):
                raise malformed(what, "bad operation")
            if op == PUT and not isinstance(value, bytes):
                raise malformed(what, "a put needs a value")
            if ttl is not None and not valid_ttl(ttl):
                raise malformed(what, "bad ttl")
            out.append(TxnOp(op, sk, value if op == PUT else None, ttl))
        return tuple(out)

    return Txn(tuple(compares), ops(raw[1]), ops(raw[2]))
