"""Building and signing K2V requests (no I/O, so it is unit-testable on its own).

The wire format follows docs/k2v-api.md and what Garage's k2v-client sends: bucket-level calls go to
``/bucket`` (no trailing slash), keywords are written ``?search=``, the partition key is
percent-encoded (``/`` included, so any key — even one starting with ``/`` — is addressable), and
query values use the AWS encoding, which is also their canonical form. Signatures come from
:class:`garagekv.util.signing.Signer` (signing key cached per day), service ``k2v``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes, urlsplit

from garagekv.client.config import ConnectionSettings
from garagekv.util.signing import Signer, encode_query

CAUSALITY_HEADER = "X-Garage-Causality-Token"
ACCEPT_ITEM = "application/octet-stream, application/json"


def encode_partition_key(pk: str) -> str:
    """The path segment for a partition key (K2V decodes it after stripping leading ``/``)."""
    if not pk:
        raise ValueError("the partition key must not be empty")
    enc = quote_from_bytes(pk.encode("utf-8", "surrogateescape"), safe="-_.~")
    if enc in (".", ".."):  # HTTP stacks may resolve dot segments; %2E is decoded back by the server
        enc = "%2E" * len(enc)
    return enc


@dataclass
class PreparedRequest:
    """A signed request ready to send: ``url`` is already encoded and must not be re-quoted."""

    method: str
    url: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""
    query_pairs: list[tuple[str, str]] = field(default_factory=list)


class RequestBuilder:
    """Builds signed requests for one bucket of one endpoint."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        clock: Callable[[], float] = time.time,
        unsigned_payload: bool = False,
        user_agent: str | None = None,
    ) -> None:
        self.settings = settings
        self.signer = Signer(settings.access_key_id, settings.secret_access_key, settings.region, "k2v")
        self.host = urlsplit(settings.endpoint).netloc.rpartition("@")[2]
        self.clock = clock
        self.unsigned_payload = unsigned_payload
        self.user_agent = user_agent

    def path(self, partition_key: str | None = None) -> str:
        base = "/" + self.settings.bucket
        return base if partition_key is None else f"{base}/{encode_partition_key(partition_key)}"

    def build(
        self,
        method: str,
        partition_key: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_sha256: str | None = None,
    ) -> PreparedRequest:
        """Sign ``method /bucket[/pk]?query`` with ``headers`` (all signed, plus host)."""
        path = self.path(partition_key)
        pairs = list(query)
        qs = encode_query(pairs)
        hdrs = {"Host": self.host, **(headers or {})}
        signed = self.signer.sign_headers(
            method,
            path,
            pairs,
            hdrs,
            body,
            now=self.clock(),
            unsigned_payload=self.unsigned_payload,
            content_sha256=content_sha256,
        )
        hdrs.update(signed)
        if self.user_agent:
            hdrs["User-Agent"] = self.user_agent  # never signed (proxies rewrite it)
        url = self.settings.endpoint + path + (f"?{qs}" if qs else "")
        return PreparedRequest(method, url, path, qs, hdrs, body, pairs)
