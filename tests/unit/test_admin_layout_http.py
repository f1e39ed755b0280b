"""Layout and connect endpoints of the admin API, in-process, running the real cluster operations
(the registry's ``OPS``, as the CLI does) on a layout manager of a node that is not started."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from garagekv.admin.health import evaluate
from garagekv.admin.http import AdminApiServer, AdminServices
from garagekv.admin.metrics import NodeMetrics
from garagekv.admin.registry import OPS
from garagekv.rpc.layout.manager import LayoutManager

TOKEN = "layout-unit-token"
SELF, PEER1, PEER2 = b"\x10" * 32, b"\x21" * 32, b"\x22" * 32
UNSEEN = b"\x99" * 32
GB = 1 << 30


@pytest.fixture
async def admin(tmp_path):
    connected: list[tuple[bytes, str]] = []

    async def connect(node_id: bytes, addr: str) -> None:
        if addr.startswith("10.9."):
            raise OSError("connection refused")
        connected.append((node_id, addr))

    system = SimpleNamespace(
        node_id=SELF,
        peers={PEER1: None, PEER2: None},
        layout=LayoutManager(SELF, tmp_path, 3, "consistent"),
        connect=connect,
    )
    ops: list[str] = []

    async def run_op(op: str, args: dict[str, Any]) -> Any:
        ops.append(op)
        return await OPS[op](SimpleNamespace(system=system), args)

    server = AdminApiServer(
        AdminServices(run_op, lambda: evaluate({}, None, "n"), _no_status, NodeMetrics(), "garage", admin_token=TOKEN)
    )
    await server.start("127.0.0.1", 0)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:

        async def call(method: str, path: str, body: Any = None, raw: bytes | None = None):
            data = raw if raw is not None else (None if body is None else json.dumps(body))
            async with session.request(method, path, data=data, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                return r.status, json.loads(await r.read())

        yield system, call, ops, connected
    await server.stop()


async def _no_status() -> dict:
    return {}


def role(node: bytes, zone: str = "z1", capacity: int | None = GB, tags: list[str] | None = None) -> dict:
    return {"id": node.hex(), "zone": zone, "capacity": capacity, "tags": tags or []}


async def test_stage_apply_and_read_the_layout(admin):
    system, call, ops, _ = admin
    assert await call("GET", "/v1/layout") == (200, {"version": 0, "roles": [], "stagedRoleChanges": []})
    changes = [role(SELF, tags=["a"]), {**role(PEER1, "z2"), "id": PEER1.hex()[:6]}, role(PEER2, "z3", None)]
    status, layout = await call("POST", "/v1/layout", changes)
    assert status == 200 and layout["version"] == 0 and layout["roles"] == []
    assert sorted(layout["stagedRoleChanges"], key=lambda c: c["id"]) == [
        role(SELF, tags=["a"]),
        role(PEER1, "z2"),
        role(PEER2, "z3", None),
    ]
    assert ops == ["layout.get", "layout.stage"]

    # Apply needs the next version, as the CLI's `layout apply --version`.
    status, err = await call("POST", "/v1/layout/apply", {})
    assert status == 400 and "version" in err["message"]
    status, err = await call("POST", "/v1/layout/apply", {"version": 5})
    assert status == 400
    assert (
        err["message"] == "Invalid new layout version 5: the current version is 0, so the next one is 1 (--version 1)"
    )
    # Three zones, one a gateway: rf 3 needs three storage nodes.
    status, err = await call("POST", "/v1/layout/apply", {"version": 1})
    assert status == 400, err
    await call("POST", "/v1/layout", [role(PEER2, "z3")])
    status, res = await call("POST", "/v1/layout/apply", {"version": 1})
    assert status == 200 and isinstance(res["message"], list) and res["message"]
    assert res["layout"]["version"] == 1 and res["layout"]["stagedRoleChanges"] == []
    assert sorted(r["id"] for r in res["layout"]["roles"]) == sorted(n.hex() for n in (SELF, PEER1, PEER2))
    assert system.layout.history.current().version == 1
    # The CLI's own view (the same operations) agrees.
    st = await OPS["cluster.status"](
        SimpleNamespace(system=SimpleNamespace(**vars(system), public_addr="x", hostname="h", is_up=lambda n: True)), {}
    )
    assert st["layout_version"] == 1 and all(n["role"] is not None for n in st["nodes"])
    status, layout = await call("POST", "/v1/layout", [{"id": PEER1.hex(), "remove": True}])
    assert status == 200 and layout["stagedRoleChanges"] == [{"id": PEER1.hex(), "remove": True}]


async def test_removal_revert_and_unknown_full_ids(admin):
    system, call, _, _ = admin
    # Removing the role of a node that has none changes nothing; a full id need not be known yet.
    status, layout = await call("POST", "/v1/layout", [{"id": PEER1.hex(), "remove": True}, role(UNSEEN)])
    assert status == 200 and layout["stagedRoleChanges"] == [role(UNSEEN)]
    status, err = await call("POST", "/v1/layout/revert", {"version": 7})
    assert status == 400 and err["message"].startswith("Invalid new layout version 7: ")
    assert system.layout.history.has_staged_changes()
    status, layout = await call("POST", "/v1/layout/revert", {"version": 1})
    assert status == 200 and layout["stagedRoleChanges"] == []
    await call("POST", "/v1/layout", [role(SELF)])
    status, layout = await call("POST", "/v1/layout/revert")  # no body: as in Garage, the version is optional
    assert status == 200 and layout == {"version": 0, "roles": [], "stagedRoleChanges": []}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"id": "x"}, "list of role changes"),
        ([role(SELF), {"id": PEER1.hex(), "remove": False}], "remove: true"),
        ([{"id": PEER1.hex(), "remove": True, "zone": "z"}], "remove: true"),
        ([{"zone": "z1", "capacity": 1}], "missing node id"),
        ([{"id": "2", "zone": "z1", "capacity": 1}], "matches 2 nodes"),
        ([{"id": "ff", "zone": "z1", "capacity": 1}], "No node matches"),
        ([{"id": "zz" * 32, "zone": "z1", "capacity": 1}], "invalid node id"),
        ([{"id": SELF.hex(), "capacity": 1}], "missing zone"),
        ([{"id": SELF.hex(), "zone": "z", "capacity": "1G"}], "capacity must be a number"),
        ([{"id": SELF.hex(), "zone": "z", "capacity": 0}], "Invalid capacity value"),
        ([{"id": SELF.hex(), "zone": "z" * 256, "capacity": 1}], "at most 255 bytes"),
        ([{"id": SELF.hex(), "zone": "z", "capacity": 1, "tags": ["t"] * 33}], "at most 32 tags"),
        ([{"id": SELF.hex(), "zone": "z", "capacity": 1, "tags": "a"}], "tags must be a list"),
        (["nope"], "expected an object"),
    ],
)
async def test_invalid_changes_stage_nothing(admin, body, message):
    system, call, _, _ = admin
    status, err = await call("POST", "/v1/layout", body)
    assert status == 400 and err["code"] == "InvalidRequest" and message in err["message"], err
    assert not system.layout.history.has_staged_changes()


async def test_connect_answers_per_peer(admin):
    _, call, ops, connected = admin
    peers = [f"{PEER1.hex()}@127.0.0.1:3901", "garbage", f"{PEER2.hex()}@10.9.0.1:3901"]
    status, res = await call("POST", "/v1/connect", peers)
    assert status == 200 and [r["success"] for r in res] == [True, False, False]
    assert res[0]["error"] is None and "invalid peer" in res[1]["error"] and "refused" in res[2]["error"]
    assert connected == [(PEER1, "127.0.0.1:3901")] and ops == ["node.connect"] * 3
    for bad in ({"peers": []}, [1]):
        status, err = await call("POST", "/v1/connect", bad)
        assert status == 400 and err["code"] == "InvalidRequest"


async def test_errors_keep_their_class(admin):
    _, call, _, _ = admin
    status, err = await call("POST", "/v1/layout", raw=b"[not json")
    assert status == 400 and "Invalid JSON" in err["message"]
    status, err = await call("POST", "/v1/layout/apply", raw=b"[1]")
    assert status == 400 and "must be an object" in err["message"]
    status, err = await call("POST", "/v1/layout/apply", {"version": "1"})
    assert status == 400 and "version" in err["message"]
