"""A do-nothing HTTP/1.1 server for ``garagekv bench --selftest``: the generator's own ceiling.

It frames requests (head + ``Content-Length`` body), ignores their content and answers each with
a canned K2V-shaped response (204 to writes, a raw value with a causality token to reads, ``[]``
to POSTs with a query), so the generator does all its usual work (building and signing requests,
parsing responses) while the server costs next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from multiprocessing.connection import Connection

from garagekv.util.loop import new_runner

_TOKEN = "AAAAAAAAAAA"  # the empty causal context: a valid token


def _responses(value_size: int) -> dict[bytes, bytes]:
    value = b"v" * value_size
    return {
        b"GET": (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"X-Garage-Causality-Token: " + _TOKEN.encode() + b"\r\n"
            b"Content-Length: " + str(len(value)).encode() + b"\r\n\r\n" + value
        ),
        b"PUT": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"DELETE": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"POST?": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]",
        b"POST": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"": (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"),
    }


class NullProtocol(asyncio.Protocol):
    def __init__(self, responses: dict[bytes, bytes]) -> None:
        self.responses = responses
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            length = 0
            i = head.lower().find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                break
            line_end = head.find(b"\r\n")
            method, _, rest = head[:line_end].partition(b" ")
            key = method + b"?" if method == b"POST" and b"?" in rest.split(b" ", 1)[0] else method
            out.append(self.responses.get(key) or self.responses[b""])
            buf = buf[total:]
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(sock: socket.socket, value_size: int = 100) -> None:
    loop = asyncio.get_running_loop()
    responses = _responses(value_size)
    server = await loop.create_server(lambda: NullProtocol(responses), sock=sock, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def run_process(conn: Connection, value_size: int = 100) -> None:
    """Entry of the selftest server process: bind 127.0.0.1:0, send the port back, serve."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # before telling the parent: it connects right away
    conn.send((sock.getsockname()[1], os.getpid()))
    conn.close()

    with new_runner() as runner:
        runner.run(serve(sock, value_size))
