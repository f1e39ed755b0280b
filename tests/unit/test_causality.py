"""Causality tokens: Garage's text format, and every way a token can be invalid (docs/k2v-api.md §6)."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garagekv.model.k2v.causality import CausalContext, vclock_gt, vclock_max
from garagekv.util.errors import BadRequest, InvalidCausalityToken

U64 = st.integers(min_value=0, max_value=2**64 - 1)
CLOCKS = st.dictionaries(U64, U64, max_size=8)


def raw_token(pairs: list[tuple[int, int]], checksum: int | None = None) -> bytes:
    if checksum is None:
        checksum = 0
        for n, t in pairs:
            checksum ^= n ^ t
    return struct.pack(">Q", checksum) + b"".join(struct.pack(">QQ", n, t) for n, t in pairs)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@given(CLOCKS)
def test_roundtrip_and_urlsafe(vc: dict[int, int]) -> None:
    tok = CausalContext(vc).serialize()
    assert not set(tok) & set("+/= \n")
    assert CausalContext.parse(tok) == CausalContext(vc)


def test_empty_clock_token() -> None:
    assert CausalContext().serialize() == "AAAAAAAAAAA"
    assert CausalContext.parse("AAAAAAAAAAA") == CausalContext({})


def test_known_layout() -> None:
    tok = CausalContext({2: 7, 1: 5}).serialize()
    raw = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))
    assert raw == raw_token([(1, 5), (2, 7)])
    assert struct.unpack(">Q", raw[:8])[0] == 1 ^ 5 ^ 2 ^ 7


def test_pairs_need_not_be_sorted() -> None:
    assert CausalContext.parse(b64url(raw_token([(9, 1), (3, 4)]))) == CausalContext({9: 1, 3: 4})


def test_serialize_uses_urlsafe_alphabet() -> None:
    # 0xfb 0xff ... encodes to '+'/'/' in standard base64 and '-'/'_' in the URL-safe alphabet.
    vc = {0xFBFFFFFFFFFFFFFF: 0xFFBFFFFFFFFFFFFF}
    raw = raw_token(list(vc.items()))
    std = base64.b64encode(raw).decode()
    assert "+" in std or "/" in std
    tok = CausalContext(vc).serialize()
    assert "-" in tok or "_" in tok
    assert CausalContext.parse(tok) == CausalContext(vc)
    with pytest.raises(InvalidCausalityToken):
        CausalContext.parse(std.rstrip("="))


@pytest.mark.parametrize(
    "bad",
    [
        "",  # shorter than the checksum
        "A",  # impossible base64 length
        "AAAAAAAAAAA=",  # padding
        "AAAAAAAAAAA ",  # whitespace
        " AAAAAAAAAAA",
        "AAAAA AAAAAA",
        "AAAAAAAAAAA\n",
        "AAAAAAAAAAB",  # non-zero trailing bits: not the canonical spelling of any token
        "AAAAAAAAAA",  # 7 bytes
        "AAAAAAAAAAAAAAAAAAAAAA",  # 16 bytes: not 8 + 16k
        "AAAAAAAAAAé",  # non-ASCII
        "AAAA.AAAAAA",
    ],
)
def test_rejects_malformed(bad: str) -> None:
    with pytest.raises(InvalidCausalityToken):
        CausalContext.parse(bad)


def test_rejects_plus_and_slash() -> None:
    tok = CausalContext({0xFBFFFFFFFFFFFFFF: 0xFFBFFFFFFFFFFFFF}).serialize()
    assert "-" in tok and "_" in tok
    for bad in (tok.replace("-", "+"), tok.replace("_", "/"), tok + "="):
        with pytest.raises(InvalidCausalityToken):
            CausalContext.parse(bad)


def test_rejects_bad_length_with_valid_base64() -> None:
    with pytest.raises(InvalidCausalityToken):
        CausalContext.parse(b64url(raw_token([(1, 2)]) + b"\x00" * 8))
    with pytest.raises(InvalidCausalityToken):
        CausalContext.parse(b64url(raw_token([(1, 2)])[:-1]))


def test_rejects_checksum_mismatch() -> None:
    assert CausalContext.parse(b64url(raw_token([(1, 2)]))) == CausalContext({1: 2})
    with pytest.raises(InvalidCausalityToken):
        CausalContext.parse(b64url(raw_token([(1, 2)], checksum=0)))
    with pytest.raises(InvalidCausalityToken):
        CausalContext.parse(b64url(raw_token([], checksum=1)))


def test_rejects_duplicate_node() -> None:
    # Checksum of a duplicated pair cancels out, so only the duplicate check catches it.
    with pytest.raises(InvalidCausalityToken):
        CausalContext.parse(b64url(raw_token([(1, 2), (1, 2)])))


def test_error_is_a_bad_request_with_the_k2v_code() -> None:
    with pytest.raises(BadRequest) as ei:
        CausalContext.parse("nope!")
    assert ei.value.code == "CausalityToken" and ei.value.status == 400


def test_serialize_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="^clock entry 18446744073709551616: 1 is not a pair of u64$"):
        CausalContext({2**64: 1}).serialize()
    with pytest.raises(ValueError, match="^clock entry 1: -1 is not a pair of u64$"):
        CausalContext({1: -1}).serialize()


def test_is_newer_than() -> None:
    a = CausalContext({1: 5, 2: 3})
    assert not a.is_newer_than(a)
    assert a.is_newer_than(CausalContext({1: 4, 2: 3}))
    assert a.is_newer_than(CausalContext({}))
    assert not CausalContext({}).is_newer_than(a)
    assert not a.is_newer_than(CausalContext({1: 5, 2: 3, 3: 1}))
    # Concurrent clocks are each newer than the other.
    b = CausalContext({1: 6, 2: 0})
    assert a.is_newer_than(b) and b.is_newer_than(a)


@given(CLOCKS, CLOCKS)
def test_vclock_max_is_least_upper_bound(a: dict[int, int], b: dict[int, int]) -> None:
    m = vclock_max(a, b)
    assert not vclock_gt(a, m) and not vclock_gt(b, m)
    assert set(m) == set(a) | set(b)
    assert all(m[n] in (a.get(n, 0), b.get(n, 0)) for n in m)
    assert vclock_max(a, b) == vclock_max(b, a)


def test_token_size_is_bounded() -> None:
    from garagekv.model.k2v.causality import MAX_CONTEXT_ENTRIES, MAX_TOKEN_CHARS

    at_limit = CausalContext({n: 1 for n in range(1, MAX_CONTEXT_ENTRIES + 1)}).serialize()
    assert len(at_limit) <= MAX_TOKEN_CHARS
    assert len(CausalContext.parse(at_limit)) == MAX_CONTEXT_ENTRIES
    over = CausalContext({n: 1 for n in range(1, MAX_CONTEXT_ENTRIES + 2)}).serialize()
    with pytest.raises(InvalidCausalityToken, match="pairs a token may hold"):
        CausalContext.parse(over)
    with pytest.raises(InvalidCausalityToken):
        CausalContext.parse("A" * 10_000_000)  # refused by its length, before any decoding


def test_zero_entries_round_trip() -> None:
    """A time of 0 (or node 0) is a real entry: it stays in the token and in the checksum."""
    for vc in ({0: 0}, {1: 0, 2: 3}, {0: 7, 2**64 - 1: 0}):
        tok = CausalContext(vc).serialize()
        assert CausalContext.parse(tok) == CausalContext(vc)
        assert len(base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))) == 8 + 16 * len(vc)


def reference_parse(raw: bytes) -> dict[int, int] | None:
    """What a token's bytes mean, written independently of ``CausalContext.parse``."""
    if len(raw) < 8 or (len(raw) - 8) % 16:
        return None
    words = [int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw), 8)]
    pairs = list(zip(words[1::2], words[2::2], strict=True))
    acc = words[0]
    for w in words[1:]:
        acc ^= w
    if acc or len({n for n, _ in pairs}) != len(pairs):
        return None
    return dict(pairs)


