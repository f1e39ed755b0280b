"""A scripted in-process HTTP server for the K2V client's unit tests, and a client with fast retries.

``Script`` answers each request with the next of its behaviours and records what it received;
``err`` builds a K2V error answer. First written for the retry tests
(``tests/unit/test_client_retries.py``); the client extension tests (``test_client_extensions.py``)
script their servers the same way.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from garagekv.client import K2VClient

INDEX = {
    "prefix": None,
    "start": None,
    "end": None,
    "limit": None,
    "reverse": False,
    "partitionKeys": [],
    "more": False,
    "nextStart": None,
}


def err(status: int, code: str) -> web.Response:
    return web.Response(
        status=status,
        content_type="application/json",
        body=json.dumps({"code": code, "message": "m", "region": "garage", "path": "/"}),
    )


class Script:
    """Answers requests from a list of behaviours; records what it received."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.seen: list[web.Request] = []
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        self.bodies.append(await request.read())
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, float):
            await asyncio.sleep(step)
            return web.json_response(INDEX)
        out = step()
        return await out if asyncio.iscoroutine(out) else out


def client(endpoint: str, **kw) -> K2VClient:
    return K2VClient(
        endpoint=endpoint, access_key_id="GKx", secret_access_key="s", bucket="b", retry_backoff=0.001, **kw
    )
