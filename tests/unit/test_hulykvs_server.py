"""The Hulykvs listener in-process over an in-memory store: the handlers need only the HulyStore
interface (so the consensus-backed store can replace the K2V one), and the refusal gate."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from garagekv.api.hulykvs.auth import SYSTEM_ACCOUNT, mint
from garagekv.api.hulykvs.conditions import Condition, md5_hex
from garagekv.api.hulykvs.context import HulyState
from garagekv.api.hulykvs.server import HulykvsApiServer
from garagekv.api.hulykvs.store import PreconditionFailed, Stored

SECRET = "k" * 32
WS = "0f1e2d3c-4b5a-4678-9abc-def012345678"


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str, str], bytes] = {}

    async def get(self, workspace: str, namespace: str, key: str) -> Stored | None:
        v = self.data.get((workspace, namespace, key))
        return None if v is None else Stored(v, md5_hex(v))

    async def list(self, workspace: str, namespace: str, prefix: str | None) -> list[str]:
        keys = [k for (w, n, k) in self.data if (w, n) == (workspace, namespace) and k.startswith(prefix or "")]
        return sorted(keys, key=str.encode)

    async def put(self, workspace: str, namespace: str, key: str, value: bytes, condition: Condition) -> bool:
        cur = self.data.get((workspace, namespace, key))
        if not condition.holds(None if cur is None else md5_hex(cur)):
            raise PreconditionFailed()
        self.data[(workspace, namespace, key)] = value
        return cur is None

    async def delete(self, workspace: str, namespace: str, key: str, condition: Condition) -> bool:
        cur = self.data.get((workspace, namespace, key))
        if not condition.holds(None if cur is None else md5_hex(cur)):
            raise PreconditionFailed()
        return self.data.pop((workspace, namespace, key), None) is not None


@pytest.fixture
async def served():
    refusal: list[str | None] = [None]
    state = HulyState(MemoryStore(), SECRET, WS, 1024, refusal=lambda: refusal[0])
    server = HulykvsApiServer(state)
    seen: list[tuple[str | None, int]] = []
    server.observer = lambda request, endpoint, status, seconds: seen.append((endpoint, status))
    await server.start("127.0.0.1", 0)
    auth = {"Authorization": f"Bearer {mint(SECRET, SYSTEM_ACCOUNT)}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}", headers=auth) as session:
        yield session, refusal, seen
    await server.stop()


async def test_handlers_over_another_store(served):
    session, _, seen = served
    async with session.put(f"/api2/{WS}/ns/k", data=b"v", headers={"If-None-Match": "*"}) as r:
        assert r.status == 201
    async with session.get(f"/api2/{WS}/ns/k") as r:
        assert (r.status, await r.read(), r.headers["ETag"]) == (200, b"v", md5_hex(b"v"))
    async with session.get("/api/ns") as r:
        assert await r.json() == {"namespace": "ns", "count": 1, "keys": ["k"]}  # WS is the v1 workspace
    async with session.delete(f"/api2/{WS}/ns/k", headers={"If-Match": md5_hex(b"x")}) as r:
        assert r.status == 412
    async with session.put(f"/api2/{WS}/ns/k", data=b"x" * 1025) as r:
        assert r.status == 413
    assert seen == [("Put", 201), ("Get", 200), ("V1List", 200), ("Delete", 412), ("Put", 413)]


async def test_refusal_is_503_except_for_probes(served):
    session, refusal, _ = served
    refusal[0] = "no layout yet"
    for method, path in [("GET", f"/api2/{WS}/ns/k"), ("PUT", f"/api2/{WS}/ns/k"), ("GET", "/api/ns")]:
        async with session.request(method, path, data=b"v") as r:
            assert (r.status, await r.json()) == (503, {"error": "no layout yet"})
    async with session.get("/status") as r:
        assert r.status == 200
    refusal[0] = None
    async with session.put(f"/api2/{WS}/ns/k", data=b"v") as r:
        assert r.status == 204
    await asyncio.sleep(0)
