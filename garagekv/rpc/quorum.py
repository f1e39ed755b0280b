"""Quorum helpers: turn "call these replicas" into "done once enough of them answered".

``try_call_many`` asks the best ``quorum`` nodes and falls back to the next on error (K2V
inserts, polls, range reads). ``wait_write_quorum`` and ``wait_read_quorum`` wait on calls
already under way, one per node (a replicated table's writes and single-key reads): during a
layout change a write must reach a quorum in the write set of *every* live layout version. All
return as soon as the quorum is met and leave the remaining calls running, so a slow replica
never slows the client down but still receives the data.

Every ``QuorumError`` is reported to the callables in ``quorum_failure_hooks`` when it is made
(the node registers its metrics there; this layer knows nothing of metrics).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from garagekv.net.errors import RpcTimeout
from garagekv.net.identity import short_id
from garagekv.util.errors import ServiceUnavailable

log = logging.getLogger(__name__)

N = TypeVar("N")
H = TypeVar("H", bound=Hashable)
T = TypeVar("T")

#: An RTT we know nothing about counts as slow (Garage uses 10 s).
UNKNOWN_RTT = 10.0

_background: set[asyncio.Task[Any]] = set()

#: Called with each new ``QuorumError`` (a failing hook is ignored).
quorum_failure_hooks: list[Callable[[QuorumError], None]] = []


class QuorumError(ServiceUnavailable):
    """Too many nodes failed for the quorum to be reachable.

    ``operation`` names what failed, for metrics: ``read`` or ``write`` (when ``sets`` is given)
    unless the caller says better.
    """

    def __init__(
        self,
        quorum: int,
        successes: int,
        total: int,
        errors: list[str],
        sets: int | None = None,
        operation: str | None = None,
        summary: str | None = None,
    ):
        where = f" (sets={sets})" if sets is not None else ""
        if summary is not None:  # the caller knows better what failed than the counts say
            message = f"{summary}: {'; '.join(errors)}"
        else:
            message = (
                f"Could not reach quorum of {quorum}{where}. {successes} of {total} request succeeded, "
                f"others returned errors: {errors!r}"
            )
        super().__init__(message)
        self.quorum, self.successes, self.total, self.errors = quorum, successes, total, errors
        self.operation = operation or ("read" if sets is None else "write")
        for hook in list(quorum_failure_hooks):
            try:
                hook(self)
            except Exception:  # noqa: BLE001 - metrics must never change the error the caller sees
                log.exception("quorum failure hook failed")


def node_label(node: object) -> str:
    """How a node appears in quorum error messages (node ids as their 16-hex prefix)."""
    return short_id(node) if isinstance(node, bytes) else str(node)


def request_order(
    nodes: Iterable[N],
    self_id: N,
    zone_of: Callable[[N], str | None],
    rtt_of: Callable[[N], float | None],
) -> list[N]:
    """Ourself first, then nodes in our zone, then by ascending RTT (unknown = ``UNKNOWN_RTT``)."""
    my_zone = zone_of(self_id)

    def key(node: N) -> tuple[bool, bool, float]:
        rtt = rtt_of(node)
        other_zone = my_zone is None or zone_of(node) != my_zone
        return (node != self_id, other_zone, UNKNOWN_RTT if rtt is None else rtt)

    return sorted(nodes, key=key)


def background_tasks() -> set[asyncio.Task[Any]]:
    """Calls still running after their quorum returned (for shutdown and tests)."""
    return set(_background)


def _to_background(tasks: Iterable[asyncio.Task[Any]], cancel: bool) -> None:
    for task in tasks:
        if cancel:
            task.cancel()
        _background.add(task)
        task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a late failure is expected, not worth a warning


async def call_one(call: Callable[[N], Awaitable[T]], node: N, timeout: float | None) -> T:
    """``call(node)`` within ``timeout`` (an expiry raises ``RpcTimeout``), in the caller's task."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await call(node)
    except TimeoutError:
        if deadline.expired():
            raise RpcTimeout(f"Timeout after {timeout}s")
        raise


def _outcome(task: asyncio.Future[T]) -> BaseException | None:
    if task.cancelled():
        return asyncio.CancelledError("call was cancelled")
    return task.exception()


def describe_failure(node: object, err: BaseException) -> str:
    return f"{node_label(node)}: {err}" if str(err) else f"{node_label(node)}: {type(err).__name__}"


