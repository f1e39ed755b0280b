"""Coalesce the small RPCs a busy node makes to the same peer into one call per event-loop turn.

Under load many requests reach the same step at once (a group commit resolves a whole batch of
writes together), and each would send its own tiny "update" or "get" to the same replicas. Every
RPC pays for framing, encryption, a task, a timer and a dispatch on both sides, plus a writer
job on the receiver; one call carrying all of them pays that once. Nothing waits to fill a
batch: what is queued during one turn of the loop leaves at the start of the next.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from garagekv.net.frame import error_from_body
from garagekv.rpc.messages import malformed
from garagekv.util import codec
from garagekv.util.errors import GarageKVError, InternalError, ServiceUnavailable

log = logging.getLogger(__name__)

N = TypeVar("N", bound=Hashable)

#: Items of a batch stay under this many bytes (frames have a size limit): a submission that
#: would grow a batch past it starts a new one, or is spread over several when it is bigger
#: itself; one item bigger than this travels alone.
MAX_BATCH_BYTES = 1 << 20


class _Batch:
    __slots__ = ("items", "size", "future")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.items: list[Any] = []
        self.size = 0
        self.future = future


class CallBatcher(Generic[N]):
    """``call(node, items)`` once per node and loop turn, for all items submitted meanwhile.

    ``call`` returns None or a list with one result per item; each submitter gets its own slice
    (or None). A failed call fails every submitter of that batch. Submitters may be cancelled
    without affecting the others: the shared call runs to its end.
    """

    def __init__(
        self, call: Callable[[N, list[Any]], Awaitable[list[Any] | None]], max_bytes: int = MAX_BATCH_BYTES
    ) -> None:
        self._call = call
        self._max_bytes = max_bytes
        self._open: dict[N, _Batch] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def submit(self, node: N, items: list[bytes]) -> list[Any] | None:
        parts = self._add_split(node, items)
        if len(parts) == 1:
            batch, start, count = parts[0]
            result = await asyncio.shield(batch.future)
            return None if result is None else result[start : start + count]
        results = await asyncio.shield(asyncio.gather(*(b.future for b, _, _ in parts)))
        if any(r is None for r in results):
            return None
        return [x for r, (_, start, count) in zip(results, parts, strict=True) for x in r[start : start + count]]

    def future(self, node: N, items: list[bytes]) -> asyncio.Future[Any]:
        """Queue ``items``; the shared call's whole answer, as a future nobody may cancel.

        For calls whose answer is not per item (updates): no coroutine, no task. Items too big
        for one call go out in several; the future then fails if one of them fails, and its
        result is the list of their answers.
        """
        parts = self._add_split(node, items)
        if len(parts) == 1:
            return parts[0][0].future
        return _all_of([b.future for b, _, _ in parts])

    def item_future(self, node: N, item: bytes) -> asyncio.Future[Any]:
        """Queue one item; a future of its own result (cancelling it leaves the call alone)."""
        batch = self._add(node, [item])
        index = len(batch.items) - 1
        mine = batch.future.get_loop().create_future()
        forward_outcome(batch.future, mine, lambda answers: mine.set_result(answers[index]))
        return mine

    def _add(self, node: N, items: list[bytes]) -> _Batch:
        size = sum(len(i) for i in items)
        batch = self._open.get(node)
        if batch is None or (batch.items and batch.size + size > self._max_bytes):
            # A submission never shares a call that would grow past the limit: alone, it is no
            # bigger than it would have been without batching.
            batch = self._new_batch(node)
        batch.items.extend(items)
        batch.size += size
        return batch

    def _new_batch(self, node: N) -> _Batch:
        loop = asyncio.get_running_loop()
        batch = self._open[node] = _Batch(loop.create_future())
        loop.call_soon(self._flush, node, batch)
        return batch

    def _add_split(self, node: N, items: list[bytes]) -> list[tuple[_Batch, int, int]]:
        """Queue ``items`` in as few calls as the byte limit allows: (batch, start, count) each.

        A submission over the limit (many entries for one replica, or a few big ones) is never
        sent as one call that the frame limit would refuse: it is cut into calls of at most
        ``max_bytes`` (an item bigger than that alone in its call).
        """
        if sum(len(i) for i in items) <= self._max_bytes:
            whole = self._add(node, items)
            return [(whole, len(whole.items) - len(items), len(items))]
        parts: list[tuple[_Batch, int, int]] = []
        for item in items:
            batch = self._open.get(node)
            if batch is None or (batch.items and batch.size + len(item) > self._max_bytes):
                batch = self._new_batch(node)
            if parts and parts[-1][0] is batch:
                b, start, count = parts[-1]
                parts[-1] = (b, start, count + 1)
            else:
                parts.append((batch, len(batch.items), 1))
            batch.items.append(item)
            batch.size += len(item)
        return parts

    def _flush(self, node: N, batch: _Batch) -> None:
        if self._open.get(node) is batch:
            del self._open[node]
        task = asyncio.ensure_future(self._call(node, batch.items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        forward_outcome(task, batch.future)

    def in_flight(self) -> int:
        """Calls sent and not answered yet (for tests and shutdown)."""
        return len(self._tasks)


def _all_of(futures: list[asyncio.Future[Any]]) -> asyncio.Future[Any]:
    """A future of every answer, failing with the first failure (no task: callbacks only)."""
    out = futures[0].get_loop().create_future()
    left = [len(futures)]

    def one_done(_: Any) -> None:
        left[0] -= 1
        if left[0] == 0:
            out.set_result([g.result() for g in futures])

    for f in futures:
        forward_outcome(f, out, one_done)
    return out


def forward_outcome(
    src: asyncio.Future[Any], out: asyncio.Future[Any], on_result: Callable[[Any], None] | None = None
) -> None:
    """When ``src`` is done, settle ``out`` with its outcome, unless ``out`` is done already.

    A cancellation cancels ``out``; a failure fails it, and is marked as seen (the reader may
    have its quorum already, or every submitter may have gone, and never look: no "exception
    was never retrieved" warning). A result goes to ``on_result`` if given (which settles
    ``out`` itself, or arranges for it to be settled later), else becomes ``out``'s result.
    """

    def settle(f: asyncio.Future[Any]) -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
            return
        err = f.exception()
        if err is not None:
            out.set_exception(err)
            out.exception()
        elif on_result is None:
            out.set_result(f.result())
        else:
            on_result(f.result())

    src.add_done_callback(settle)


# ---- batches of whole messages: [msgpack(message), ...] answered [[ok, answer | error], ...] -------


#: The answers of one batch stay under this many bytes together (a frame holds 16 MiB, and one
#: answer may carry a 15 MiB item): the answers past it are held for their caller to fetch alone.
MAX_BATCH_ANSWER_BYTES = 8 * 1024 * 1024


class HeldAnswers:
    """Answers too big to share their batch's frame, kept until their caller fetches them.

    The message was handled (it may have written): its answer must not be lost, and the message
    cannot be sent again (a repeated Prepare is refused, a repeated operation applies twice).
    An answer nobody fetches within ``ttl`` seconds (its caller gave up) is dropped.
    """

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._held: dict[int, tuple[float, Any]] = {}

    def hold(self, answer: Any) -> int:
        now = time.monotonic()
        for token in [t for t, (until, _) in self._held.items() if until < now]:
            del self._held[token]
        token = secrets.randbits(62)
        self._held[token] = (now + self.ttl, answer)
        return token

    def take(self, token: Any) -> Any:
        entry = self._held.pop(token, None) if isinstance(token, int) else None
        if entry is None:
            raise ServiceUnavailable("the answer of a batched message expired before it was fetched")
        return entry[1]

    def __len__(self) -> int:
        return len(self._held)


async def answer_each(
    what: str,
    items: Any,
    handle: Callable[[Any], Awaitable[Any]],
    max_items: int,
    held: HeldAnswers,
    max_bytes: int = MAX_BATCH_ANSWER_BYTES,
) -> list[Any]:
    """Answer a batch of independent messages, each its own msgpack bytes: ``[true, answer]`` or
    ``[false, {"code", "message"}]`` per message, in order, or ``[null, token]`` for an answer
    that would push the batch's answers past ``max_bytes``: it is in ``held``, for the caller to
    fetch (``resolve_held``). They run concurrently (their writer jobs share a group commit); one
    message's failure is only that message's answer."""
    if not isinstance(items, list) or len(items) > max_items:
        raise malformed(what, f"expected an array of at most {max_items} messages")

    async def one(raw: Any) -> list[Any]:
        try:
            try:
                msg = codec.decode(raw) if isinstance(raw, bytes) else None
            except Exception:  # noqa: BLE001 - msgpack raises many unrelated types on garbage
                msg = None
            if msg is None:
                raise malformed(what, "a message must be msgpack bytes")
            return [True, await handle(msg)]
        except GarageKVError as e:
            return [False, {"code": str(e.code), "message": str(e.message)}]
        except Exception as e:  # noqa: BLE001 - reported in the message's own answer
            log.exception("%s: a message failed", what)
            return [False, {"code": InternalError.code, "message": f"{type(e).__name__}: {e}"}]

    if len(items) == 1:  # no task to run a lone message alongside others
        return [await one(items[0])]
    answers = list(await asyncio.gather(*(one(raw) for raw in items)))
    total = 0
    for i, answer in enumerate(answers):
        size = len(codec.encode_lists(answer))  # its size only: no need for canonical map order
        if i and total + size > max_bytes:
            answers[i] = [None, held.hold(answer)]
        else:
            total += size
    return answers


def resolve_held(answer: asyncio.Future[Any], fetch: Callable[[Any], Awaitable[Any]]) -> asyncio.Future[Any]:
    """``answer`` (one message's, from ``answer_each``), fetched with ``fetch(token)`` if it was
    held; as a future, so that a caller waiting on many makes no task for the common case."""
    out = answer.get_loop().create_future()

    def on_result(a: Any) -> None:
        if isinstance(a, list) and len(a) == 2 and a[0] is None:
            forward_outcome(asyncio.ensure_future(fetch(a[1])), out)
        else:
            out.set_result(a)

    forward_outcome(answer, out, on_result)
    return out


def unwrap_answer(answer: Any) -> Any:
    """One message's answer from ``answer_each``, or its error (typed, as the RPC layer does)."""
    if not isinstance(answer, list) or len(answer) != 2 or not isinstance(answer[0], bool):
        raise ServiceUnavailable("malformed answer in a batch")
    if not answer[0]:
        raise error_from_body(answer[1])
    return answer[1]
