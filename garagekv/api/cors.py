"""CORS for browser clients: origins come from ``[k2v_api] cors_allowed_origins``."""

from __future__ import annotations

from aiohttp import web

from garagekv.api.context import EXPIRES_HEADER, TOKEN_HEADER
from garagekv.util.errors import AccessDenied

ALLOWED_METHODS = "GET, PUT, POST, DELETE, SEARCH"
EXPOSED_HEADERS = f"{TOKEN_HEADER}, {EXPIRES_HEADER}"


def allowed_origin(origins: tuple[str, ...], origin: str | None) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when the origin is not allowed."""
    if origin is None or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def preflight(origins: tuple[str, ...], request: web.BaseRequest) -> web.Response:
    allow = allowed_origin(origins, request.headers.get("Origin"))
    if allow is None:
        raise AccessDenied("This CORS request is not allowed.")
    headers = {
        "Access-Control-Allow-Origin": allow,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Expose-Headers": EXPOSED_HEADERS,
    }
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested:
        headers["Access-Control-Allow-Headers"] = requested
    return web.Response(status=200, headers=headers)


def add_cors_headers(origins: tuple[str, ...], request: web.BaseRequest, response: web.StreamResponse) -> None:
    allow = allowed_origin(origins, request.headers.get("Origin"))
    if allow is not None:
        response.headers["Access-Control-Allow-Origin"] = allow
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
