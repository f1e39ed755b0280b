"""The event loop the node, the load generator and the null server run on: uvloop when installed."""

from __future__ import annotations

import asyncio


def new_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed."""
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"
