"""A lean HTTP/1.1 keep-alive client for load generation, on asyncio transports.

A full client (aiohttp's costs about 87 us of CPU per request) would make the generator the
bottleneck. Here a request is a ``bytes`` object built by the caller, written in one call, and
answered by a future that an incremental parser resolves from ``data_received``: no stream
reader, no per-request task, no header multidict. One request in flight per connection (closed
loop); responses with ``Content-Length``, chunked bodies, no body (1xx/204/304) and bodies that
end with the connection are understood.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

__all__ = ["HttpConnection", "ParseError", "Response", "ResponseParser", "build_request", "connect", "parse_endpoint"]

_MAX_HEAD = 64 * 1024
_READ_BUFFER = 64 * 1024


class ParseError(Exception):
    """The server sent something that is not an HTTP/1.x response."""


class Response:
    """One response: status, headers (lowercase names; repeated ones joined by ``, ``), body."""

    __slots__ = ("status", "headers", "body", "will_close")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, will_close: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.will_close = will_close

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"


# body modes
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class ResponseParser:
    """Incremental HTTP/1.x response parser: :meth:`feed` bytes, get complete responses back.

    ``expect_no_body()`` must be called before the response to a HEAD request (we send none,
    but the parser supports it for completeness of the framing rules).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: tuple[int, dict[str, str], bool] | None = None  # parsed head awaiting its body
        self._mode = _NONE
        self._need = 0  # _LENGTH: bytes still missing
        self._chunks: list[bytes] = []
        self._in_trailer = False
        self._no_body_next = 0

    def expect_no_body(self) -> None:
        self._no_body_next += 1

    @property
    def idle(self) -> bool:
        """No partial response is buffered."""
        return self._head is None and not self._buf

    def feed(self, data: bytes | memoryview) -> list[Response]:
        buf = self._buf
        buf += data
        out: list[Response] = []
        while True:
            if self._head is None and not self._parse_head():
                return out
            resp = self._parse_body()
            if resp is None:
                return out
            out.append(resp)

    def eof(self) -> Response | None:
        """The connection closed: the body that was delimited by the close, if one was pending."""
        if self._head is not None and self._mode == _UNTIL_CLOSE:
            status, headers, _ = self._head
            body = bytes(self._buf)
            self._buf.clear()
            self._head = None
            return Response(status, headers, body, True)
        if self._head is not None or self._buf:
            raise ParseError("connection closed in the middle of a response")
        return None

    def _parse_head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise ParseError("response head too large")
            return False
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        lines = head.split("\r\n")
        status_line = lines[0]
        if not status_line.startswith("HTTP/1."):
            raise ParseError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        try:
            status = int(status_line[9:12])
        except ValueError:
            raise ParseError(f"bad status line: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ParseError(f"bad header line: {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            prev = headers.get(name)
            headers[name] = value if prev is None else f"{prev}, {value}"
        if 100 <= status < 200:
            return bool(self._buf and self._parse_head())  # skip informational responses
        http10 = status_line.startswith("HTTP/1.0")
        conn = headers.get("connection", "").lower()
        will_close = "close" in conn or (http10 and "keep-alive" not in conn)
        if self._no_body_next:
            self._no_body_next -= 1
            self._mode = _NONE
        elif status in (204, 304):
            self._mode = _NONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = _CHUNKED
            self._chunks = []
            self._in_trailer = False
        elif "content-length" in headers:
            try:
                self._need = int(headers["content-length"])
            except ValueError:
                raise ParseError(f"bad content-length: {headers['content-length']!r}")
            if self._need < 0:
                raise ParseError("negative content-length")
            self._mode = _LENGTH
        else:
            self._mode = _UNTIL_CLOSE
            will_close = True
        self._head = (status, headers, will_close)
        return True

    def _parse_body(self) -> Response | None:
        mode = self._mode
        buf = self._buf
        if mode == _NONE:
            body = b""
        elif mode == _LENGTH:
            n = self._need
            if len(buf) < n:
                return None
            body = bytes(buf[:n])
            del buf[:n]
        elif mode == _CHUNKED:
            chunked = self._parse_chunks()
            if chunked is None:
                return None
            body = chunked
        else:
            return None  # until close: see eof()
        assert self._head is not None  # called only once a head is parsed
        status, headers, will_close = self._head
        self._head = None
        return Response(status, headers, body, will_close)

    def _parse_chunks(self) -> bytes | None:
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return None
            if self._in_trailer:
                del buf[: eol + 2]
                if eol == 0:
                    self._in_trailer = False
                    body = b"".join(self._chunks)
                    self._chunks = []
                    return body
                continue
            size_text = bytes(buf[:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ParseError(f"bad chunk size: {size_text[:20]!r}")
            if size == 0:
                del buf[: eol + 2]
                self._in_trailer = True
                continue
            if len(buf) < eol + 2 + size + 2:
                return None
            self._chunks.append(bytes(buf[eol + 2 : eol + 2 + size]))
            if buf[eol + 2 + size : eol + 4 + size] != b"\r\n":
                raise ParseError("chunk not followed by CRLF")
            del buf[: eol + 4 + size]


class HttpConnection(asyncio.BufferedProtocol):
    """One keep-alive connection; :meth:`send` writes a whole request and returns its future.

    A buffered protocol: the transport reads into one preallocated buffer (``recv_into``)
    instead of allocating a fresh 256 KiB ``bytes`` per read.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.waiter: asyncio.Future[Response] | None = None
        self.sent_at = 0.0  # loop time of the pending request (for timeouts)
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._rbuf = memoryview(bytearray(_READ_BUFFER))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._rbuf[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            responses = self.parser.feed(data)
        except ParseError as e:
            self._fail(e)
            return
        for resp in responses:
            w = self.waiter
            self.waiter = None
            if w is not None and not w.done():
                w.set_result(resp)
            if resp.will_close:
                self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            resp = self.parser.eof()
        except ParseError as e:
            resp, exc = None, e
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            if resp is not None:
                w.set_result(resp)
            else:
                w.set_exception(exc if isinstance(exc, Exception) else ConnectionResetError("connection closed"))

    def send(self, data: bytes, no_body: bool = False) -> asyncio.Future[Response]:
        """Write one request; the future gets the :class:`Response` (or a connection error)."""
        fut = self._loop.create_future()
        if self.closed or self.transport is None:
            fut.set_exception(ConnectionResetError("connection closed"))
            return fut
        if self.waiter is not None:
            raise RuntimeError("one request at a time per connection")
        if no_body:
            self.parser.expect_no_body()
        self.waiter = fut
        self.sent_at = self._loop.time()
        self.transport.write(data)
        return fut

    def _fail(self, exc: Exception) -> None:
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            w.set_exception(exc)
        self.abort()

    def timeout(self) -> None:
        """Give up on the pending request (its future gets ``TimeoutError``) and drop the connection."""
        self._fail(TimeoutError("request timed out"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


async def connect(host: str, port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(HttpConnection, host, port)
    return proto


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://127.0.0.1:3904``, ``127.0.0.1:3904`` or ``[::1]:3904`` -> (host, port)."""
    if "//" not in endpoint:
        endpoint = "http://" + endpoint
    parts = urlsplit(endpoint)
    if parts.scheme != "http":
        raise ValueError(f"only plain http:// endpoints are supported, got {endpoint!r}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"endpoint needs a host and a port, got {endpoint!r}")
    return parts.hostname, parts.port


def build_request(
    method: str, target: str, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """The bytes of one request (``Content-Length`` is added for bodies and for PUT/POST)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if headers:
        lines.extend(f"{k}: {v}" for k, v in headers.items())
    if body or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
