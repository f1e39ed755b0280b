"""K2V client retry policy and transport behaviour, against a scripted in-process HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
from aiohttp import web

from garagekv.client import (
    AccessDenied,
    InternalError,
    K2VClientSync,
    K2VConnectionError,
    K2VTimeoutError,
    ProtocolError,
    ServiceUnavailable,
)
from tests.support.scripted_server import INDEX, Script, client, err


async def test_reads_are_retried_on_503(serve):
    s = Script(
        lambda: err(503, "ServiceUnavailable"), lambda: err(500, "InternalError"), lambda: web.json_response(INDEX)
    )
    async with client(await serve(s)) as c:
        page = await c.read_index()
    assert page.partition_keys == [] and len(s.seen) == 3
    # every attempt is signed afresh
    assert all(r.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ") for r in s.seen)


async def test_retries_are_bounded(serve):
    s = Script(lambda: err(503, "ServiceUnavailable"))
    async with client(await serve(s), max_retries=2) as c:
        with pytest.raises(ServiceUnavailable) as ei:
            await c.read_item("p", "s")
    assert ei.value.status == 503 and len(s.seen) == 3


async def test_writes_are_never_retried_after_sending(serve):
    s = Script(lambda: err(503, "ServiceUnavailable"), lambda: web.Response(status=204))
    async with client(await serve(s)) as c:
        with pytest.raises(ServiceUnavailable):
            await c.insert_item("p", "s", b"v")  # token-less: a replay would create a sibling
        assert len(s.seen) == 1
        with pytest.raises(ServiceUnavailable):
            s.steps = [lambda: err(503, "ServiceUnavailable"), lambda: web.Response(status=204)]
            await c.insert_item("p", "s", b"v", token="AAAAAAAAAAA")
        assert len(s.seen) == 2
        for call in (c.delete_item("p", "s"), c.insert_batch([("p", "s", b"v")]), c.delete_range("p")):
            s.steps = [lambda: err(500, "InternalError"), lambda: web.Response(status=204)]
            with pytest.raises(InternalError):
                await call
        assert len(s.seen) == 5


async def test_4xx_is_not_retried(serve):
    s = Script(lambda: err(403, "AccessDenied"))
    async with client(await serve(s)) as c:
        with pytest.raises(AccessDenied):
            await c.read_index()
    assert len(s.seen) == 1


async def test_read_timeout_is_retried_for_reads_only(serve):
    s = Script(1.0, lambda: web.json_response(INDEX))
    async with client(await serve(s), timeout=0.2) as c:
        await c.read_index()
        assert len(s.seen) == 2
        s.steps = [1.0, lambda: web.Response(status=204)]
        with pytest.raises(K2VTimeoutError):
            await c.insert_item("p", "s", b"v")
        assert len(s.seen) == 3


async def test_connection_refused_is_a_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(f"http://127.0.0.1:{port}", max_retries=1) as c:
        with pytest.raises(K2VConnectionError) as ei:
            await c.insert_item("p", "s", b"v")  # nothing was sent: safe to retry, then give up
    assert ei.value.status is None and "cannot connect" in ei.value.message


async def test_poll_timeout_extends_read_timeout(serve):
    async def slow_304():  # the server holds the poll longer than the request timeout: not a client timeout
        await asyncio.sleep(0.4)
        return web.Response(status=304)

    s = Script(slow_304)
    async with client(await serve(s), timeout=0.2) as c:
        assert await c.poll_item("p", "s", "AAAAAAAAAAA", timeout=1) is None
    assert s.seen[0].query["timeout"] == "1" and len(s.seen) == 1


async def test_wire_format_of_item_calls(serve):
    ok = web.Response(
        status=200, body=b"raw", headers={"X-Garage-Causality-Token": "T1", "Content-Type": "application/octet-stream"}
    )
    s = Script(lambda: ok)
    async with client(await serve(s)) as c:
        item = await c.read_item("a/b c", "x&y")
    r = s.seen[0]
    assert r.raw_path == "/b/a%2Fb%20c?sort_key=x%26y"
    assert r.headers["Accept"] == "application/octet-stream, application/json"
    assert item.values == [b"raw"] and item.token.value == "T1"


@pytest.mark.parametrize(
    ("resp", "values"),
    [
        (
            lambda: web.Response(
                status=204, headers={"X-Garage-Causality-Token": "T", "Content-Type": "application/octet-stream"}
            ),
            [None],
        ),
        (
            lambda: web.Response(
                status=200,
                body=b'["YQ==",null]',
                headers={"X-Garage-Causality-Token": "T", "Content-Type": "application/json"},
            ),
            [b"a", None],
        ),
        (
            lambda: web.Response(
                status=200,
                body=b"",
                headers={"X-Garage-Causality-Token": "T", "Content-Type": "application/octet-stream"},
            ),
            [b""],
        ),
    ],
)
async def test_item_answer_forms(serve, resp, values):
    async with client(await serve(Script(resp))) as c:
        assert (await c.read_item("p", "s")).values == values


async def test_protocol_errors(serve):
    s = Script(lambda: web.Response(status=200, body=b"[]", content_type="application/json"))
    async with client(await serve(s)) as c:
        with pytest.raises(ProtocolError, match="causality token"):
            await c.read_item("p", "s")
        s.steps = [lambda: web.Response(status=200, body=b"not json")]
        with pytest.raises(ProtocolError):
            await c.read_index()


async def test_batches_are_split_at_1000(serve):
    s = Script(lambda: web.Response(status=204))
    async with client(await serve(s)) as c:
        await c.insert_batch((f"p{i}", "s", b"v") for i in range(2500))
        await c.insert_batch([])
    assert [len(json.loads(b)) for b in s.bodies] == [1000, 1000, 500]
    assert json.loads(s.bodies[0])[0] == {"pk": "p0", "sk": "s", "ct": None, "v": "dg=="}


def test_sync_wrapper_runs_on_private_loop():
    s = Script(lambda: web.json_response(INDEX))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(web.Application())
    runner.app.router.add_route("*", "/{tail:.*}", s.handle)

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    try:
        endpoint = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
        with K2VClientSync(endpoint=endpoint, access_key_id="GKx", secret_access_key="s", bucket="b") as c:
            assert c.read_index().partition_keys == []
            assert list(c.iter_index()) == []
            assert c.async_client._session is not None
        assert len(s.seen) == 2
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
