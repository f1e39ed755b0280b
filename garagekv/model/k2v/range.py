"""The range rules shared by ReadBatch, DeleteBatch, ReadIndex and PollRange.

Sort keys are compared as UTF-8 bytes (code-point order). A scan function supplied by the
caller walks one partition; this module decides where to start, where to stop and how to page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from garagekv.util.errors import BadRequest

E = TypeVar("E")

# Above every byte that can appear in UTF-8, so prefix+HIGH is past every key with that prefix.
_HIGH = b"\xff"

#: ``fetch(start, ...)`` -> (rows, key to continue after, or None once the partition is done).
Fetch = Callable[..., Awaitable[tuple[list[tuple[bytes, Any]], bytes | None]]]
PAGE = 1000
MAX_KEY_BYTES = 479  # LMDB keys are at most 511 bytes, 32 of which are the partition hash


@dataclass
class RangeQuery:
    prefix: str | None = None
    start: str | None = None
    end: str | None = None
    limit: int | None = None
    reverse: bool = False

    def check(self) -> None:
        if self.prefix is not None and self.start is not None and not self.start.startswith(self.prefix):
            raise BadRequest(f"Start key '{self.start}' does not start with prefix '{self.prefix}'")

    def contains(self, sort_key: str) -> bool:
        """Whether ``sort_key`` is inside the range, ignoring ``limit`` and direction."""
        if self.prefix is not None and not sort_key.startswith(self.prefix):
            return False
        if self.reverse:
            if self.start is not None and sort_key > self.start:
                return False
            return self.end is None or sort_key > self.end
        if self.start is not None and sort_key < self.start:
            return False
        return self.end is None or sort_key < self.end


@dataclass
class RangePage(Generic[E]):
    entries: list[tuple[str, E]]
    more: bool
    next_start: str | None


async def read_range(fetch: Fetch, q: RangeQuery, filt: Any = None, page: int = PAGE) -> RangePage[Any]:
    """Run ``q`` with ``fetch(start, prefix=, end=, reverse=, limit=, filt=, skip_start=)``.

    ``fetch`` returns (sort key bytes, entry) pairs of one partition in scan order, and where
    the next page starts (exclusive), None at the end: a page with fewer entries than asked is
    not the end when a filter hid some of what the replicas returned. Filters apply before the
    limit counts. Reads go page by page so a huge range never loads at once
    per request to a replica; one entry past the limit is read to decide ``more`` and
    ``nextStart`` (the first key not returned).
    """
    q.check()
    prefix = (q.prefix or "").encode()
    end = None if q.end is None else q.end.encode()
    if q.start is not None:
        start = q.start.encode()
    elif q.reverse:
        # prefix+HIGH is past every key with that prefix; a prefix of the maximum key size
        # can only match itself.
        start = prefix + _HIGH if prefix and len(prefix) < MAX_KEY_BYTES else prefix
    else:
        start = prefix
    if q.reverse and q.start == "":
        # Downwards from the empty key, the smallest one: that key alone, read forwards, since
        # a reverse scan from an empty start reads from the end of the partition.
        entries: list[tuple[str, Any]] = []
        if end is None:
            rows, _ = await fetch(b"", prefix=b"", end=b"\x00", reverse=False, limit=1, filt=filt, skip_start=False)
            entries = [(k.decode(), e) for k, e in rows if not k]
    else:
        want = None if q.limit is None else q.limit + 1
        entries = await _pages(fetch, start, prefix, end, q.reverse, want, filt, page)
    if q.limit is not None and len(entries) > q.limit:
        return RangePage(entries[: q.limit], True, entries[q.limit][0])
    return RangePage(entries, False, None)


async def _pages(
    fetch: Fetch, start: bytes, prefix: bytes, end: bytes | None, reverse: bool, want: int | None, filt: Any, page: int
) -> list[tuple[str, Any]]:
    """Up to ``want`` entries (all without it) from ``start`` on, ``page`` at most per fetch."""
    entries: list[tuple[str, Any]] = []
    skip = False
    while want is None or len(entries) < want:
        n = page if want is None else min(page, want - len(entries))
        rows, resume = await fetch(start, prefix=prefix, end=end, reverse=reverse, limit=n, filt=filt, skip_start=skip)
        entries.extend((k.decode(), e) for k, e in rows)
        if resume is None:
            break
        start, skip = resume, True
    return entries


def local_page(rows: list[tuple[bytes, Any]], limit: int | None) -> tuple[list[tuple[bytes, Any]], bytes | None]:
    """A page of a single-source scan that filters as it goes: fewer rows than asked is the end."""
    return rows, (rows[-1][0] if limit is not None and rows and len(rows) >= limit else None)
