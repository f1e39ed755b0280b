"""The admin HTTP API (Garage's admin API v1 shape): health, status, metrics, layout, keys, buckets.

Every layout, peer, key and bucket endpoint runs one named operation of the node's registry
(``garagekv.admin.registry``), the same one the CLI reaches over RPC, so both front ends share
one implementation. Errors are the JSON body of the K2V API (``{code, message, region,
path}``) with the status of the error class. Routing happens before authentication, as in Garage:
an unknown endpoint is a 400 whatever the token.

The route table is open: ``AdminApiServer.add_route`` adds an endpoint without touching this
module.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from garagekv.admin import auth
from garagekv.admin.auth import TokenAuth
from garagekv.admin.health import HealthSource
from garagekv.admin.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from garagekv.admin.metrics import NodeMetrics
from garagekv.api.errors import error_response
from garagekv.api.http_server import JsonErrorServer
from garagekv.util import jsonin, jsonout
from garagekv.util.errors import BadRequest, EntityTooLarge, GarageKVError
from garagekv.util.log import bind_request_id, request_id_var

log = logging.getLogger(__name__)
access_log = logging.getLogger("garagekv.access.admin")

JSON_TYPE = "application/json"
MAX_BODY = 1024 * 1024
REQUEST_ID_HEADER = "X-Request-Id"

RunOp = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass
class AdminServices:
    """What the admin server needs from the node."""

    run_op: RunOp  # runs a named operation of the node's registry (as the CLI's RPC does)
    health: HealthSource
    status: Callable[[], Awaitable[dict[str, Any]]]
    metrics: NodeMetrics
    region: str
    admin_token: str | None = None
    metrics_token: str | None = None


class AdminRequest:
    """One routed request as handlers see it."""

    def __init__(self, services: AdminServices, request: web.BaseRequest, query: dict[str, str]) -> None:
        self.services = services
        self.request = request
        self.query = query

    def param(self, name: str) -> str:
        value = self.query.get(name)
        if value is None:
            raise BadRequest(f"Missing query parameter: {name}")
        return value

    async def body(self) -> dict[str, Any]:
        """The JSON object in the body ({} when the body is empty)."""
        data = await self.json()
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise BadRequest("The JSON body must be an object")
        return data

    async def json(self) -> Any:
        """The JSON value in the body (None when the body is empty)."""
        cl = self.request.content_length
        if cl is not None and cl > MAX_BODY:
            raise EntityTooLarge(f"Request body of {cl} bytes is over the limit of {MAX_BODY} bytes")
        raw = await self.request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise EntityTooLarge(f"Request body is over the limit of {MAX_BODY} bytes")
        if not raw.strip():
            return None
        try:
            return jsonin.loads(raw)
        except ValueError as e:
            raise BadRequest(f"Invalid JSON body: {e}")

    async def run(self, op: str, args: dict[str, Any]) -> Any:
        return await self.services.run_op(op, args)


Handler = Callable[[AdminRequest], Awaitable[web.StreamResponse]]


@dataclass
class Route:
    method: str
    path: str
    name: str  # the endpoint name, as in Garage (metrics label, logs)
    handler: Handler
    auth: str = auth.ADMIN
    when: str | None = None  # a query parameter that must be present for this route to match


def json_response(data: Any, status: int = 200) -> web.Response:
    body = jsonout.dumps(data, indent=2)
    return web.Response(status=status, body=body, headers={"Content-Type": JSON_TYPE})


def no_content() -> web.Response:
    return web.Response(status=204)


# ---- body fields -------------------------------------------------------------------------------


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"Missing field: {name}")
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BadRequest(f"Field {name} must be of type {'object' if kind is dict else expected}")
    return value


def _flags(body: dict[str, Any], name: str, flags: tuple[str, ...]) -> dict[str, bool] | None:
    obj = _field(body, name, dict)
    if obj is None:
        return None
    return {f: bool(_field(obj, f, bool)) for f in flags}


_PERMS = ("read", "write", "owner")


# ---- health, status, metrics -----------------------------------------------------------------


async def handle_health(req: AdminRequest) -> web.StreamResponse:
    report = req.services.health()
    return json_response(report.probe_body(), status=report.http_status)


async def handle_cluster_health(req: AdminRequest) -> web.StreamResponse:
    return json_response(req.services.health().detail_body())


async def handle_status(req: AdminRequest) -> web.StreamResponse:
    return json_response(await req.services.status())


async def handle_metrics(req: AdminRequest) -> web.StreamResponse:
    body = await req.services.metrics.render_host()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


# ---- cluster: layout and peers -----------------------------------------------------------------


async def get_layout(req: AdminRequest) -> web.StreamResponse:
    return json_response(await req.run("layout.get", {}))


async def update_layout(req: AdminRequest) -> web.StreamResponse:
    changes = await req.json()
    if not isinstance(changes, list):
        raise BadRequest("The JSON body must be a list of role changes: {id, zone, capacity, tags} or {id, remove}")
    return json_response(await req.run("layout.stage", {"changes": changes}))


async def apply_layout(req: AdminRequest) -> web.StreamResponse:
    body = await req.body()
    res = await req.run("layout.apply", {"version": _field(body, "version", int, required=True)})
    return json_response({"message": res["messages"], "layout": res["layout"]})


async def revert_layout(req: AdminRequest) -> web.StreamResponse:
    body = await req.body()
    res = await req.run("layout.revert", {"version": _field(body, "version", int)})
    return json_response(res["layout"])


async def connect_nodes(req: AdminRequest) -> web.StreamResponse:
    peers = await req.json()
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        raise BadRequest('The JSON body must be a list of "<node id>@<host>:<port>" strings')

    async def connect(peer: str) -> dict[str, Any]:
        try:
            await req.run("node.connect", {"peer": peer})
        except GarageKVError as e:
            return {"success": False, "error": e.message}
        return {"success": True, "error": None}

    return json_response(list(await asyncio.gather(*(connect(p) for p in peers))))


# ---- keys --------------------------------------------------------------------------------------


async def list_keys(req: AdminRequest) -> web.StreamResponse:
    return json_response(await req.run("key.list", {}))


async def get_key_info(req: AdminRequest) -> web.StreamResponse:
    show = req.query.get("showSecretKey", "false").lower() == "true"
    if "id" in req.query:
        args = {"id": req.query["id"], "show_secret": show}
    else:
        args = {"pattern": req.param("search"), "show_secret": show}
    return json_response(await req.run("key.info", args))


async def create_key(req: AdminRequest) -> web.StreamResponse:
    body = await req.body()
    return json_response(await req.run("key.create", {"name": _field(body, "name", str)}))


async def import_key(req: AdminRequest) -> web.StreamResponse:
    body = await req.body()
    args = {
        "key_id": _field(body, "accessKeyId", str, required=True),
        "secret": _field(body, "secretAccessKey", str, required=True),
        "name": _field(body, "name", str),
    }
    return json_response(await req.run("key.import", args))


async def update_key(req: AdminRequest) -> web.StreamResponse:
    body = await req.body()
    allow = _flags(body, "allow", ("createBucket",)) or {}
    deny = _flags(body, "deny", ("createBucket",)) or {}
    create_bucket = None
    if allow.get("createBucket"):
        create_bucket = True
    if deny.get("createBucket"):
        create_bucket = False
    args = {"id": req.param("id"), "name": _field(body, "name", str), "allow_create_bucket": create_bucket}
    return json_response(await req.run("key.update", args))


async def delete_key(req: AdminRequest) -> web.StreamResponse:
    await req.run("key.delete", {"id": req.param("id")})
    return no_content()


# ---- buckets -----------------------------------------------------------------------------------


async def list_buckets(req: AdminRequest) -> web.StreamResponse:
    return json_response(await req.run("bucket.list", {}))


async def get_bucket_info(req: AdminRequest) -> web.StreamResponse:
    args = {"id": req.query["id"]} if "id" in req.query else {"global_alias": req.param("globalAlias")}
    return json_response(await req.run("bucket.info", args))


async def create_bucket(req: AdminRequest) -> web.StreamResponse:
    body = await req.body()
    global_alias = _field(body, "globalAlias", str)
    local = _field(body, "localAlias", dict)
    if global_alias is None and local is None:
        raise BadRequest("A new bucket needs a globalAlias or a localAlias")
    args: dict[str, Any] = {"global_alias": global_alias}
    if local is not None:
        args["local_alias"] = _field(local, "alias", str, required=True)
        args["local_key_id"] = _field(local, "accessKeyId", str, required=True)
        args["local_permissions"] = _flags(local, "allow", _PERMS)
    return json_response(await req.run("bucket.create", args))


async def delete_bucket(req: AdminRequest) -> web.StreamResponse:
    await req.run("bucket.delete", {"id": req.param("id")})
    return no_content()


async def _change_permissions(req: AdminRequest, allow: bool) -> web.StreamResponse:
    body = await req.body()
    bucket_id = _field(body, "bucketId", str, required=True)
    perms = _flags(body, "permissions", _PERMS)
    if perms is None:
        raise BadRequest("Missing field: permissions")
    await req.run(
        "bucket.permissions",
        {"id": bucket_id, "key_id": _field(body, "accessKeyId", str, required=True), "allow": allow, **perms},
    )
    return json_response(await req.run("bucket.info", {"id": bucket_id}))


async def bucket_allow(req: AdminRequest) -> web.StreamResponse:
    return await _change_permissions(req, True)


async def bucket_deny(req: AdminRequest) -> web.StreamResponse:
    return await _change_permissions(req, False)


async def global_alias(req: AdminRequest) -> web.StreamResponse:
    args = {"id": req.param("id"), "alias": req.param("alias")}
    return json_response(await req.run("bucket.alias", args))


async def global_unalias(req: AdminRequest) -> web.StreamResponse:
    args = {"id": req.param("id"), "alias": req.param("alias")}
    return json_response(await req.run("bucket.unalias", args))


async def local_alias(req: AdminRequest) -> web.StreamResponse:
    args = {"id": req.param("id"), "alias": req.param("alias"), "local_key_id": req.param("accessKeyId")}
    return json_response(await req.run("bucket.alias", args))


async def local_unalias(req: AdminRequest) -> web.StreamResponse:
    args = {"id": req.param("id"), "alias": req.param("alias"), "local_key_id": req.param("accessKeyId")}
    return json_response(await req.run("bucket.unalias", args))


def default_routes() -> list[Route]:
    return [
        Route("GET", "/health", "Health", handle_health, auth.NONE),
        Route("GET", "/metrics", "Metrics", handle_metrics, auth.METRICS),
        Route("GET", "/v1/health", "GetClusterHealth", handle_cluster_health),
        Route("GET", "/v1/status", "GetClusterStatus", handle_status),
        Route("POST", "/v1/connect", "ConnectClusterNodes", connect_nodes),
        Route("GET", "/v1/layout", "GetClusterLayout", get_layout),
        Route("POST", "/v1/layout", "UpdateClusterLayout", update_layout),
        Route("POST", "/v1/layout/apply", "ApplyClusterLayout", apply_layout),
        Route("POST", "/v1/layout/revert", "RevertClusterLayout", revert_layout),
        Route("GET", "/v1/key", "GetKeyInfo", get_key_info, when="id"),
        Route("GET", "/v1/key", "GetKeyInfo", get_key_info, when="search"),
        Route("GET", "/v1/key", "ListKeys", list_keys),
        Route("POST", "/v1/key", "UpdateKey", update_key, when="id"),
        Route("POST", "/v1/key", "CreateKey", create_key),
        Route("POST", "/v1/key/import", "ImportKey", import_key),
        Route("DELETE", "/v1/key", "DeleteKey", delete_key),
        Route("GET", "/v1/bucket", "GetBucketInfo", get_bucket_info, when="id"),
        Route("GET", "/v1/bucket", "GetBucketInfo", get_bucket_info, when="globalAlias"),
        Route("GET", "/v1/bucket", "ListBuckets", list_buckets),
        Route("POST", "/v1/bucket", "CreateBucket", create_bucket),
        Route("DELETE", "/v1/bucket", "DeleteBucket", delete_bucket),
        Route("POST", "/v1/bucket/allow", "BucketAllowKey", bucket_allow),
        Route("POST", "/v1/bucket/deny", "BucketDenyKey", bucket_deny),
        Route("PUT", "/v1/bucket/alias/global", "GlobalAliasBucket", global_alias),
        Route("DELETE", "/v1/bucket/alias/global", "GlobalUnaliasBucket", global_unalias),
        Route("PUT", "/v1/bucket/alias/local", "LocalAliasBucket", local_alias),
        Route("DELETE", "/v1/bucket/alias/local", "LocalUnaliasBucket", local_unalias),
    ]


class AdminApiServer:
    def __init__(self, services: AdminServices) -> None:
        self.services = services
        self.auth = TokenAuth(services.admin_token, services.metrics_token)
        self.routes = default_routes()
        self._server: asyncio.base_events.Server | None = None
        self._http: JsonErrorServer | None = None

    def add_route(self, route: Route) -> None:
        """Add an endpoint; it takes precedence over the existing routes of the same method and path."""
        self.routes.insert(0, route)

    def match(self, method: str, path: str, query: dict[str, str]) -> Route:
        known_path = False
        for r in self.routes:
            if r.path != path:
                continue
            known_path = True
            if r.method == method and (r.when is None or r.when in query):
                return r
        if known_path:
            raise BadRequest(f"Method {method} is not allowed on {path}")
        raise BadRequest(f"Unknown API endpoint: {method} {path}")

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        raw_path, _, raw_query = request.raw_path.partition("?")
        rid, token = bind_request_id(request.headers.get(REQUEST_ID_HEADER))
        name = "Unknown"
        resp: web.StreamResponse
        try:
            if request.method == "OPTIONS":
                name = "Options"
                resp = _options()
            else:
                query = dict(parse_qsl(raw_query, keep_blank_values=True))
                route = self.match(request.method, raw_path, query)
                name = route.name
                self.auth.check(route.auth, request.headers)
                resp = await route.handler(AdminRequest(self.services, request, query))
        except GarageKVError as e:
            resp = error_response(e, self.services.region, raw_path)
        except asyncio.CancelledError:
            request_id_var.reset(token)
            raise
        except Exception as e:  # noqa: BLE001 - becomes a 500 with a JSON body
            resp = error_response(e, self.services.region, raw_path)
        seconds = time.monotonic() - started
        resp.headers[REQUEST_ID_HEADER] = rid
        self.services.metrics.observe_admin(name, resp.status, seconds)
        access_log.debug(
            "admin request",
            extra={
                "method": request.method,
                "path": request.raw_path,
                "endpoint": name,
                "status": resp.status,
                "duration_ms": round(seconds * 1000, 3),
            },
        )
        request_id_var.reset(token)
        return resp

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Listen; ``reuse_port``: share the port with the other workers of the host (SO_REUSEPORT)."""
        self._http = JsonErrorServer(self.handle, region=self.services.region, access_log=None)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._http, host, port, reuse_address=True, reuse_port=reuse_port or None
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None or self._http is None:  # set together by start()
            return
        self._server.close()
        await self._http.shutdown(timeout=2.0)
        self._server = None


def _options() -> web.Response:
    methods = "OPTIONS, GET, POST, PUT, DELETE"
    return web.Response(
        status=204,
        headers={
            "Allow": methods,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
        },
    )
