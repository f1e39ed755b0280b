"""A linearizability checker: Wing and Gong's search with Lowe's memoisation, per key.

A history is a list of operations, each with the time its client invoked it and the time it saw
the answer. It is linearizable when the operations can be put in one order that (1) respects real
time, an operation that returned before another was invoked comes first, and (2) replays through a
sequential model producing exactly the outputs the clients saw. etcd checks its robustness tests
this way (porcupine); this module does the same for garagekv's conditional operations.

Operations on different keys never constrain each other, so each key is checked on its own (a
history is linearizable iff each key's sub-history is), which keeps the search small.

An operation whose outcome the client never learned (a timeout, a 503 that "may or may not have
applied") has ``ret = INFINITY`` and ``output = UNKNOWN``: it can take effect at any point after
its invocation, or never (linearized last, where nothing observes it). The model still decides
deterministically whether it applies at the point where it is placed. Two consequences keep such
*optional* operations cheap (chaos runs have many): the search never needs to place one that
changes nothing where it is placed (it might as well go last), and it succeeds as soon as every
other operation is placed (the optional ones left go last, where the model accepts anything).

The search: walk the invocations in time order; try to place the first pending operation whose
invocation comes before every pending return; if the model accepts its output, place it and start
again from the beginning; if no operation can be placed before the earliest pending return,
take back the last placed one and try the next. Lowe's memoisation skips any (set of placed
operations, model state) pair already explored, which turns the exponential worst case into
something bounded by the number of distinct states actually reachable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

INFINITY = math.inf


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class Op:
    """One client operation: what it asked (``input``), what it saw (``output``), and when."""

    key: Hashable
    input: Any
    output: Any
    call: float
    ret: float = INFINITY
    client: int = 0


@dataclass(frozen=True)
class Model:
    """A sequential specification: ``step(state, input, output) -> (output accepted, next state)``.

    ``step`` receives ``UNKNOWN`` as the output of an operation whose answer was never seen; it
    must then accept and return the state as if the operation ran.
    """

    init: Callable[[], Hashable]
    step: Callable[[Hashable, Any, Any], tuple[bool, Hashable]]
    describe: Callable[[Any, Any], str] = lambda i, o: f"{i!r} -> {o!r}"


@dataclass
class KeyResult:
    key: Hashable
    ok: bool
    ops: int
    order: list[Op] = field(default_factory=list)  # a linearization when ok
    longest_prefix: list[Op] = field(default_factory=list)  # the furthest the search got when not ok
    explored: int = 0
    blocked: Op | None = None  # when not ok: after that prefix, the first answer nothing explains


@dataclass
class Result:
    ok: bool
    keys: list[KeyResult]

    @property
    def failures(self) -> list[KeyResult]:
        return [k for k in self.keys if not k.ok]

    def explain(self, model: Model, limit: int = 3) -> str:
        lines = []
        for k in self.failures[:limit]:
            lines.append(f"key {k.key!r}: not linearizable ({k.ops} operations); longest valid prefix:")
            lines += [_line(model, op) for op in k.longest_prefix[-10:]]
            if k.blocked is not None:
                lines.append("then, returning first, nothing explains:")
                lines.append(_line(model, k.blocked))
        return "\n".join(lines)


def _line(model: Model, op: Op) -> str:
    return f"  [{op.call:.6f}, {op.ret:.6f}] c{op.client} {model.describe(op.input, op.output)}"


class SearchLimitExceeded(Exception):
    """The search explored more states than allowed: the verdict is unknown, not "linearizable"."""


def check(history: Iterable[Op], model: Model, max_steps: int = 2_000_000) -> Result:
    """Check every key's sub-history; the result lists a verdict per key."""
    by_key: dict[Hashable, list[Op]] = {}
    for op in history:
        if op.ret < op.call:
            raise ValueError(f"operation returns before it is invoked: {op}")
        by_key.setdefault(op.key, []).append(op)
    keys = [_check_key(key, ops, model, max_steps) for key, ops in by_key.items()]
    return Result(all(k.ok for k in keys), keys)


