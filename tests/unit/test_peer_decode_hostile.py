"""Peer input (RPC frames, table entries) that is hostile but well-formed msgpack fails cleanly.

msgpack's C unpacker has its own nesting limit (a ``StackError``, a ``ValueError``), 64-bit
integers only and strict UTF-8 strings, so none of recursion, huge integers or lone surrogates
can reach the code above it; these tests pin that down.
"""

from __future__ import annotations

import msgpack
import pytest

from garagekv.model.k2v.item import ITEM_FORMAT_VERSION, K2VItem
from garagekv.net.errors import PeerProtocolError
from garagekv.net.frame import decode_message
from garagekv.util import codec

DEEP = b"\x91" * 200_000 + b"\xc0"  # [[[[...nil...]]]]
SURROGATE_STR = b"\xa3\xed\xa0\x80"  # a 3-byte str holding the UTF-8 spelling of U+D800
HUGE_INT = b"\xcf" + b"\xff" * 8  # u64 max: the largest integer msgpack can carry


@pytest.mark.parametrize("raw", [DEEP, b"\x94\x00\x01\xa1p" + DEEP, b"\x94\x00\x01" + SURROGATE_STR + b"\xc0"])
def test_hostile_frames_are_protocol_errors(raw):
    with pytest.raises(PeerProtocolError):
        decode_message(raw)


@pytest.mark.parametrize("raw", [DEEP, SURROGATE_STR, b"\xc1"])
def test_codec_decode_raises_value_error(raw):
    with pytest.raises(ValueError):
        codec.decode(raw)


def test_integers_stop_at_64_bits():
    assert codec.decode(HUGE_INT) == 2**64 - 1
    with pytest.raises((OverflowError, TypeError)):
        msgpack.packb(2**64)


@pytest.mark.parametrize("body", [DEEP, SURROGATE_STR])
def test_k2v_item_from_a_peer_is_refused(body):
    with pytest.raises(ValueError):
        K2VItem.decode(bytes([ITEM_FORMAT_VERSION]) + body)
