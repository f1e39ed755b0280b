"""The node's local control socket: how the CLI on the same machine runs operator commands.

A Unix socket in ``metadata_dir`` (mode 0600, so only the node's user can use it) carrying
length-prefixed msgpack ``{op, args}`` requests and ``{ok, result | error}`` answers. Errors keep
their code so the CLI can print them precisely.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from garagekv.util import codec
from garagekv.util.errors import GarageKVError, ServiceUnavailable, error_from_code

SOCKET_NAME = "admin.sock"
MAX_FRAME = 16 * 1024 * 1024

Dispatch = Callable[[str, dict[str, Any]], Awaitable[Any]]


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    if n > MAX_FRAME:
        raise ValueError("frame too large")
    return codec.decode(await reader.readexactly(n))


def _frame(obj: Any) -> bytes:
    data = codec.encode(obj)
    return struct.pack(">I", len(data)) + data


class ControlServer:
    def __init__(self, metadata_dir: Path, dispatch: Dispatch) -> None:
        self.path = Path(metadata_dir) / SOCKET_NAME
        self.dispatch = dispatch
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    req = await _read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except Exception:  # noqa: BLE001 - garbage from a client closes its connection
                    return
                try:
                    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                        raise ValueError("bad request")
                    result = await self.dispatch(req["op"], req.get("args") or {})
                    resp = {"ok": True, "result": result}
                except GarageKVError as e:
                    resp = {"ok": False, "code": e.code, "message": e.message}
                except Exception as e:  # noqa: BLE001 - reported to the operator
                    resp = {"ok": False, "code": "InternalError", "message": str(e)}
                writer.write(_frame(resp))
                await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def call(metadata_dir: Path, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """Run one operation on the node that owns ``metadata_dir``."""
    path = Path(metadata_dir) / SOCKET_NAME
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (OSError, TimeoutError) as e:
        raise ServiceUnavailable(f"cannot reach the garagekv node at {path}: is it running? ({e})")
    try:
        writer.write(_frame({"op": op, "args": args or {}}))
        await writer.drain()
        resp = await asyncio.wait_for(_read_frame(reader), timeout)
    finally:
        writer.close()
    if resp.get("ok"):
        return resp.get("result")
    raise error_from_code(resp.get("code", "InternalError"), resp.get("message", ""))
