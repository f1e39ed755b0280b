"""``Expect: 100-continue``: the interim answer a client waits for before it sends a body.

aiohttp's low-level server, which both HTTP listeners use, leaves it to the handler (its router
does it for routed applications). A client that asks for it (curl for uploads over 1 MiB, many
HTTP libraries on request) otherwise waits a second or more before sending the body anyway.
Handlers call :func:`send_continue` once the request is authorized and just before reading the
body, so a request refused on its headers is answered without the body ever being sent.
"""

from __future__ import annotations

from aiohttp import web

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def send_continue(request: web.BaseRequest) -> None:
    """Send ``100 Continue`` if the client asked for it (HTTP/1.1 only), at most once."""
    if request.version < (1, 1) or request.headers.get("Expect", "").lower() != "100-continue":
        return
    if request.get("continue_sent"):
        return
    request["continue_sent"] = True
    writer = request.writer
    await writer.write(CONTINUE)
    # An interim answer is not the response: error handling decides on output_size whether the
    # response was started, as aiohttp's own handler does.
    writer.output_size = 0
