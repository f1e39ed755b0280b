"""One benchmark connection: its target (K2V, etcd or Hulykvs), reconnecting sends and error codes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from garagekv.bench.config import HULY_MIXES, BenchConfig, host_header
from garagekv.bench.http import HttpConnection, ParseError, Response, connect, parse_endpoint
from garagekv.bench.workload import HulyTarget, Target, make_target, mint_huly_token
from garagekv.util.signing import SigningKeyCache

CONNECT_TIMEOUT = 5.0


class Conn:
    __slots__ = ("index", "host", "port", "target", "http")

    def __init__(self, index: int, host: str, port: int, target: Target) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.target = target
        self.http: HttpConnection | None = None


def make_conn(cfg: BenchConfig, index: int, keys: SigningKeyCache) -> Conn:
    if cfg.mix in HULY_MIXES:
        # a Hulykvs client: its own token (minted once, as a service does at start-up)
        host, port = parse_endpoint(cfg.hulykvs_endpoints[index % len(cfg.hulykvs_endpoints)])
        token = cfg.hulykvs_token or mint_huly_token(cfg.hulykvs_secret, cfg.hulykvs_workspace)
        return Conn(index, host, port, HulyTarget(host_header(host, port), cfg.hulykvs_workspace, token))
    host, port = parse_endpoint(cfg.endpoints[index % len(cfg.endpoints)])
    target: Target = make_target(
        cfg.target, host_header(host, port), cfg.bucket, cfg.access_key_id, cfg.secret_access_key, cfg.region, keys
    )
    return Conn(index, host, port, target)


async def send(c: Conn, req: bytes) -> Response | str:
    """One request on the connection (reconnecting if needed): the response or an error code."""
    http = c.http
    try:
        if http is None or http.closed:
            http = c.http = await asyncio.wait_for(connect(c.host, c.port), CONNECT_TIMEOUT)
        return await http.send(req)
    except TimeoutError:
        code = "timeout"
    except ParseError:
        code = "bad-response"
    except OSError:
        code = "connection"
    if c.http is not None:
        c.http.abort()
        c.http = None
    return code


async def run_on_all(conns: list[Conn], run: Callable[[Conn], Awaitable[None]]) -> None:
    """``run`` on every connection at once; the connections are closed whatever happens."""
    try:
        await asyncio.gather(*(run(c) for c in conns))
    finally:
        for c in conns:
            if c.http is not None:
                c.http.close()


def describe(r: Response | str) -> str:
    if isinstance(r, str):
        return r
    return f"HTTP {r.status} {r.body[:200].decode('utf-8', 'replace')}"
