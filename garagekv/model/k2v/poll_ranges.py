"""PollRanges across the cluster: one long poll per storage node per call, however many ranges.

A call's ranges live on the storage nodes of their partitions. The coordinator groups them by
storage node and sends each node ONE ``poll_ranges`` request with every range it holds; the node
watches them all with one subscription (registered under each of their partitions) and answers
as soon as one of them has news (docs/k2v-api.md §8). So a call costs at most one long poll per
distinct storage node, instead of one per range per storage node.

Each node's answer is, for every range it was sent, that node's PollRange answer: the ranges it
lists carry its items the marker had not seen, the others had none (an empty answer, as a
PollRange storage node gives at its timeout). A range's result is then built exactly as
PollRange builds it (``merge_answers``): the merge of its nodes' items, and a marker moved by
each answering node only as far as that node's own answer proves (``mark_seen_node_items``), so
a node that answered early, or not at all, can never make the marker swallow a later change.

When to answer, per range, follows PollRange: a range with news is settled once a read quorum of
its storage nodes answered (or all of them did, some failing); the call then waits
``POLL_RANGE_EXTRA_DELAY`` more for other answers, so changes landing together are reported
together. A range whose storage nodes can no longer give a read quorum fails the call at once
(``QuorumError``, 503); a range without a marker (its first scan) needs a read quorum of answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.messages import PollRangesReply
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.rpc.quorum import QuorumError, describe_failure
from garagekv.util.errors import EntityTooLarge, ServiceUnavailable
from garagekv.util.time import now_ms

#: Once one range has news, answers arriving within this long are reported in the same answer.
POLL_RANGE_EXTRA_DELAY = 0.2
#: A poll's coordinator waits this much longer than its storage nodes do, so their "nothing
#: new" answers, sent at the client's timeout, still reach it: with equal deadlines it gave up
#: right before the quorum's second answer when only one node had the news.
POLL_ANSWER_GRACE = 2.0

#: A storage node's ``poll_ranges`` answer stops taking ranges that have a marker once their
#: items pass this many bytes (the first range with news always goes): all of a call's ranges
#: in one answer could otherwise pass the RPC record limit. A range left out is still new to
#: its marker, so the client's next call reports it.
REPLY_BUDGET = 4 * 1024 * 1024

#: A range's new items and the marker that covers them; None: nothing new.
RangeResult = tuple[list[K2VItem], RangeSeenMarker] | None
#: One storage node's answer for one range: (its node number, encoded items, its stable clock).
NodeAnswer = tuple[int, Iterable[bytes], int]


@dataclass
class RangePoll:
    """One range of a PollRanges call, as the client sent it (its marker decoded)."""

    partition_key: str
    query: RangeQuery
    marker: RangeSeenMarker | None
    #: The marker as the client sent it (its storage nodes are sent this text unless the range
    #: restricted the marker).
    text: str | None = None


def merge_answers(marker: RangeSeenMarker | None, answers: Iterable[NodeAnswer]) -> RangeResult:
    """A range's new items over its storage nodes' answers, and the marker that covers them.

    ``marker`` is not changed: the result's marker is a copy moved by each answer. None when a
    marker was given and no answer had anything new (without a marker there is always a result:
    the range's first scan, possibly empty).
    """
    new_marker = RangeSeenMarker() if marker is None else RangeSeenMarker(dict(marker.vector_clock), dict(marker.items))
    merged: dict[str, K2VItem] = {}
    for node, raws, stable in answers:
        items = [K2VItem.decode(r) for r in raws]
        # A node's one bound serves both: its own dots are all in its store up to it, and it
        # issued every time up to it (LocalClock.stable).
        new_marker.mark_seen_node_items(node, items, issued=stable, stable=stable)
        for item in items:
            if item.sort_key in merged:
                merged[item.sort_key].merge(item)
            else:
                merged[item.sort_key] = item
    if marker is not None and not merged:
        return None
    new_marker.canonicalize()
    now = now_ms()  # items as a reader sees them: values past their expiry are tombstones
    return sorted((i.at(now) for i in merged.values()), key=lambda i: i.sort_key.encode()), new_marker


class RangesTally:
    """What the storage nodes of a call answered so far, range by range."""

    def __init__(self, ranges: list[RangePoll], nodes_of: list[list[bytes]], quorum: int) -> None:
        self.ranges = ranges
        self.nodes_of = nodes_of
        self.quorum = quorum
        self.answers: list[list[NodeAnswer]] = [[] for _ in ranges]
        self.failures: list[list[str]] = [[] for _ in ranges]
        self._news = [r.marker is None for r in ranges]

    def answered(self, indices: list[int], reply: PollRangesReply) -> None:
        """A node answered for the ranges ``indices`` (the reply's range ``j`` is ``indices[j]``)."""
        listed = dict(reply.news)
        for j, i in enumerate(indices):
            raws = listed.get(j, ())
            self.answers[i].append((reply.node, raws, reply.issued))
            if raws:
                self._news[i] = True

    def failed(self, node: bytes, indices: list[int], err: BaseException) -> None:
        why = describe_failure(node, err)
        for i in indices:
            self.failures[i].append(why)

    def check(self) -> None:
        """Fail the call if some range can no longer get a read quorum of answers."""
        for i, nodes in enumerate(self.nodes_of):
            if len(self.failures[i]) > len(nodes) - self.quorum:
                raise QuorumError(
                    self.quorum,
                    len(self.answers[i]),
                    len(nodes),
                    self.failures[i],
                    operation="k2v_poll_ranges",
                )

    def settled(self) -> bool:
        """Whether some range has news and a read quorum of answers (or every node's answer)."""
        for i, nodes in enumerate(self.nodes_of):
            got = len(self.answers[i])
            if self._news[i] and got and (got >= self.quorum or got + len(self.failures[i]) == len(nodes)):
                return True
        return False

    def results(self) -> list[RangeResult] | None:
        """Each range's result, in request order; None when no range has anything new."""
        out: list[RangeResult] = []
        for i, r in enumerate(self.ranges):
            if r.marker is None and len(self.answers[i]) < self.quorum:
                raise ServiceUnavailable(
                    f"PollRanges: only {len(self.answers[i])} of {len(self.nodes_of[i])} storage nodes "
                    f"of ranges[{i}] answered"
                )
            out.append(merge_answers(r.marker, self.answers[i]))
        return None if all(res is None for res in out) else out


def poll_too_large(err: EntityTooLarge) -> EntityTooLarge:
    """A storage node's answer did not fit in one message: any node's would be as big, so the
    client is told to poll less at once (docs/k2v-compat.md, "Item size")."""
    return EntityTooLarge(
        f"the items this poll returns do not fit in one message between nodes ({err.message}); "
        "poll a narrower range (prefix, start, end) or fewer ranges at once"
    )


async def collect(
    asks: dict[bytes, list[int]],
    ask: Callable[[bytes, list[int]], Awaitable[PollRangesReply]],
    tally: RangesTally,
    timeout: float,
) -> list[RangeResult] | None:
    """Ask every storage node in ``asks`` (node -> the indices of its ranges) once, and tally
    their answers until a range with news is settled (plus the short extra delay), every node
    has answered, or the timeout (plus the grace for the nodes' own timeout answers) is over."""
    tasks = {asyncio.ensure_future(ask(node, indices)): node for node, indices in asks.items()}
    deadline = time.monotonic() + timeout + POLL_ANSWER_GRACE
    pending = set(tasks)
    try:
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                node = tasks[t]
                exc = t.exception()
                if exc is None:
                    tally.answered(asks[node], t.result())
                elif isinstance(exc, EntityTooLarge):
                    raise poll_too_large(exc)
                else:
                    tally.failed(node, asks[node], exc)
            tally.check()
            if tally.settled():
                deadline = min(deadline, time.monotonic() + POLL_RANGE_EXTRA_DELAY)
    finally:
        for t in pending:
            t.cancel()
    return tally.results()
