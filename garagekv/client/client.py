"""``K2VClient``: an asyncio client for the K2V HTTP API (Garage's, served by garagekv).

Retry policy
------------
A request is retried (``max_retries`` times, exponential backoff with jitter) only when that
cannot change the outcome:

* any request whose connection could not even be opened (nothing was sent);
* reads and polls (ReadItem, linearizable or not, PollItem, ReadIndex, ReadBatch, PollRange,
  PollRanges, transactions that only read) after a timeout, a dropped connection, or a
  500/502/503/504 answer.

Writes (InsertItem, DeleteItem, InsertBatch, DeleteBatch, conditional writes and transactions
that write) are never retried once they may have reached the server. A token-less insert that
is replayed adds a *second* concurrent value (a sibling); even a replay with a token can
resurrect a value that another client replaced in the meantime; a replayed conditional write
that had applied would answer 412 for a write that happened. On a write error, read the item
again (linearizably, for conditional writes) and write with the fresh token (see
``docs/client.md``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, overload

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from garagekv.client import errors
from garagekv.client.config import (
    DEFAULT_REGION,
    ConnectionSettings,
    dev_json_settings,
    env_settings,
    load_dev_json,
    resolve,
)
from garagekv.client.request import ACCEPT_ITEM, CAUSALITY_HEADER, PreparedRequest, RequestBuilder
from garagekv.client.types import (
    CausalityToken,
    Compare,
    Delete,
    DeleteQuery,
    DeleteResult,
    IndexEntry,
    IndexPage,
    InsertOp,
    Item,
    ItemPage,
    PollRangeResult,
    PollRangesResult,
    Put,
    RangeChanges,
    RangeSpec,
    Read,
    ReadQuery,
    TxnOp,
    TxnResult,
    Value,
    decode_values,
    txn_body,
)

__all__ = ["K2VClient", "RawResponse", "InsertLike", "RangeLike", "TokenLike"]

TokenLike = CausalityToken | str
InsertLike = InsertOp | tuple[str, str, bytes | str | None] | tuple[str, str, bytes | str | None, TokenLike | None]
RangeLike = RangeSpec | str

CONSISTENCY_HEADER = "X-Garage-Consistency"
MAX_POLL_RANGES = 64  # ranges per PollRanges call (a limit of the API)

DEFAULT_POLL_TIMEOUT = 300
CONNECTION_KEYS = ("endpoint", "region", "access_key_id", "secret_access_key", "bucket")
MAX_BATCH = 1000  # the server's default limit on items/queries per batch
RETRY_STATUSES = frozenset({500, 502, 503, 504})
USER_AGENT = "garagekv-client/0.1"
TTL_HEADER = "X-Garage-TTL"  # an expiring write (docs/k2v-api.md, expiring values)
EXPIRES_HEADER = "X-Garage-Expires"
# Errors raised before anything was sent (connect timeouts are their own class since aiohttp 3.10).
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    *(c for c in (getattr(aiohttp, "ConnectionTimeoutError", None),) if c is not None),
)


class RawResponse:
    """Status, headers (case-insensitive) and body of an answer."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: CIMultiDictProxy[str] | CIMultiDict[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise errors.ProtocolError(f"invalid JSON in the answer: {e}", status=self.status)

    def __repr__(self) -> str:
        return f"RawResponse(status={self.status}, body={self.body[:60]!r})"


def _value_bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a K2V value must be bytes or str, not {type(value).__name__}")


def _insert_op(item: InsertLike) -> InsertOp:
    if isinstance(item, InsertOp):
        if item.value is None or type(item.value) is bytes:
            return item
        # A str (UTF-8) or other bytes-like value, as the tuple form takes (docs/client.md "Values").
        return dataclasses.replace(item, value=_value_bytes(item.value))
    if not isinstance(item, tuple) or len(item) not in (3, 4):
        raise TypeError("an insert is an InsertOp or a (pk, sk, value[, token]) tuple")
    pk, sk, value = item[0], item[1], item[2]
    token = item[3] if len(item) == 4 else None
    return InsertOp(
        pk, sk, None if value is None else _value_bytes(value), None if token is None else CausalityToken.coerce(token)
    )


