"""The range rules shared by ReadBatch, DeleteBatch, ReadIndex and PollRange.

Sort keys are compared as UTF-8 bytes (code-point order). A scan function supplied by the
caller walks one partition; this module decides where to start, where to stop and how to page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from garagekv.util.errors import BadRequest

E = TypeVar("E")

# Above every byte that can appear in UTF-8, so prefix+HIGH is past every key with that prefix.
_HIGH = b"\xff"

ScanFn = Callable[..., list[tuple[bytes, Any]]]


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


def read_range(scan: ScanFn, q: RangeQuery, filt: Any = None) -> RangePage:
    """Run ``q`` over ``scan(start: bytes, reverse=, stop=, limit=, filt=)``.

    Filters apply before the limit counts. One entry past the limit is read to decide ``more``
    and ``nextStart`` (the first key not returned).
    """
    q.check()
    prefix = (q.prefix or "").encode()
    end = None if q.end is None else q.end.encode()
    if q.start is not None:
        start = q.start.encode()
    elif q.reverse:
        start = prefix + _HIGH if prefix else b""
    else:
        start = prefix

    def stop(key: bytes) -> bool:
        if not key.startswith(prefix):
            return True
        if end is None:
            return False
        return key <= end if q.reverse else key >= end

    want = None if q.limit is None else q.limit + 1
    rows = scan(start, reverse=q.reverse, stop=stop, limit=want, filt=filt)
    entries = [(k.decode(), e) for k, e in rows]
    if q.limit is not None and len(entries) > q.limit:
        return RangePage(entries[: q.limit], True, entries[q.limit][0])
    return RangePage(entries, False, None)