async def try_call_many(
    call: Callable[[N], Awaitable[T]],
    nodes: Sequence[N],
    quorum: int,
    *,
    send_all_at_once: bool = False,
    timeout: float | None = None,
    cancel_rest: bool = False,
    operation: str = "read",
) -> list[T]:
    """Return ``quorum`` successful results (in completion order) of ``call(node)``.

    ``nodes`` is already in preference order (see ``request_order``). Only ``quorum`` calls start
    at first (all of them with ``send_all_at_once``); each failure starts the next candidate.
    ``timeout`` applies to each call. Calls still running at the end continue in the background
    (or are cancelled with ``cancel_rest``); if the caller is cancelled, they are all cancelled.
    """
    candidates = list(nodes)
    if quorum <= 0:
        return []
    if quorum > len(candidates):
        raise QuorumError(quorum, 0, len(candidates), [f"only {len(candidates)} nodes to ask"], operation=operation)
    queue = iter(candidates)
    running: dict[asyncio.Task[T], N] = {}
    results: list[T] = []
    errors: list[str] = []

    def start_next() -> None:
        for node in queue:
            running[asyncio.ensure_future(call_one(call, node, timeout))] = node
            return

    for _ in range(len(candidates) if send_all_at_once else quorum):
        start_next()
    finished = False
    try:
        while len(results) < quorum:
            if len(results) + len(running) < quorum:
                raise QuorumError(quorum, len(results), len(candidates), errors, operation=operation)
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                node = running.pop(task)
                err = _outcome(task)
                if err is None:
                    results.append(task.result())
                else:
                    errors.append(describe_failure(node, err))
                    start_next()
        finished = True
        return results
    except QuorumError:
        finished = True
        raise
    finally:
        _to_background(running, cancel=cancel_rest or not finished)


def _set_members(sets: Sequence[Sequence[H]], quorum: int, operation: str) -> dict[H, list[int]]:
    """Node -> indexes of the sets it belongs to; refuses sets that can never reach ``quorum``."""
    members: dict[H, list[int]] = {}
    for index, group in enumerate(sets):
        for node in dict.fromkeys(group):
            members.setdefault(node, []).append(index)
    if any(len(set(group)) < quorum for group in sets):
        raise QuorumError(
            quorum, 0, len(members), ["a node set has fewer nodes than the quorum"], sets=len(sets), operation=operation
        )
    return members


async def wait_write_quorum(
    calls: Mapping[H, asyncio.Future[T]],
    sets: Sequence[Sequence[H]],
    quorum: int,
    *,
    operation: str = "write",
) -> list[T]:
    """Return once every set has ``quorum`` successes among ``calls`` (one per node, under way).

    A node in several sets counts for each of them (during a layout change a write must reach a
    quorum in the set of every live version). Fails as soon as one set can no longer make it.
    One callback per call, no task or timer: the calls carry their own timeouts and are left
    alone whatever happens. Results come in completion order.
    """
    return await _await_quorum(calls, sets, quorum, operation, len(sets))


async def wait_read_quorum(calls: Mapping[H, asyncio.Future[T]], quorum: int, *, operation: str = "read") -> list[T]:
    """At least ``quorum`` successful results of calls already under way (all of them started
    at once, like ``try_call_many(send_all_at_once=True)``), without a task or timer per call."""
    return await _await_quorum(calls, [list(calls)], quorum, operation, None)


async def _await_quorum(
    calls: Mapping[H, asyncio.Future[T]],
    sets: Sequence[Sequence[H]],
    quorum: int,
    operation: str,
    sets_in_error: int | None,
) -> list[T]:
    members = _set_members(sets, quorum, operation)
    sizes = [len(set(group)) for group in sets]
    ok = [0] * len(sets)
    failed = [0] * len(sets)
    results: list[T] = []
    errors: list[str] = []
    waiter = asyncio.get_running_loop().create_future()

    def settle() -> None:
        if waiter.done():
            return
        if all(n >= quorum for n in ok):
            waiter.set_result(None)
        elif any(failed[i] + quorum > size for i, size in enumerate(sizes)):
            waiter.set_exception(
                QuorumError(quorum, len(results), len(members), errors, sets=sets_in_error, operation=operation)
            )

    def on_done(node: H, fut: asyncio.Future[T]) -> None:
        err = _outcome(fut)
        counts = ok if err is None else failed
        for index in members[node]:
            counts[index] += 1
        if err is None:
            results.append(fut.result())
        else:
            errors.append(describe_failure(node, err))
        settle()

    for node in members:
        calls[node].add_done_callback(functools.partial(on_done, node))
    settle()
    await waiter
    return list(results)