def _clamp_poll(timeout: float | None) -> int:
    t = DEFAULT_POLL_TIMEOUT if timeout is None else int(timeout)
    return min(max(t, 1), 600)


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class K2VClient:
    """Asynchronous client for one bucket of a K2V endpoint.

    >>> async with K2VClient(endpoint="http://127.0.0.1:3904", region="garage", access_key_id="GK...",
    ...                      secret_access_key="...", bucket="dev-bucket") as k2v:
    ...     await k2v.insert_item("mailbox", "msg1", b"hello")
    ...     item = await k2v.read_item("mailbox", "msg1")   # item.values == [b"hello"], item.token

    One client holds a pool of keep-alive connections (``max_connections``); create it once and
    share it. Use it from a single event loop. ``timeout`` bounds each request (polls get their
    poll timeout on top of it); ``connect_timeout`` bounds opening a connection.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        access_key_id: str,
        secret_access_key: str,
        bucket: str,
        region: str = DEFAULT_REGION,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        retry_backoff: float = 0.1,
        max_connections: int = 64,
        session: aiohttp.ClientSession | None = None,
        unsigned_payload: bool = False,
        user_agent: str | None = USER_AGENT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings: ConnectionSettings = resolve(
            {
                "endpoint": endpoint,
                "region": region,
                "access_key_id": access_key_id,
                "secret_access_key": secret_access_key,
                "bucket": bucket,
            }
        )
        kwargs: dict[str, Any] = {"unsigned_payload": unsigned_payload, "user_agent": user_agent}
        if clock is not None:
            kwargs["clock"] = clock
        self._builder = RequestBuilder(self.settings, **kwargs)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_connections = max_connections
        self._session = session
        self._own_session = session is None

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_dev_json(cls, source: str | bytes | Path | Mapping[str, Any] | TextIO, **options: Any) -> K2VClient:
        """From what ``garagekv dev --json`` prints (a mapping, JSON text, a path or a file)."""
        return cls(**{**dev_json_settings(load_dev_json(source)), **options})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> K2VClient:
        """From ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` (default ``garage``),
        ``GARAGEKV_K2V_ENDPOINT`` and ``GARAGEKV_BUCKET``; keyword arguments take precedence."""
        conn = {k: options.pop(k) for k in CONNECTION_KEYS if k in options}
        try:
            s = resolve(conn, env_settings(env))
        except ValueError as e:
            raise ValueError(
                f"{e} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, GARAGEKV_K2V_ENDPOINT and "
                "GARAGEKV_BUCKET, or pass them as arguments)"
            )
        return cls(
            endpoint=s.endpoint,
            region=s.region,
            access_key_id=s.access_key_id,
            secret_access_key=s.secret_access_key,
            bucket=s.bucket,
            **options,
        )

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    # --- lifecycle ---------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._own_session and self._session.closed):
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.timeout),
                auto_decompress=True,
            )
            self._own_session = True
        return self._session

    async def close(self) -> None:
        """Close the connection pool (not a session given to the constructor)."""
        if self._session is not None and self._own_session and not self._session.closed:
            await self._session.close()
        if self._own_session:
            self._session = None

    async def __aenter__(self) -> K2VClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- transport ---------------------------------------------------------------------------

    def prepare(
        self,
        method: str,
        partition_key: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_sha256: str | None = None,
    ) -> PreparedRequest:
        """A signed request (for inspection, or to send with another HTTP library)."""
        return self._builder.build(method, partition_key, query, body, headers, content_sha256)

    async def _send_once(self, req: PreparedRequest, read_timeout: float) -> RawResponse:
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=read_timeout)
        async with session.request(
            req.method,
            URL(req.url, encoded=True),
            data=req.body or None,
            headers=req.headers,
            timeout=timeout,
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            return RawResponse(resp.status, resp.headers, body)

    async def request(
        self,
        method: str,
        partition_key: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        idempotent: bool = False,
        read_timeout: float | None = None,
        content_sha256: str | None = None,
        check: bool = True,
    ) -> RawResponse:
        """Send one signed request to ``/bucket[/partition_key]?query`` (the low-level escape hatch).

        An error answer raises the matching :class:`~garagekv.client.errors.K2VError` when
        ``check`` (the default). ``idempotent`` allows retries after the request may have been
        received (see the module's retry policy).
        """
        read_timeout = self.timeout if read_timeout is None else read_timeout
        attempt = 0
        while True:
            req = self.prepare(method, partition_key, query, body, headers, content_sha256)  # fresh date each try
            err: errors.K2VError
            try:
                resp = await self._send_once(req, read_timeout)
            except _NOT_SENT as e:
                err, retry = errors.K2VConnectionError(f"cannot connect to {self.endpoint}: {e}", path=req.path), True
            except TimeoutError:
                err = errors.K2VTimeoutError(f"no answer from {self.endpoint} within {read_timeout:g}s", path=req.path)
                retry = idempotent
            except aiohttp.ClientError as e:
                err = errors.K2VConnectionError(f"{type(e).__name__}: {e}", path=req.path)
                retry = idempotent
            else:
                if resp.status < 400 or not check:
                    return resp
                err = errors.error_from_response(resp.status, resp.body, req.path, resp.headers)
                retry = idempotent and resp.status in RETRY_STATUSES
            if not retry or attempt >= self.max_retries:
                raise err
            delay = min(self.retry_backoff * (2**attempt), 5.0)
            await asyncio.sleep(delay * (0.5 + random.random()))
            attempt += 1

    async def _json(
        self,
        method: str,
        partition_key: str | None,
        query: Sequence[tuple[str, str]],
        payload: Any,
        *,
        idempotent: bool,
        read_timeout: float | None = None,
    ) -> RawResponse:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return await self.request(
            method,
            partition_key,
            query,
            body,
            {"Content-Type": "application/json"},
            idempotent=idempotent,
            read_timeout=read_timeout,
        )

    # --- single items ------------------------------------------------------------------------

    @staticmethod
    def _item(pk: str, sk: str, resp: RawResponse) -> Item:
        token = resp.headers.get(CAUSALITY_HEADER)
        if token is None:
            raise errors.ProtocolError(f"answer {resp.status} without a causality token", status=resp.status)
        ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        values: list[Value]
        if resp.status == 204:
            values = [None]
        elif ctype == "application/octet-stream":
            values = [resp.body]
        else:
            try:
                values = decode_values(resp.json())
            except (ValueError, TypeError) as e:
                raise errors.ProtocolError(f"unexpected item body: {e}", status=resp.status)
        exp = resp.headers.get(EXPIRES_HEADER)
        return Item(pk, sk, values, CausalityToken(token), int(exp) if exp and exp.isdigit() else None)

    async def read_item(self, partition_key: str, sort_key: str, *, linearizable: bool = False) -> Item:
        """The item's concurrent values and token; :class:`NoSuchKey` if it was never written.

        A deleted item is not an error: its values are ``[None]``. ``linearizable`` makes the
        read a consensus round of the partition: it sees every conditional write and transaction
        acknowledged before it, and settles one left in flight (after a 503, it tells whether
        the write applied: one it does not show never will).
        """
        if sort_key == "":  # `?sort_key=` means "no sort key": go through ReadBatch instead
            if linearizable:  # a read-only transaction is a linearizable read too
                res = (await self.txn(partition_key, success=[Read("")])).results[0]
                item = res.item(partition_key)
                if item is None:
                    raise errors.NoSuchKey("Key not found", status=404, path=self._builder.path(partition_key))
                return item
            page = (await self.read_batch([ReadQuery(partition_key, start="", single_item=True, tombstones=True)]))[0]
            if not page.items:
                raise errors.NoSuchKey("Key not found", status=404, path=self._builder.path(partition_key))
            return page.items[0]
        headers = {"Accept": ACCEPT_ITEM}
        if linearizable:
            headers[CONSISTENCY_HEADER] = "linearizable"
        resp = await self.request("GET", partition_key, [("sort_key", sort_key)], headers=headers, idempotent=True)
        return self._item(partition_key, sort_key, resp)

    @overload
    async def insert_item(
        self,
        partition_key: str,
        sort_key: str,
        value: bytes | str,
        token: TokenLike | None = None,
        *,
        ttl: int | None = None,
    ) -> None: ...

    @overload
    async def insert_item(
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
    async def insert_item(
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
    async def insert_item(
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

    async def insert_item(
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
        """Write ``value`` (``str`` is UTF-8 encoded).

        With the ``token`` of an earlier read, the values that read saw are replaced; without
        one, the value is added next to the existing ones (concurrent values). Returns ``None``.

        Conditional forms (one at a time, never with ``token``) return the item's new token:

        * ``if_match=token``: only if nothing was written since the read that returned ``token``;
        * ``if_match="*"``: only if the item has a live value;
        * ``if_none_match=True``: only if it has none (never written, or deleted).

        A false condition raises :class:`PreconditionFailed` (nothing written) carrying the
        item's ``current_token``. ``ttl``: the value expires that many seconds after it is
        written (it then reads as deleted). Never retried once sent (see the module docstring).
        """
        data = _value_bytes(value)
        cond = self._condition(token, if_match, if_none_match)
        if cond is not None:
            if sort_key == "":
                return await self._conditional_txn(partition_key, sort_key, data, if_match, if_none_match, ttl)
            if ttl is not None:
                cond[TTL_HEADER] = str(ttl)
            resp = await self.request("PUT", partition_key, [("sort_key", sort_key)], data, cond)
            return self._new_token(resp)
        if sort_key == "":
            await self.insert_batch([InsertOp(partition_key, sort_key, data, self._token(token), ttl)])
            return None
        headers = {} if token is None else {CAUSALITY_HEADER: str(token)}
        if ttl is not None:
            headers[TTL_HEADER] = str(ttl)
        await self.request("PUT", partition_key, [("sort_key", sort_key)], data, headers)
        return None

    @overload
    async def delete_item(self, partition_key: str, sort_key: str, token: TokenLike | None = None) -> None: ...

    @overload
    async def delete_item(
        self, partition_key: str, sort_key: str, token: None = None, *, if_match: TokenLike
    ) -> CausalityToken: ...

    @overload
    async def delete_item(
        self, partition_key: str, sort_key: str, token: TokenLike | None = None, *, if_match: TokenLike | None = None
    ) -> CausalityToken | None: ...

    async def delete_item(
        self, partition_key: str, sort_key: str, token: TokenLike | None = None, *, if_match: TokenLike | None = None
    ) -> CausalityToken | None:
        """Write a tombstone. Pass the token of a read to delete exactly what was read; without a
        token the tombstone is only added next to the existing values. Returns ``None``.

        ``if_match=token`` (or ``"*"``, "if it has a live value") deletes only if the condition
        holds and returns the item's new token; :class:`PreconditionFailed` otherwise.
        """
        cond = self._condition(token, if_match, False)
        if cond is not None:
            if sort_key == "":
                return await self._conditional_txn(partition_key, sort_key, None, if_match, False)
            resp = await self.request("DELETE", partition_key, [("sort_key", sort_key)], headers=cond)
            return self._new_token(resp)
        if sort_key == "":
            await self.insert_batch([InsertOp(partition_key, sort_key, None, self._token(token))])
            return None
        headers = {} if token is None else {CAUSALITY_HEADER: str(token)}
        await self.request("DELETE", partition_key, [("sort_key", sort_key)], headers=headers)
        return None

    @staticmethod
    def _condition(token: TokenLike | None, if_match: TokenLike | None, if_none_match: bool) -> dict[str, str] | None:
        """The condition headers of a write, or ``None`` for a plain write; the combinations the
        server refuses with 400 are refused here first."""
        if not isinstance(if_none_match, bool):
            raise TypeError("if_none_match is True or False (it always means `If-None-Match: *`)")
        if if_match is not None and if_none_match:
            raise ValueError("if_match and if_none_match cannot be used together")
        if token is not None and (if_match is not None or if_none_match):
            raise ValueError("a conditional write takes no token: the condition's token is its causal context")
        if if_none_match:
            return {"If-None-Match": "*"}
        if if_match is not None:
            value = str(if_match)
            if not value:
                raise ValueError("if_match is a causality token or '*'")
            return {"If-Match": value}
        return None

    @staticmethod
    def _new_token(resp: RawResponse) -> CausalityToken:
        token = resp.headers.get(CAUSALITY_HEADER)
        if token is None:
            raise errors.ProtocolError(
                f"conditional write answered {resp.status} without the new causality token", status=resp.status
            )
        return CausalityToken(token)

    async def _conditional_txn(
        self,
        partition_key: str,
        sort_key: str,
        value: bytes | None,
        if_match: TokenLike | None,
        if_none_match: bool,
        ttl: int | None = None,
    ) -> CausalityToken:
        """A conditional write as a transaction (for the empty sort key, which a URL cannot name)."""
        if if_none_match:
            cond = Compare.exists(sort_key, False)
        elif str(if_match) == "*":
            cond = Compare.exists(sort_key, True)
        else:
            assert if_match is not None
            cond = Compare.token(sort_key, if_match)
        op: TxnOp = Delete(sort_key) if value is None else Put(sort_key, value, ttl)
        res = await self.txn(partition_key, [cond], [op], [Read(sort_key)])
        if not res.results:
            raise errors.ProtocolError("transaction answered without results", status=200)
        first = res.results[0]
        if not res.succeeded:
            raise errors.PreconditionFailed(
                "the condition of the write is false", current_token=first.token, path=self._builder.path(partition_key)
            )
        if first.token is None:
            raise errors.ProtocolError("transaction write answered without a token", status=200)
        return first.token

    async def poll_item(
        self, partition_key: str, sort_key: str, token: TokenLike, timeout: float | None = None
    ) -> Item | None:
        """Wait until the item is newer than ``token``; ``None`` when ``timeout`` s (server default
        300, clamped to 1..600) pass without a change. ``CausalityToken.EMPTY`` waits for the first
        write of a never-written item."""
        if sort_key == "":
            raise ValueError("PollItem cannot address an empty sort key (use poll_range)")
        t = _clamp_poll(timeout)
        query = [("sort_key", sort_key), ("causality_token", str(token))]
        if timeout is not None:
            query.append(("timeout", str(t)))
        resp = await self.request(
            "GET", partition_key, query, headers={"Accept": ACCEPT_ITEM}, idempotent=True, read_timeout=t + self.timeout
        )
        if resp.status == 304:
            return None
        return self._item(partition_key, sort_key, resp)

    async def watch_item(
        self, partition_key: str, sort_key: str, token: TokenLike | None = None, timeout: float | None = None
    ) -> AsyncIterator[Item]:
        """Yield the item each time it changes (forever; break out to stop).

        Without ``token`` the current state is yielded first (if the item exists).
        """
        if token is None:
            try:
                item = await self.read_item(partition_key, sort_key)
            except errors.NoSuchKey:
                token = CausalityToken.EMPTY
            else:
                token = item.token
                yield item
        while True:
            got = await self.poll_item(partition_key, sort_key, token, timeout)
            if got is not None:
                token = got.token
                yield got

    @staticmethod
    def _token(token: TokenLike | None) -> CausalityToken | None:
        return None if token is None else CausalityToken.coerce(token)

    # --- index -------------------------------------------------------------------------------

    async def read_index(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> IndexPage:
        """One page of the bucket's partition keys with their counters (eventually consistent)."""
        query = [(k, v) for k, v in (("prefix", prefix), ("start", start), ("end", end)) if v is not None]
        if limit is not None:
            query.append(("limit", str(int(limit))))
        if reverse:
            query.append(("reverse", "true"))
        resp = await self.request("GET", None, query, idempotent=True)
        try:
            return IndexPage.from_json(resp.json())
        except (KeyError, TypeError, AttributeError) as e:
            raise errors.ProtocolError(f"unexpected ReadIndex answer: {e!r}", status=resp.status)

    async def iter_index_pages(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        page_size: int = 1000,
    ) -> AsyncIterator[IndexPage]:
        """Every page of ReadIndex, following ``nextStart``."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        while True:
            page = await self.read_index(prefix=prefix, start=start, end=end, limit=page_size, reverse=reverse)
            yield page
            if not page.more or page.next_start is None:
                return
            start = page.next_start

    async def iter_index(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        page_size: int = 1000,
    ) -> AsyncIterator[IndexEntry]:
        """Every partition key of the range, page after page."""
        async for page in self.iter_index_pages(
            prefix=prefix, start=start, end=end, reverse=reverse, page_size=page_size
        ):
            for entry in page.partition_keys:
                yield entry

    # --- batches -----------------------------------------------------------------------------

    async def insert_batch(self, items: Iterable[InsertLike]) -> None:
        """Write many items: ``InsertOp`` or ``(pk, sk, value[, token])``; a ``None`` value deletes.

        Sent in requests of at most 1000 items; not atomic (neither across requests nor across
        partitions). Never retried once sent.
        """
        ops = [_insert_op(i) for i in items]
        for chunk in _chunks(ops, MAX_BATCH):
            await self._json("POST", None, (), [op.to_json() for op in chunk], idempotent=False)

    async def read_batch(self, queries: Sequence[ReadQuery]) -> list[ItemPage]:
        """Run several range (or single-item) reads; one page per query, in order."""
        out: list[ItemPage] = []
        for chunk in _chunks(list(queries), MAX_BATCH):
            resp = await self._json("POST", None, [("search", "")], [q.to_json() for q in chunk], idempotent=True)
            try:
                out.extend(ItemPage.from_json(r) for r in resp.json())
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise errors.ProtocolError(f"unexpected ReadBatch answer: {e!r}", status=resp.status)
        return out

    async def read_range(
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
        """One page of a partition's items (a single-query ReadBatch)."""
        q = ReadQuery(partition_key, prefix, start, end, limit, reverse, False, conflicts_only, tombstones)
        return (await self.read_batch([q]))[0]

    async def iter_range_pages(
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
    ) -> AsyncIterator[ItemPage]:
        """Every page of a range, following ``nextStart`` until ``more`` is false."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        while True:
            page = await self.read_range(
                partition_key,
                prefix=prefix,
                start=start,
                end=end,
                limit=page_size,
                reverse=reverse,
                conflicts_only=conflicts_only,
                tombstones=tombstones,
            )
            yield page
            if not page.more or page.next_start is None:
                return
            start = page.next_start

    async def iter_range(
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
    ) -> AsyncIterator[Item]:
        """Every item of a range, page after page."""
        async for page in self.iter_range_pages(
            partition_key,
            prefix=prefix,
            start=start,
            end=end,
            reverse=reverse,
            conflicts_only=conflicts_only,
            tombstones=tombstones,
            page_size=page_size,
        ):
            for item in page.items:
                yield item

    async def delete_batch(self, queries: Sequence[DeleteQuery]) -> list[DeleteResult]:
        """Delete every live item of each range (or single item); returns the counts, in order."""
        out: list[DeleteResult] = []
        for chunk in _chunks(list(queries), MAX_BATCH):
            resp = await self._json("POST", None, [("delete", "")], [q.to_json() for q in chunk], idempotent=False)
            try:
                out.extend(DeleteResult(DeleteQuery.from_json(r), int(r["deletedItems"])) for r in resp.json())
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise errors.ProtocolError(f"unexpected DeleteBatch answer: {e!r}", status=resp.status)
        return out

    async def delete_range(
        self, partition_key: str, *, prefix: str | None = None, start: str | None = None, end: str | None = None
    ) -> int:
        """Delete every live item of a range of one partition; returns how many were deleted."""
        return (await self.delete_batch([DeleteQuery(partition_key, prefix, start, end)]))[0].deleted_items

    # --- PollRange ---------------------------------------------------------------------------

    async def poll_range(
        self,
        partition_key: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        seen_marker: str | None = None,
        timeout: float | None = None,
    ) -> PollRangeResult | None:
        """Without ``seen_marker``: every item of the range (tombstones included) and a marker, at
        once. With one: wait for items changed since, or ``None`` after ``timeout`` s."""
        payload: dict[str, Any] = {
            k: v
            for k, v in (("prefix", prefix), ("start", start), ("end", end), ("seenMarker", seen_marker))
            if v is not None
        }
        t = _clamp_poll(timeout)
        if timeout is not None:
            payload["timeout"] = t
        resp = await self._json(
            "POST", partition_key, [("poll_range", "")], payload, idempotent=True, read_timeout=t + self.timeout
        )
        if resp.status == 304:
            return None
        try:
            obj = resp.json()
            items = [Item.from_json(partition_key, it) for it in obj["items"]]
            return PollRangeResult(items, obj["seenMarker"], partition_key)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise errors.ProtocolError(f"unexpected PollRange answer: {e!r}", status=resp.status)

    async def watch_range(
        self,
        partition_key: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        seen_marker: str | None = None,
        timeout: float | None = None,
        include_initial: bool = True,
    ) -> AsyncIterator[PollRangeResult]:
        """Yield the changes of a range as they happen (forever; break out to stop).

        Each result carries the ``seen_marker`` to resume from (store it to continue later).
        Without ``seen_marker``, the first result is the whole current range (possibly empty),
        unless ``include_initial`` is false. Poll timeouts are silent.
        """
        marker = seen_marker
        if marker is None:
            first = await self.poll_range(partition_key, prefix=prefix, start=start, end=end)
            if first is None:  # an initial scan never waits
                raise errors.ProtocolError("PollRange without a seen marker answered 304", status=304)
            marker = first.seen_marker
            if include_initial:
                yield first
        while True:
            res = await self.poll_range(
                partition_key, prefix=prefix, start=start, end=end, seen_marker=marker, timeout=timeout
            )
            if res is not None:
                marker = res.seen_marker
                yield res

    # --- PollRanges --------------------------------------------------------------------------

    async def poll_ranges(
        self, ranges: Sequence[RangeLike], *, timeout: float | None = None
    ) -> PollRangesResult | None:
        """One long poll over 1 to 64 ranges (``RangeSpec`` or a partition key for a whole partition).

        Returns as soon as one range has news: a range without a seen marker always has (its
        initial scan), one with a marker once an item changed or appeared since. The answer has
        every range in request order (unchanged ones with no items and their marker); send
        :meth:`PollRangesResult.next_ranges` back to continue. ``None`` after ``timeout`` s
        (server default 300, clamped to 1..600) with no news.
        """
        specs = [RangeSpec.coerce(r) for r in ranges]
        if not 1 <= len(specs) <= MAX_POLL_RANGES:
            raise ValueError(f"poll_ranges takes 1 to {MAX_POLL_RANGES} ranges, got {len(specs)}")
        payload: dict[str, Any] = {"ranges": [r.to_json() for r in specs]}
        t = _clamp_poll(timeout)
        if timeout is not None:
            payload["timeout"] = t
        resp = await self._json(
            "POST", None, [("poll_ranges", "")], payload, idempotent=True, read_timeout=t + self.timeout
        )
        if resp.status == 304:
            return None
        try:
            return PollRangesResult.from_json(specs, resp.json())
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise errors.ProtocolError(f"unexpected PollRanges answer: {e!r}", status=resp.status)

    async def watch(
        self, ranges: Sequence[RangeLike], *, timeout: float | None = None, include_initial: bool = True
    ) -> AsyncIterator[RangeChanges]:
        """Yield each range's changes as they happen (forever; break out to stop).

        Loops on :meth:`poll_ranges`, always sending back the latest markers. Each
        :class:`RangeChanges` carries ``index`` (the range's position in ``ranges``) and the
        ``seen_marker`` that covers it: store them, and pass ``RangeSpec(..., seen_marker=...)``
        later to resume with no change missed (one not yet handled when the process stopped is
        delivered again). Ranges without a marker first yield their current content, unless
        ``include_initial`` is false. Poll timeouts are silent.
        """
        current = [RangeSpec.coerce(r) for r in ranges]
        if not 1 <= len(current) <= MAX_POLL_RANGES:
            raise ValueError(f"watch takes 1 to {MAX_POLL_RANGES} ranges, got {len(current)}")
        silent = set() if include_initial else {i for i, r in enumerate(current) if r.seen_marker is None}
        while True:
            res = await self.poll_ranges(current, timeout=timeout)
            if res is None:
                continue
            current = res.next_ranges()
            for ch in res.ranges:
                if not ch.changed:
                    continue
                if ch.index in silent and ch.range.seen_marker is None:
                    silent.discard(ch.index)  # the initial scan the caller did not ask for
                    continue
                yield ch

    # --- transactions ------------------------------------------------------------------------

    async def txn(
        self,
        partition_key: str,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """A transaction on one partition, decided by one consensus round.

        If every ``compare`` holds the ``success`` ops run, otherwise the ``failure`` ops; the
        writes of the branch become visible together. Returns whether the compares held and one
        :class:`OpResult` per op of the branch that ran. Limits (checked here): 64 compares,
        128 ops per branch, a sort key written at most once per branch. Retried like a read
        when it only reads, never once sent otherwise.
        """
        body = txn_body(list(compare), list(success), list(failure))
        read_only = all(isinstance(op, Read) for op in (*success, *failure))
        resp = await self._json("POST", partition_key, [("txn", "")], body, idempotent=read_only)
        try:
            res = TxnResult.from_json(resp.json())
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise errors.ProtocolError(f"unexpected transaction answer: {e!r}", status=resp.status)
        ran = success if res.succeeded else failure
        if len(res.results) != len(ran):
            raise errors.ProtocolError(
                f"transaction answered {len(res.results)} results for {len(ran)} ops", status=resp.status
            )
        return res
