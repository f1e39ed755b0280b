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
deterministically whether it applies at the point where it is placed.

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
            lines += [
                f"  [{op.call:.6f}, {op.ret:.6f}] c{op.client} {model.describe(op.input, op.output)}"
                for op in k.longest_prefix[-10:]
            ]
        return "\n".join(lines)


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


def _check_key(key: Hashable, ops: list[Op], model: Model, max_steps: int) -> KeyResult:
    ops = sorted(ops, key=lambda o: (o.call, o.ret))
    n = len(ops)
    placed_mask = 0
    state = model.init()
    stack: list[tuple[int, Hashable]] = []  # (op index, state before it)
    seen: set[tuple[int, Hashable]] = set()
    best: list[int] = []
    steps = 0
    i = 0  # the next candidate to try
    while len(stack) < n:
        steps += 1
        if steps > max_steps:
            raise SearchLimitExceeded(f"key {key!r}: more than {max_steps} steps over {n} operations")
        # The earliest return among operations not yet placed bounds which ones may go next.
        candidate = _next_candidate(ops, placed_mask, i)
        if candidate is not None:
            op = ops[candidate]
            accepted, after = model.step(state, op.input, op.output)
            mask = placed_mask | (1 << candidate)
            if accepted and (mask, after) not in seen:
                seen.add((mask, after))
                stack.append((candidate, state))
                placed_mask, state, i = mask, after, 0
                if len(stack) > len(best):
                    best = [c for c, _ in stack]
                continue
            i = candidate + 1
            continue
        if not stack:
            return KeyResult(key, False, n, longest_prefix=[ops[c] for c in best], explored=steps)
        last, state = stack.pop()
        placed_mask &= ~(1 << last)
        i = last + 1
    return KeyResult(key, True, n, order=[ops[c] for c, _ in stack], explored=steps)


def _next_candidate(ops: list[Op], placed_mask: int, start: int) -> int | None:
    """The first unplaced operation at or after ``start`` invoked before every unplaced return."""
    horizon = INFINITY
    for j, op in enumerate(ops):
        if not placed_mask >> j & 1 and op.ret < horizon:
            horizon = op.ret
    for j in range(start, len(ops)):
        if placed_mask >> j & 1:
            continue
        if ops[j].call > horizon:
            return None  # ops are sorted by invocation: none further can go first either
        return j
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
