"""What a Hulykvs handler receives: the listener's services and one routed request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from aiohttp import web

from garagekv.api.hulykvs import auth
from garagekv.api.hulykvs.body_coding import body_decoder, unsupported_transfer_coding
from garagekv.api.hulykvs.errors import HulyError, bad_request
from garagekv.api.hulykvs.mapping import check_sizes, decode_segment, workspace_of
from garagekv.api.hulykvs.store import HulyStore
from garagekv.api.interim import send_continue
from garagekv.util.config import MAX_KEY_BYTES


@dataclass
class HulyState:
    """Long-lived services of the Hulykvs listener."""

    store: HulyStore
    token_secret: str
    default_workspace: str  # canonical UUID: the workspace of API v1
    payload_limit: int
    ready: Callable[[], bool] = lambda: True  # /ready: can this node reach its quorums?
    #: Why /api and /api2 requests must be refused with 503 right now (None: serve them), e.g.
    #: a node that has no cluster layout yet and would otherwise acknowledge writes on its own.
    refusal: Callable[[], str | None] = lambda: None
    max_key_bytes: int = MAX_KEY_BYTES
    _verifier: auth.TokenVerifier | None = field(default=None, init=False, repr=False)

    @property
    def verifier(self) -> auth.TokenVerifier:
        """The token verifier (and cache) of the current ``token_secret``: built on first use,
        and again if the secret is ever replaced, so no token verified with an old secret is
        accepted from the cache of the old verifier."""
        v = self._verifier
        if v is None or v.secret is not self.token_secret:
            v = self._verifier = auth.TokenVerifier(self.token_secret)
        return v


@dataclass(frozen=True)
class Target:
    """An authorized request's (workspace, namespace, key); ``key`` None for a listing."""

    workspace: str
    namespace: str
    key: str | None


@dataclass
class HulyRequest:
    state: HulyState
    request: web.BaseRequest
    segments: list[str]  # raw (still percent-encoded) path segments after /api or /api2
    raw_query: str = ""
    claims: auth.Claims | None = field(default=None)

    def header(self, name: str) -> str | None:
        """A header's value; one that is not visible ASCII is a 400 (it cannot be a condition),
        and so is a header sent on several lines (HTTP reads them as one list, which no condition
        header of this API takes)."""
        values = self.request.headers.getall(name, ())
        if len(values) > 1:
            raise bad_request(f"{name} must be sent once, got {len(values)} header lines")
        value = values[0] if values else None
        if value is not None and not all(0x20 <= ord(c) < 0x7F or c == "\t" for c in value):
            raise bad_request(f"invalid {name} header value")
        return value

    def authenticate(self) -> auth.Claims:
        self.claims = self.state.verifier.verify(self.request.headers.get("Authorization"))
        return self.claims

    def v2_target(self) -> Target:
        """Authenticate, parse ``{ws}/{ns}[/{key}]`` and check the token's workspace (API v2)."""
        claims = self.authenticate()
        ws = workspace_of(self.segments[0])
        auth.authorize_v2(claims, ws)
        return self._target(ws, self.segments[1:])

    def v1_target(self) -> Target:
        """Authenticate and parse ``{ns}[/{key}]`` in the default workspace (API v1)."""
        claims = self.authenticate()
        ws = self.state.default_workspace
        auth.authorize_v1(claims, ws)
        return self._target(ws, self.segments)

    def _target(self, ws: str, rest: list[str]) -> Target:
        ns = decode_segment(rest[0], "namespace")
        key = decode_segment(rest[1], "key") if len(rest) > 1 else None
        check_sizes(ws, ns, key, self.state.max_key_bytes)
        return Target(ws, ns, key)

    def prefix(self) -> str | None:
        """The ``prefix`` query parameter, percent-decoded (``+`` is a space, as in forms)."""
        try:
            pairs = parse_qsl(self.raw_query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise bad_request("the query string is not valid UTF-8 once percent-decoded")
        prefix = None
        for name, value in pairs:
            if name == "prefix":
                prefix = value
        return prefix

    async def body(self) -> bytes:
        """The request body (decoded if it came gzip- or deflate-encoded, as Hulykvs's server
        decodes it), at most ``payload_size_limit`` bytes once decoded (413 beyond)."""
        limit = self.state.payload_limit
        cl = self.request.content_length
        if cl is not None and cl > limit:
            raise HulyError(413, f"payload of {cl} bytes is over the limit of {limit} bytes")
        decoder = body_decoder(self.request.headers.getall("Content-Encoding", ()))
        unsupported_transfer_coding(self.request.headers.getall("Transfer-Encoding", ()))
        await send_continue(self.request)
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.request.content.iter_any():
            if decoder is not None:
                # At most one byte past the limit comes out, so a small body cannot expand
                # into a large allocation; a stream still producing then is over the limit.
                chunk = decoder.feed(chunk, limit - size + 1)
            size += len(chunk)
            if size > limit:
                raise HulyError(413, f"payload is over the limit of {limit} bytes")
            chunks.append(chunk)
        if decoder is not None:
            decoder.finish()
        return b"".join(chunks)