def optional(op: Op) -> bool:
    """Never answered: it may take effect at any point after its invocation, or never."""
    return op.output is UNKNOWN and op.ret == INFINITY


def _check_key(key: Hashable, ops: list[Op], model: Model, max_steps: int) -> KeyResult:
    ops = sorted(ops, key=lambda o: (o.call, o.ret))
    n = len(ops)
    is_optional = [optional(op) for op in ops]
    required = n - sum(is_optional)
    # Candidates are tried answered operations first: an unanswered one is only placed where the
    # answered ones cannot go on without it.
    order = sorted(range(n), key=lambda j: (is_optional[j], j))
    placed_mask = 0
    placed_required = 0
    state = model.init()
    stack: list[tuple[int, Hashable]] = []  # (position in ``order``, state before it)
    seen: set[tuple[int, Hashable]] = set()  # Lowe's memoisation: (placed, state) explored
    best: list[int] = []
    steps = 0
    p = 0  # the next position in ``order`` to try
    while placed_required < required:
        steps += 1
        if steps > max_steps:
            raise SearchLimitExceeded(f"key {key!r}: more than {max_steps} steps over {n} operations")
        pos = _next_candidate(ops, order, placed_mask, p)
        if pos is not None:
            candidate = order[pos]
            op = ops[candidate]
            accepted, after = model.step(state, op.input, op.output)
            mask = placed_mask | (1 << candidate)
            useful = not is_optional[candidate] or (
                after != state and not _overwrites(model, ops, order, stack, is_optional, op, after)
            )
            if accepted and useful and (mask, after) not in seen:
                seen.add((mask, after))
                stack.append((pos, state))
                placed_mask, state, p = mask, after, 0
                placed_required += not is_optional[candidate]
                if len(stack) > len(best):
                    best = [order[q] for q, _ in stack]
                continue
            p = pos + 1
            continue
        if not stack:
            placed = {id(ops[c]) for c in best}
            left = [o for o in ops if id(o) not in placed and not optional(o)]
            blocked = min(left, key=lambda o: o.ret) if left else None
            return KeyResult(key, False, n, longest_prefix=[ops[c] for c in best], explored=steps, blocked=blocked)
        pos, state = stack.pop()
        last = order[pos]
        placed_mask &= ~(1 << last)
        placed_required -= not is_optional[last]
        p = pos + 1
    placed = [ops[order[q]] for q, _ in stack]
    rest = [ops[j] for j in range(n) if not placed_mask >> j & 1]  # optional ones, linearized last
    return KeyResult(key, True, n, order=placed + rest, explored=steps)


def _overwrites(
    model: Model,
    ops: list[Op],
    order: list[int],
    stack: list[tuple[int, Hashable]],
    is_optional: list[bool],
    op: Op,
    after: Hashable,
) -> bool:
    """``op`` (optional) placed right after another optional one reaches the same state as it
    would without that one: the other was useless there (its effect is overwritten unseen), and
    the search where it stays unplaced, with one more operation left to use, covers this one."""
    if not stack or not is_optional[order[stack[-1][0]]]:
        return False
    before = stack[-1][1]
    accepted, alone = model.step(before, op.input, op.output)
    return accepted and alone == after


def _next_candidate(ops: list[Op], order: list[int], placed_mask: int, start: int) -> int | None:
    """The first position at or after ``start`` in ``order`` of an unplaced operation invoked
    before every unplaced return."""
    horizon = INFINITY
    for j, op in enumerate(ops):
        if not placed_mask >> j & 1 and op.ret < horizon:
            horizon = op.ret
    for pos in range(start, len(order)):
        j = order[pos]
        if not placed_mask >> j & 1 and ops[j].call <= horizon:
            return pos
    return None


# --- models ------------------------------------------------------------------------------------


