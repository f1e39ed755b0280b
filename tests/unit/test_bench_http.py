"""The benchmark's HTTP/1.1 client: the incremental response parser, the connection protocol,
and the selftest null server's request framing."""

from __future__ import annotations

import asyncio

import pytest

from garagekv.bench.http import ParseError, ResponseParser, build_request, connect, parse_endpoint
from garagekv.bench.nullserver import NullProtocol, _responses


def feed_all(parser: ResponseParser, data: bytes, step: int | None = None) -> list:
    if step is None:
        return parser.feed(data)
    out = []
    for i in range(0, len(data), step):
        out += parser.feed(data[i : i + step])
    return out


SIMPLE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Garage-Causality-Token: abc\r\n\r\nhello"


@pytest.mark.parametrize("step", [None, 1, 2, 7])
def test_content_length_response_in_any_split(step):
    p = ResponseParser()
    [r] = feed_all(p, SIMPLE, step)
    assert (r.status, r.body, r.will_close) == (200, b"hello", False)
    assert r.headers["x-garage-causality-token"] == "abc"
    assert p.idle


def test_two_responses_in_one_read_and_memoryview_input():
    p = ResponseParser()
    data = SIMPLE + b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"
    rs = p.feed(memoryview(bytearray(data)))
    assert [r.status for r in rs] == [200, 204]
    assert rs[1].body == b""


def test_partial_body_waits():
    p = ResponseParser()
    assert p.feed(SIMPLE[:-2]) == []
    assert not p.idle
    [r] = p.feed(SIMPLE[-2:])
    assert r.body == b"hello"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_even_with_a_length(status):
    p = ResponseParser()
    [r] = p.feed(f"HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n".encode() + SIMPLE)[:1]
    assert r.status == status and r.body == b""


@pytest.mark.parametrize("step", [None, 1, 3])
def test_chunked_with_extensions_and_trailers(step):
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n"
    ) + SIMPLE
    p = ResponseParser()
    rs = feed_all(p, data, step)
    assert [r.body for r in rs] == [b"hello world", b"hello"]
    assert p.idle


def test_chunk_without_crlf_is_an_error():
    p = ResponseParser()
    with pytest.raises(ParseError):
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n")


def test_body_until_close_and_http10():
    p = ResponseParser()
    assert p.feed(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart1") == []
    assert p.feed(b"part2") == []
    r = p.eof()
    assert r.body == b"part1part2" and r.will_close
    assert p.eof() is None


def test_connection_close_and_http10_keepalive():
    [r] = ResponseParser().feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert r.will_close
    [r] = ResponseParser().feed(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert not r.will_close
    [r] = ResponseParser().feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert r.will_close


def test_informational_responses_are_skipped():
    p = ResponseParser()
    assert p.feed(b"HTTP/1.1 100 Continue\r\n\r\n") == []
    [r] = p.feed(SIMPLE)
    assert r.status == 200
    [r] = ResponseParser().feed(b"HTTP/1.1 100 Continue\r\n\r\n" + SIMPLE)
    assert r.status == 200


def test_repeated_headers_are_joined_and_names_lowercased():
    [r] = ResponseParser().feed(b"HTTP/1.1 200 OK\r\nVary: a\r\nVARY: b\r\nContent-Length: 0\r\n\r\n")
    assert r.headers["vary"] == "a, b"


def test_expect_no_body_for_head():
    p = ResponseParser()
    p.expect_no_body()
    [r, r2] = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + SIMPLE)
    assert r.body == b"" and r2.body == b"hello"


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_malformed_responses(data):
    with pytest.raises(ParseError):
        ResponseParser().feed(data)


def test_eof_in_the_middle_of_a_response():
    p = ResponseParser()
    p.feed(SIMPLE[:-1])
    with pytest.raises(ParseError):
        p.eof()


def test_build_request_and_endpoints():
    assert build_request("GET", "/b/pk?sort_key=a", "h:1", {"Accept": "x"}) == (
        b"GET /b/pk?sort_key=a HTTP/1.1\r\nHost: h:1\r\nAccept: x\r\n\r\n"
    )
    assert build_request("PUT", "/b", "h:1") == b"PUT /b HTTP/1.1\r\nHost: h:1\r\nContent-Length: 0\r\n\r\n"
    assert build_request("POST", "/b", "h:1", body=b"[]").endswith(b"Content-Length: 2\r\n\r\n[]")
    assert parse_endpoint("http://127.0.0.1:3904") == ("127.0.0.1", 3904)
    assert parse_endpoint("127.0.0.1:3904") == ("127.0.0.1", 3904)
    assert parse_endpoint("[::1]:80") == ("::1", 80)
    for bad in ("https://x:1", "127.0.0.1", "http://:5"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


# --- the connection, against small servers ------------------------------------------------------


async def _server(handler) -> tuple[asyncio.base_events.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_connection_keepalive_round_trips():
    async def handler(reader, writer):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"Content-Length: 3" in head:
                await reader.readexactly(3)
            # answer in two writes, the body split
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await writer.drain()
            writer.write(b"cd")
            await writer.drain()

    server, port = await _server(handler)
    async with server:
        conn = await connect("127.0.0.1", port)
        for _ in range(3):
            r = await conn.send(build_request("POST", "/x", "h", body=b"abc"))
            assert (r.status, r.body) == (200, b"abcd")
        fut = conn.send(build_request("GET", "/", "h"))
        with pytest.raises(RuntimeError):
            conn.send(build_request("GET", "/", "h"))  # one request at a time
        assert (await fut).body == b"abcd"
        conn.close()


async def test_connection_closed_by_peer_and_timeout():
    async def close_at_once(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server, port = await _server(close_at_once)
    async with server:
        conn = await connect("127.0.0.1", port)
        with pytest.raises(ConnectionError):
            await conn.send(build_request("GET", "/", "h"))
        assert conn.closed
        with pytest.raises(ConnectionError):
            await conn.send(build_request("GET", "/", "h"))

    async def never_answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(10)

    server, port = await _server(never_answer)
    async with server:
        conn = await connect("127.0.0.1", port)
        fut = conn.send(build_request("GET", "/", "h"))
        await asyncio.sleep(0.05)
        conn.timeout()
        with pytest.raises(TimeoutError):
            await fut


async def test_connection_body_until_close():
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    server, port = await _server(handler)
    async with server:
        conn = await connect("127.0.0.1", port)
        r = await conn.send(build_request("GET", "/", "h"))
        assert r.body == b"all of it"


class _Transport:
    def __init__(self) -> None:
        self.out = b""

    def write(self, data: bytes) -> None:
        self.out += data


def test_null_server_frames_pipelined_and_split_requests():
    proto = NullProtocol(_responses(3))
    t = _Transport()
    proto.connection_made(t)
    reqs = (
        build_request("PUT", "/b/pk?sort_key=a", "h", body=b"xyz")
        + build_request("GET", "/b/pk?sort_key=a", "h")
        + build_request("POST", "/b?search", "h", body=b"[{}]")
        + build_request("POST", "/b", "h", body=b"[]")
    )
    for i in range(0, len(reqs), 5):
        proto.data_received(reqs[i : i + 5])
    rs = ResponseParser().feed(t.out)
    assert [r.status for r in rs] == [204, 200, 200, 204]
    assert rs[1].body == b"vvv" and rs[1].headers["x-garage-causality-token"]
    assert rs[2].body == b"[]"