@st.composite
def token_bytes(draw: st.DrawFn) -> bytes:
    """Mostly well-formed token bytes (any pair order, sometimes a duplicate or bad checksum)."""
    pairs = draw(st.lists(st.tuples(U64, U64), max_size=6))
    if pairs and draw(st.booleans()):
        pairs.append(draw(st.sampled_from(pairs)))  # a duplicate node
    raw = raw_token(pairs)
    if draw(st.integers(0, 4)) == 0:
        raw = struct.pack(">Q", draw(U64)) + raw[8:]
    if draw(st.integers(0, 4)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@given(token_bytes())
def test_parse_agrees_with_a_reference_decoder(raw: bytes) -> None:
    expected = reference_parse(raw)
    text = b64url(raw)
    if expected is None:
        with pytest.raises(InvalidCausalityToken):
            CausalContext.parse(text)
        return
    cc = CausalContext.parse(text)
    assert cc.vclock == expected
    # serialize writes the canonical form: pairs sorted by node, so it equals the input exactly
    # when the input was sorted, and always parses back to the same clock.
    canonical = b64url(raw_token(sorted(expected.items())))
    assert cc.serialize() == canonical
    assert CausalContext.parse(canonical) == cc


@given(st.text(alphabet="AB_-=+/ a", max_size=40))
def test_parse_of_arbitrary_text_never_crashes(text: str) -> None:
    """Any text either parses to a clock that serializes back to it, or is rejected as 400."""
    try:
        cc = CausalContext.parse(text)
    except InvalidCausalityToken:
        return
    assert CausalContext.parse(cc.serialize()) == cc


@given(CLOCKS, CLOCKS)
def test_vclock_max_leaves_its_arguments_untouched(a: dict[int, int], b: dict[int, int]) -> None:
    a0, b0 = dict(a), dict(b)
    vclock_max(a, b)
    assert (a, b) == (a0, b0)


def test_get_defaults_to_zero_for_an_unseen_node() -> None:
    cc = CausalContext({3: 9})
    assert cc.get(3) == 9 and cc.get(4) == 0 and cc.get(4, 7) == 7


def test_token_ending_in_a_padding_lookalike_keeps_its_last_character() -> None:
    """Only ``=`` is stripped from the base64 text: {0: 23} encodes 24 bytes ending in 0x17,
    whose last character is ``X``."""
    tok = CausalContext({0: 23}).serialize()
    assert tok == b64url(raw_token([(0, 23)])) and tok.endswith("X") and len(tok) == 32
    assert CausalContext.parse(tok) == CausalContext({0: 23})


@pytest.mark.parametrize("not_text", [None, 5, b"AAAAAAAAAAA", ["AAAAAAAAAAA"]])
def test_a_token_that_is_not_text_is_the_plain_invalid_token_error(not_text) -> None:
    """Only an over-long *string* is told it holds too many pairs; anything not text is just invalid."""
    with pytest.raises(InvalidCausalityToken) as ei:
        CausalContext.parse(not_text)
    assert ei.value.message == "Invalid causality token"