def _register_step(state: Hashable, inp: Any, out: Any) -> tuple[bool, Hashable]:
    """A compare-and-set register holding one value (None: never written, or deleted).

    Inputs: ``("read",)`` -> the value; ``("write", v)`` -> None; ``("cas", expected, v)`` ->
    True if the value was ``expected`` (and is now ``v``), else False. ``expected`` None means
    "absent" (If-None-Match: *); ``v`` None deletes.
    """
    kind = inp[0]
    if kind == "read":
        return (out is UNKNOWN or out == state), state
    if kind == "write":
        return True, inp[1]
    if kind == "cas":
        holds = state == inp[1]
        if out is not UNKNOWN and out != holds:
            return False, state
        return True, (inp[2] if holds else state)
    raise ValueError(f"unknown register operation {inp!r}")


def _register_describe(inp: Any, out: Any) -> str:
    if inp[0] == "read":
        return f"read -> {out!r}"
    if inp[0] == "write":
        return f"write {inp[1]!r}"
    return f"cas {inp[1]!r} -> {inp[2]!r}: {out!r}"


CAS_REGISTER = Model(init=lambda: None, step=_register_step, describe=_register_describe)


# --- registers: the items of one partition key, read and written by transactions ------------------


class _Live:
    def __repr__(self) -> str:
        return "LIVE"


LIVE: Any = _Live()
"""An expected state in a compare: any value but None (``If-Match: *``, ``exists: true``)."""


def _get(state: tuple[Any, ...], i: int) -> Any:
    return state[i] if i < len(state) else None


def _set(state: tuple[Any, ...], i: int, value: Any) -> tuple[Any, ...]:
    out = list(state) + [None] * (i + 1 - len(state))
    out[i] = value
    while out and out[-1] is None:  # one form per state, so the memoisation recognises it
        out.pop()
    return tuple(out)


def _holds(current: Any, expected: Any) -> bool:
    return current is not None if expected is LIVE else current == expected


def _registers_step(state: Hashable, inp: Any, out: Any) -> tuple[bool, Hashable]:
    """Registers 0..n-1 (the sort keys of one object), each a value or None (never written, or
    deleted), changed only by transactions that compare some and write some, atomically.

    Inputs:

    - ``("read", (i, ...))`` -> the tuple of their values;
    - ``("txn", ((i, expected), ...), ((i, new), ...), (i, ...))``: when every register ``i``
      holds ``expected`` (a value, None for "absent", or ``LIVE``), every ``new`` is written
      (None deletes) and the output is ``(True, None)``; otherwise nothing is written and the
      output is ``(False, observed)``, ``observed`` the values of the registers of the last
      field as the failure saw them (None: not observed; an entry ``UNKNOWN``: that one not).

    A single-item register is register 0: a conditional write is a ``txn`` of one compare and
    one write, ``If-None-Match: *`` compares with None and ``If-Match: <token>`` with the value
    that token was read with (values are unique, so the token is the value).
    """
    assert isinstance(state, tuple)
    kind = inp[0]
    if kind == "read":
        return (out is UNKNOWN or out == tuple(_get(state, i) for i in inp[1])), state
    if kind == "txn":
        _, compares, writes, fail_reads = inp
        holds = all(_holds(_get(state, i), e) for i, e in compares)
        if out is not UNKNOWN:
            succeeded, observed = out
            if succeeded != holds:
                return False, state
            if not holds and observed is not None:
                now = [_get(state, i) for i in fail_reads]
                if any(o is not UNKNOWN and o != v for o, v in zip(observed, now, strict=True)):
                    return False, state
        if holds:
            for i, v in writes:
                state = _set(state, i, v)
        return True, state
    raise ValueError(f"unknown registers operation {inp!r}")


def _registers_describe(inp: Any, out: Any) -> str:
    if inp[0] == "read":
        return f"read {list(inp[1])} -> {out!r}"
    _, compares, writes, _ = inp
    cond = " and ".join(f"r{i}=={e!r}" for i, e in compares) or "true"
    put = ", ".join(f"r{i}:={v!r}" for i, v in writes) or "nothing"
    return f"if {cond} then {put}: {out!r}"


REGISTERS = Model(init=tuple, step=_registers_step, describe=_registers_describe)
