"""Path and method -> endpoint name and handler; the only module that imports the handlers.

Routes are Hulykvs's: ``/api2/{workspace}/{namespace}[/{key}]``, ``/api/{namespace}[/{key}]``,
``/status``, plus ``/ready``. A segment is never empty and never spans a ``/`` (a key containing
``/`` is sent as ``%2F``). Unknown paths are 404, a wrong method on a known path 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from garagekv.api.hulykvs import handlers as h
from garagekv.api.hulykvs.context import HulyRequest
from garagekv.api.hulykvs.errors import HulyError

Handler = Callable[[HulyRequest], Awaitable[web.StreamResponse]]

# (API, number of segments after the prefix) -> method -> (endpoint name, handler)
_ROUTES: dict[tuple[str, int], dict[str, tuple[str, Handler]]] = {
    ("api2", 3): {
        "GET": ("Get", h.v2_get),
        "HEAD": ("Head", h.v2_get),
        "PUT": ("Put", h.v2_put),
        "DELETE": ("Delete", h.v2_delete),
    },
    ("api2", 2): {"GET": ("List", h.v2_list)},
    ("api", 2): {
        "GET": ("V1Get", h.v1_get),
        "HEAD": ("V1Head", h.v1_get),
        "POST": ("V1Post", h.v1_post),
        "DELETE": ("V1Delete", h.v1_delete),
    },
    ("api", 1): {"GET": ("V1List", h.v1_list)},
    ("status", 0): {"GET": ("Status", h.status), "HEAD": ("Status", h.status)},
    ("ready", 0): {"GET": ("Ready", h.ready), "HEAD": ("Ready", h.ready)},
}


@dataclass(frozen=True)
class Route:
    name: str
    handler: Handler
    segments: list[str]


def methods_of(raw_path: str) -> dict[str, tuple[str, Handler]] | None:
    """The methods served on a path, or None for an unknown path."""
    parts = raw_path.split("/")
    if len(parts) < 2 or parts[0] != "" or any(p == "" for p in parts[1:]):
        return None
    return _ROUTES.get((parts[1], len(parts) - 2))


def route(method: str, raw_path: str) -> Route:
    methods = methods_of(raw_path)
    if methods is None:
        raise HulyError(404, f"no such route: {raw_path}")
    found = methods.get(method)
    if found is None:
        raise HulyError(405, f"method {method} is not allowed on {raw_path} (allowed: {', '.join(methods)})")
    return Route(found[0], found[1], raw_path.split("/")[2:])
