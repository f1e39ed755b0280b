"""Named RPC endpoints: the table that maps a path string to the async handler serving it.

Paths name the module that owns the handler, Garage-style, so a log line or an "unknown
endpoint" error says where to look: ``garagekv/<package>/<module>/<Name>``, with the table name
after a colon for per-table endpoints, e.g. ``garagekv/table/table/Rpc:k2v_item``.

The registry's ``dispatch`` is what ``garagekv.net.netapp.NetApp`` calls for every incoming
request (and for calls to our own node id, in-process)::

    registry = EndpointRegistry()
    registry.register(PING, handle_ping)
    netapp = NetApp(key, rpc_secret, registry.dispatch)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from garagekv.net.netapp import DEFAULT, NetApp
from garagekv.util.errors import InternalError

__all__ = ["DEFAULT", "EndpointRegistry", "Handler", "NetApp", "endpoint_path"]

#: ``handler(from_node_id, body) -> body``. Raise a ``GarageKVError`` to answer with a typed error.
Handler = Callable[[bytes, Any], Awaitable[Any]]
MAX_PATH_LEN = 255


def endpoint_path(module: str, name: str, table: str | None = None) -> str:
    """Build ``garagekv/<module>/<name>[:<table>]`` (``module`` like ``"table/sync"``)."""
    path = f"garagekv/{module}/{name}"
    return f"{path}:{table}" if table else path


class EndpointRegistry:
    """Path -> handler; registering the same path twice is a programming error."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, path: str, handler: Handler) -> None:
        if not path or len(path) > MAX_PATH_LEN:
            raise ValueError(f"invalid endpoint path {path!r}")
        if path in self._handlers:
            raise ValueError(f"endpoint {path!r} is already registered")
        self._handlers[path] = handler

    def unregister(self, path: str) -> None:
        self._handlers.pop(path, None)

    def paths(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, path: object) -> bool:
        return path in self._handlers

    async def dispatch(self, from_node: bytes, path: str, body: Any) -> Any:
        """Run the handler for ``path``; an unknown path is an ``InternalError`` for the caller."""
        handler = self._handlers.get(path)
        if handler is None:
            raise InternalError(f"no handler for endpoint {path!r} (is the peer running the same version?)")
        return await handler(from_node, body)
