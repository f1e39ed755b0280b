"""``K2VClientSync``: the blocking face of :class:`~garagekv.client.K2VClient`.

Not a second implementation: it owns one private event loop running in a daemon thread, and
each method runs the async client's method there and waits for it. Async iterators become
ordinary generators. Thread-safe: several threads may share one instance (their calls run
concurrently on the private loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar, overload

from garagekv.client.client import InsertLike, K2VClient, RangeLike, RawResponse, TokenLike
from garagekv.client.config import ConnectionSettings
from garagekv.client.request import PreparedRequest
from garagekv.client.types import (
    CausalityToken,
    Compare,
    DeleteQuery,
    DeleteResult,
    IndexEntry,
    IndexPage,
    Item,
    ItemPage,
    PollRangeResult,
    PollRangesResult,
    RangeChanges,
    ReadQuery,
    TxnOp,
    TxnResult,
)

T = TypeVar("T")


class K2VClientSync:
    """Blocking client; takes the same keyword arguments as :class:`K2VClient` (except ``session``).

    >>> with K2VClientSync.from_env() as k2v:
    ...     k2v.insert_item("pk", "sk", b"value")
    ...     print(k2v.read_item("pk", "sk").values)
    """

    def __init__(self, **kwargs: Any) -> None:
        if "session" in kwargs:
            raise TypeError("K2VClientSync manages its own HTTP session")
        self._start(K2VClient(**kwargs))

    @classmethod
    def _wrap(cls, make: Any, *args: Any, **options: Any) -> K2VClientSync:
        if "session" in options:
            raise TypeError("K2VClientSync manages its own HTTP session")
        client = make(*args, **options)
        self = cls.__new__(cls)
        self._start(client)
        return self

    def _start(self, client: K2VClient) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k2v-client-sync", daemon=True)
        self._thread.start()
        self._closed = False

    @classmethod
    def from_dev_json(cls, source: str | bytes | Path | Mapping[str, Any] | TextIO, **options: Any) -> K2VClientSync:
        return cls._wrap(K2VClient.from_dev_json, source, **options)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> K2VClientSync:
        return cls._wrap(K2VClient.from_env, env, **options)

    @property
    def async_client(self) -> K2VClient:
        """The underlying async client (only usable on this object's private loop)."""
        return self._client

    @property
    def settings(self) -> ConnectionSettings:
        return self._client.settings

    # --- plumbing ----------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt while blocked: do not leave the request running
            raise

    def _iter(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self._closed:
                self._run(aclose())

    def close(self) -> None:
        """Close the connections and stop the private loop (idempotent)."""
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> K2VClientSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the API (each one delegates to K2VClient) --------------------------------------------

    def prepare(
        self,
        method: str,
        partition_key: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> PreparedRequest:
        return self._client.prepare(method, partition_key, query, body, headers)

    def request(
        self,
        method: str,
        partition_key: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> RawResponse:
        return self._run(self._client.request(method, partition_key, query, body, headers, **kwargs))

    def read_item(self, partition_key: str, sort_key: str, *, linearizable: bool = False) -> Item:
        return self._run(self._client.read_item(partition_key, sort_key, linearizable=linearizable))

    @overload
    def insert_item(
        self,
        partition_key: str,
        sort_key: str,
        value: bytes | str,
        token: TokenLike | None = None,
        *,
        ttl: int | None = None,
    ) -> None: ...

    @overload
    def insert_item(
        self,
        partition_key: str,
        sort_key: str,
        value: bytes | str,
        token: None = None,
        *,
        if_match: TokenLike,
        if_none_match: Literal[False] = False,
        ttl: int | None = None,
    ) -> CausalityToken: ...

    @overload
    def insert_item(
        self,
        partition_key: str,
        sort_key: str,
        value: bytes | str,
        token: None = None,
        *,
        if_match: None = None,
        if_none_match: Literal[True],
        ttl: int | None = None,
    ) -> CausalityToken: ...

    @overload
    def insert_item(
        self,
        partition_key: str,
        sort_key: str,
        value: bytes | str,
        token: TokenLike | None = None,
        *,
        if_match: TokenLike | None = None,
        if_none_match: bool = False,
        ttl: int | None = None,
    ) -> CausalityToken | None: ...

    def insert_item(
        self,
        partition_key: str,
        sort_key: str,
        value: bytes | str,
        token: TokenLike | None = None,
        *,
        if_match: TokenLike | None = None,
        if_none_match: bool = False,
        ttl: int | None = None,
    ) -> CausalityToken | None:
        return self._run(
            self._client.insert_item(
                partition_key, sort_key, value, token, if_match=if_match, if_none_match=if_none_match, ttl=ttl
            )
        )

    @overload
    def delete_item(self, partition_key: str, sort_key: str, token: TokenLike | None = None) -> None: ...

    @overload
    def delete_item(
        self, partition_key: str, sort_key: str, token: None = None, *, if_match: TokenLike
    ) -> CausalityToken: ...

    @overload
    def delete_item(
        self, partition_key: str, sort_key: str, token: TokenLike | None = None, *, if_match: TokenLike | None = None
    ) -> CausalityToken | None: ...

    def delete_item(
        self, partition_key: str, sort_key: str, token: TokenLike | None = None, *, if_match: TokenLike | None = None
    ) -> CausalityToken | None:
        return self._run(self._client.delete_item(partition_key, sort_key, token, if_match=if_match))

    def poll_item(
        self, partition_key: str, sort_key: str, token: TokenLike, timeout: float | None = None
    ) -> Item | None:
        return self._run(self._client.poll_item(partition_key, sort_key, token, timeout))

    def watch_item(
        self, partition_key: str, sort_key: str, token: TokenLike | None = None, timeout: float | None = None
    ) -> Iterator[Item]:
        return self._iter(self._client.watch_item(partition_key, sort_key, token, timeout))

    def read_index(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> IndexPage:
        return self._run(self._client.read_index(prefix=prefix, start=start, end=end, limit=limit, reverse=reverse))

    def iter_index_pages(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        page_size: int = 1000,
    ) -> Iterator[IndexPage]:
        return self._iter(
            self._client.iter_index_pages(prefix=prefix, start=start, end=end, reverse=reverse, page_size=page_size)
        )

    def iter_index(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        page_size: int = 1000,
    ) -> Iterator[IndexEntry]:
        return self._iter(
            self._client.iter_index(prefix=prefix, start=start, end=end, reverse=reverse, page_size=page_size)
        )

    def insert_batch(self, items: Iterable[InsertLike]) -> None:
        return self._run(self._client.insert_batch(list(items)))

    def read_batch(self, queries: Sequence[ReadQuery]) -> list[ItemPage]:
        return self._run(self._client.read_batch(queries))

    def read_range(
        self,
        partition_key: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
        conflicts_only: bool = False,
        tombstones: bool = False,
    ) -> ItemPage:
        return self._run(
            self._client.read_range(
                partition_key,
                prefix=prefix,
                start=start,
                end=end,
                limit=limit,
                reverse=reverse,
                conflicts_only=conflicts_only,
                tombstones=tombstones,
            )
        )

    def iter_range_pages(
        self,
        partition_key: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        conflicts_only: bool = False,
        tombstones: bool = False,
        page_size: int = 1000,
    ) -> Iterator[ItemPage]:
        return self._iter(
            self._client.iter_range_pages(
                partition_key,
                prefix=prefix,
                start=start,
                end=end,
                reverse=reverse,
                conflicts_only=conflicts_only,
                tombstones=tombstones,
                page_size=page_size,
            )
        )

    def iter_range(
        self,
        partition_key: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        conflicts_only: bool = False,
        tombstones: bool = False,
        page_size: int = 1000,
    ) -> Iterator[Item]:
        return self._iter(
            self._client.iter_range(
                partition_key,
                prefix=prefix,
                start=start,
                end=end,
                reverse=reverse,
                conflicts_only=conflicts_only,
                tombstones=tombstones,
                page_size=page_size,
            )
        )

    def delete_batch(self, queries: Sequence[DeleteQuery]) -> list[DeleteResult]:
        return self._run(self._client.delete_batch(queries))

    def delete_range(
        self, partition_key: str, *, prefix: str | None = None, start: str | None = None, end: str | None = None
    ) -> int:
        return self._run(self._client.delete_range(partition_key, prefix=prefix, start=start, end=end))

    def poll_range(
        self,
        partition_key: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        seen_marker: str | None = None,
        timeout: float | None = None,
    ) -> PollRangeResult | None:
        return self._run(
            self._client.poll_range(
                partition_key, prefix=prefix, start=start, end=end, seen_marker=seen_marker, timeout=timeout
            )
        )

    def watch_range(
        self,
        partition_key: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        seen_marker: str | None = None,
        timeout: float | None = None,
        include_initial: bool = True,
    ) -> Iterator[PollRangeResult]:
        return self._iter(
            self._client.watch_range(
                partition_key,
                prefix=prefix,
                start=start,
                end=end,
                seen_marker=seen_marker,
                timeout=timeout,
                include_initial=include_initial,
            )
        )

    def poll_ranges(self, ranges: Sequence[RangeLike], *, timeout: float | None = None) -> PollRangesResult | None:
        return self._run(self._client.poll_ranges(ranges, timeout=timeout))

    def watch(
        self, ranges: Sequence[RangeLike], *, timeout: float | None = None, include_initial: bool = True
    ) -> Iterator[RangeChanges]:
        return self._iter(self._client.watch(ranges, timeout=timeout, include_initial=include_initial))

    def txn(
        self,
        partition_key: str,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        return self._run(self._client.txn(partition_key, compare, success, failure))
