"""The admin HTTP server in-process, with fake node services: routing, auth, error bodies, op mapping."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from garagekv.admin.health import ClusterHealth, evaluate
from garagekv.admin.http import AdminApiServer, AdminServices, Route, json_response
from garagekv.admin.metrics import NodeMetrics
from garagekv.util.errors import BucketNotEmpty, NoSuchAccessKey

TOKEN = "unit-admin-token"
BID = "ab" * 32
KID = "GK" + "01" * 12


class FakeNode:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.cluster: ClusterHealth | None = None
        self.errors: dict[str, Exception] = {}

    async def run_op(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append((op, args))
        if op in self.errors:
            raise self.errors[op]
        return {"op": op}

    def health(self):
        return evaluate({"running": "ok", "database": "ok", "k2vApi": "ok"}, self.cluster, "node-id")

    async def status(self) -> dict:
        return {"node": "node-id", "layout": None}


@pytest.fixture
async def admin():
    node = FakeNode()
    server = AdminApiServer(
        AdminServices(node.run_op, node.health, node.status, NodeMetrics(), "garage", admin_token=TOKEN)
    )
    await server.start("127.0.0.1", 0)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:

        async def call(method: str, path: str, body: Any = None, token: str | None = TOKEN, raw: bytes | None = None):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            data = raw if raw is not None else (None if body is None else json.dumps(body))
            async with session.request(method, path, data=data, headers=headers) as r:
                out = await r.read()
                return r.status, (json.loads(out) if out and r.content_type == "application/json" else out), r

        yield node, server, call
    await server.stop()


async def test_op_mapping(admin):
    node, _, call = admin
    cases = [
        ("GET", "/v1/key", None, ("key.list", {})),
        ("GET", "/v1/key?list", None, ("key.list", {})),
        ("GET", f"/v1/key?id={KID}", None, ("key.info", {"id": KID, "show_secret": False})),
        ("GET", f"/v1/key?id={KID}&showSecretKey=true", None, ("key.info", {"id": KID, "show_secret": True})),
        ("GET", "/v1/key?search=app", None, ("key.info", {"pattern": "app", "show_secret": False})),
        ("POST", "/v1/key", {"name": "n"}, ("key.create", {"name": "n"})),
        ("POST", "/v1/key", None, ("key.create", {"name": None})),
        (
            "POST",
            "/v1/key/import",
            {"accessKeyId": KID, "secretAccessKey": "s", "name": "i"},
            ("key.import", {"key_id": KID, "secret": "s", "name": "i"}),
        ),
        (
            "POST",
            f"/v1/key?id={KID}",
            {"name": "r", "allow": {"createBucket": True}},
            ("key.update", {"id": KID, "name": "r", "allow_create_bucket": True}),
        ),
        (
            "POST",
            f"/v1/key?id={KID}",
            {"deny": {"createBucket": True}},
            ("key.update", {"id": KID, "name": None, "allow_create_bucket": False}),
        ),
        ("POST", f"/v1/key?id={KID}", {}, ("key.update", {"id": KID, "name": None, "allow_create_bucket": None})),
        ("GET", "/v1/bucket", None, ("bucket.list", {})),
        ("GET", f"/v1/bucket?id={BID}", None, ("bucket.info", {"id": BID})),
        ("GET", "/v1/bucket?globalAlias=web", None, ("bucket.info", {"global_alias": "web"})),
        ("POST", "/v1/bucket", {"globalAlias": "web"}, ("bucket.create", {"global_alias": "web"})),
        (
            "POST",
            "/v1/bucket",
            {"localAlias": {"accessKeyId": KID, "alias": "l", "allow": {"read": True}}},
            (
                "bucket.create",
                {
                    "global_alias": None,
                    "local_alias": "l",
                    "local_key_id": KID,
                    "local_permissions": {"read": True, "write": False, "owner": False},
                },
            ),
        ),
        ("PUT", f"/v1/bucket/alias/global?id={BID}&alias=g", None, ("bucket.alias", {"id": BID, "alias": "g"})),
        ("DELETE", f"/v1/bucket/alias/global?id={BID}&alias=g", None, ("bucket.unalias", {"id": BID, "alias": "g"})),
        (
            "PUT",
            f"/v1/bucket/alias/local?id={BID}&accessKeyId={KID}&alias=l",
            None,
            ("bucket.alias", {"id": BID, "alias": "l", "local_key_id": KID}),
        ),
        (
            "DELETE",
            f"/v1/bucket/alias/local?id={BID}&accessKeyId={KID}&alias=l",
            None,
            ("bucket.unalias", {"id": BID, "alias": "l", "local_key_id": KID}),
        ),
    ]
    for method, path, body, expected in cases:
        node.calls.clear()
        status, data, _ = await call(method, path, body)
        assert status == 200, (method, path, data)
        assert node.calls == [expected], (method, path)
        assert data == {"op": expected[0]}


async def test_deletes_answer_204(admin):
    node, _, call = admin
    status, data, _ = await call("DELETE", f"/v1/key?id={KID}")
    assert status == 204 and data == b"" and node.calls == [("key.delete", {"id": KID})]
    node.calls.clear()
    status, _, _ = await call("DELETE", f"/v1/bucket?id={BID}")
    assert status == 204 and node.calls == [("bucket.delete", {"id": BID})]


async def test_allow_and_deny_answer_the_bucket(admin):
    node, _, call = admin
    body = {"bucketId": BID, "accessKeyId": KID, "permissions": {"read": True, "owner": True}}
    status, data, _ = await call("POST", "/v1/bucket/allow", body)
    assert status == 200 and data == {"op": "bucket.info"}
    assert node.calls == [
        ("bucket.permissions", {"id": BID, "key_id": KID, "allow": True, "read": True, "write": False, "owner": True}),
        ("bucket.info", {"id": BID}),
    ]
    node.calls.clear()
    await call("POST", "/v1/bucket/deny", body)
    assert node.calls[0][1]["allow"] is False


async def test_errors_have_the_json_body(admin):
    node, _, call = admin
    node.errors["key.info"] = NoSuchAccessKey("No key matching 'x'")
    status, data, r = await call("GET", "/v1/key?search=x")
    assert status == 404 and data == {
        "code": "NoSuchAccessKey",
        "message": "No key matching 'x'",
        "region": "garage",
        "path": "/v1/key",
    }
    assert r.headers["X-Request-Id"]
    node.errors["bucket.delete"] = BucketNotEmpty("Bucket b is not empty")
    status, data, _ = await call("DELETE", f"/v1/bucket?id={BID}")
    assert status == 409 and data["code"] == "BucketNotEmpty"
    node.errors["bucket.list"] = RuntimeError("kaput")
    status, data, _ = await call("GET", "/v1/bucket")
    assert status == 500 and data["code"] == "InternalError"
    # Body and parameter problems.
    for method, path, body in [
        ("POST", "/v1/key/import", {"accessKeyId": KID}),
        ("POST", "/v1/bucket", {}),
        ("POST", "/v1/bucket", {"localAlias": "x"}),
        ("POST", "/v1/bucket/allow", {"bucketId": BID, "accessKeyId": KID}),
        ("POST", f"/v1/key?id={KID}", {"allow": {"createBucket": "yes"}}),
        ("PUT", f"/v1/bucket/alias/global?id={BID}", None),
        ("GET", "/nope", None),
    ]:
        status, data, _ = await call(method, path, body)
        assert status == 400 and data["code"] == "InvalidRequest", (method, path, data)
    status, data, _ = await call("POST", "/v1/key", raw=b"")
    assert status == 200
    status, data, _ = await call("POST", "/v1/key", raw=b"x" * (2 * 1024 * 1024))
    assert status == 413 and data["code"] == "EntityTooLarge"


async def test_auth_and_health(admin):
    node, _, call = admin
    status, data, _ = await call("GET", "/v1/key", token=None)
    assert status == 403 and "must be provided" in data["message"] and node.calls == []
    status, data, _ = await call("GET", "/v1/key", token="wrong")
    assert status == 403 and "Invalid" in data["message"] and node.calls == []
    status, data, _ = await call("GET", "/health", token=None)
    assert status == 200 and data["status"] == "ok"
    node.cluster = ClusterHealth(
        layout_version=0,
        known_nodes=1,
        connected_nodes=1,
        storage_nodes=0,
        storage_nodes_ok=0,
        partitions=256,
        partitions_quorum=0,
        partitions_all_ok=0,
    )
    status, data, _ = await call("GET", "/health", token=None)
    assert status == 503 and data["status"] == "no-layout"
    status, data, _ = await call("GET", "/v1/health")
    assert status == 200 and data["status"] == "unavailable" and data["health"] == "no-layout"
    status, data, _ = await call("GET", "/v1/status")
    assert status == 200 and data == {"node": "node-id", "layout": None}
    status, data, _ = await call("GET", "/metrics", token=None)  # no metrics token: open
    assert status == 200 and b"garagekv_api_admin_requests_total" in data


async def test_routes_can_be_added(admin):
    node, server, call = admin

    async def get_layout(req) -> web.StreamResponse:
        return json_response({"version": int(req.query.get("v", "0"))})

    server.add_route(Route("GET", "/v1/layout", "GetClusterLayout", get_layout))
    status, data, _ = await call("GET", "/v1/layout?v=3")
    assert status == 200 and data == {"version": 3}
    status, _, _ = await call("GET", "/v1/layout", token=None)
    assert status == 403


def test_every_route_is_in_the_openapi_document():
    """docs/admin-openapi.yaml documents each (method, path) the server routes, and nothing else."""
    import re
    from pathlib import Path

    from garagekv.admin.http import default_routes

    text = (Path(__file__).resolve().parents[2] / "docs" / "admin-openapi.yaml").read_text()
    paths_section = text.split("\npaths:\n", 1)[1].split("\ncomponents:\n", 1)[0]
    documented, path = set(), None
    for line in paths_section.splitlines():
        if m := re.match(r"^  (/\S*):$", line):
            path = m.group(1)
        elif m := re.match(r"^    (get|put|post|delete):$", line):
            documented.add((m.group(1).upper(), path))
    routed = {(r.method, r.path) for r in default_routes()}
    assert documented == routed
