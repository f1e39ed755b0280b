"""Strict decoding of Hulykvs request bodies (garagekv/api/hulykvs/body_coding.py): a body is
accepted only as one whole stream, however the network splits it into chunks."""

from __future__ import annotations

import gzip
import zlib

import pytest

from garagekv.api.hulykvs.body_coding import body_decoder, unsupported_transfer_coding
from garagekv.api.hulykvs.errors import HulyError

VALUE = bytes(range(256)) * 40


def decode(coding: str, body: bytes, chunk: int, limit: int = 1 << 20) -> bytes:
    d = body_decoder([coding])
    assert d is not None
    out = b""
    for i in range(0, len(body), chunk):
        out += d.feed(body[i : i + chunk], limit - len(out) + 1)
    d.finish()
    return out


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
@pytest.mark.parametrize(
    "coding,encode", [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)]
)
def test_a_whole_stream_decodes_whatever_its_chunks(coding, encode, chunk):
    assert decode(coding, encode(VALUE), chunk) == VALUE


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_data_after_the_stream_is_refused_in_the_same_chunk_or_a_later_one(chunk):
    with pytest.raises(HulyError, match="after the end"):
        decode("gzip", gzip.compress(VALUE) + b"x", chunk)


@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_a_truncated_stream_is_refused(chunk):
    body = gzip.compress(VALUE)
    for cut in (1, len(body) // 2, len(body) - 1):
        with pytest.raises(HulyError, match="ends before the end"):
            decode("gzip", body[:cut], chunk)


def test_output_stops_one_byte_past_the_limit():
    d = body_decoder(["gzip"])
    assert d is not None
    out = d.feed(gzip.compress(b"\0" * 1_000_000), 101)
    assert len(out) == 101  # the caller answers 413; nothing near a megabyte was allocated


@pytest.mark.parametrize("values", [[], [""], ["identity"], ["Identity", " identity "]])
def test_no_coding_takes_the_body_as_sent(values):
    assert body_decoder(values) is None


@pytest.mark.parametrize("values", [["br"], ["zstd"], ["gzip, gzip"], ["gzip", "deflate"], ["compress"]])
def test_other_or_several_codings_are_400(values):
    with pytest.raises(HulyError) as e:
        body_decoder(values)
    assert e.value.status == 400


def test_transfer_codings():
    unsupported_transfer_coding([])
    unsupported_transfer_coding(["chunked"])
    for values in (["gzip, chunked"], ["gzip", "chunked"], ["identity"]):
        with pytest.raises(HulyError) as e:
            unsupported_transfer_coding(values)
        assert e.value.status == 400
