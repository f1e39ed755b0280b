"""Content codings of a Hulykvs request body: what is decoded, and what is refused.

Hulykvs's server decodes ``gzip`` and ``deflate`` bodies before storing them, so this listener
does too (docs/hulykvs.md, "Requests"). The decoding is strict: a body is stored only if it is one
complete stream with nothing after it; a broken, truncated or padded one is a 400 and writes
nothing (a decoder that stopped at the first error would store the part it had decoded). Any other
coding, several codings at once, and a transfer coding other than ``chunked`` (whose bytes would
otherwise be stored still encoded) are refused with 400 as well.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from garagekv.api.hulykvs.errors import bad_request

#: zlib's window bits for each accepted coding (``deflate`` may also come raw: see ``feed``).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _codings(values: Iterable[str]) -> list[str]:
    return [c.strip().lower() for v in values for c in v.split(",") if c.strip()]


class BodyDecoder:
    """One body's decoder, fed chunk by chunk as they arrive."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._zlib: zlib._Decompress | None = None

    def feed(self, data: bytes, max_out: int) -> bytes:
        """The decoded bytes of ``data`` (at most ``max_out``: the caller's limit then refuses)."""
        if self._zlib is None:
            if not data:
                return b""
            wbits = _WBITS[self.coding]
            if self.coding == "deflate" and data[0] & 0x0F != 8:
                wbits = -zlib.MAX_WBITS  # raw deflate, without the zlib header some clients omit
            self._zlib = zlib.decompressobj(wbits)
        if self._zlib.eof:
            if data:
                raise bad_request(f"the request body has data after the end of its {self.coding} stream")
            return b""
        try:
            out = self._zlib.decompress(data, max_out)
        except zlib.error as e:
            raise bad_request(f"the request body is not valid {self.coding} data: {e}") from None
        if self._zlib.unused_data:
            raise bad_request(f"the request body has data after the end of its {self.coding} stream")
        return out

    def finish(self) -> None:
        """Raise 400 unless the whole stream arrived (a truncated body stores nothing)."""
        if self._zlib is None or not self._zlib.eof:
            raise bad_request(f"the request body ends before the end of its {self.coding} stream")


def body_decoder(content_encodings: Iterable[str]) -> BodyDecoder | None:
    """The decoder for a request's ``Content-Encoding`` header lines (None: taken as sent)."""
    codings = [c for c in _codings(content_encodings) if c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _WBITS:
        raise bad_request(f"unsupported Content-Encoding {', '.join(codings)!r} (gzip, deflate or identity)")
    return BodyDecoder(codings[0])


def unsupported_transfer_coding(transfer_encodings: Iterable[str]) -> None:
    """400 for a ``Transfer-Encoding`` other than ``chunked`` (the HTTP parser only undoes that)."""
    other = [c for c in _codings(transfer_encodings) if c != "chunked"]
    if other:
        raise bad_request(f"unsupported Transfer-Encoding {', '.join(other)!r} (only chunked)")
