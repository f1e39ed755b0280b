"""RawChildren: a stored intermediate node's children kept as bytes must read, change and pack
exactly as the decoded dict would (the bytes are what replicas hash and compare)."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from garagekv.table.merkle_children import RawChildren

HASHES = st.binary(min_size=32, max_size=32)
CHILDREN = st.dictionaries(st.integers(0, 255), HASHES, max_size=60)


def body(children: dict[int, bytes]) -> bytes:
    return msgpack.packb([1, sorted(children.items())], use_bin_type=True)


@given(
    children=CHILDREN,
    ops=st.lists(st.tuples(st.integers(0, 255), st.none() | HASHES), max_size=12),
)
def test_reads_changes_and_packing_match_the_dict(children, ops):
    raw = RawChildren.parse(body(children))
    assert raw is not None
    model = dict(children)
    for b, h in ops:
        if h is None:
            assert raw.pop(b, "absent") == model.pop(b, "absent")
        else:
            raw[b] = model[b] = h
        assert len(raw) == len(model)
    for b in range(256):
        assert (b in raw) == (b in model) and raw.get(b) == model.get(b)
    assert list(raw) == sorted(model) and raw.items() == sorted(model.items())
    assert raw.pack() == body(model)


@given(children=CHILDREN, new=st.dictionaries(st.integers(0, 255), HASHES, min_size=1, max_size=20))
def test_additions_and_changes_are_spliced_in(children, new):
    """No removal: the splicing path, across the 15 -> 16 children header change too."""
    raw = RawChildren.parse(body(children))
    assert raw is not None
    for b, h in new.items():
        raw[b] = h
    assert raw.pack() == body(children | new)


def test_a_placeholder_is_reported_and_stored_children_never_are():
    placeholder = object()
    raw = RawChildren.parse(body({1: b"a" * 32, 200: b"b" * 32}))
    assert raw is not None and not raw.pending(placeholder)
    raw[7] = placeholder
    assert raw.pending(placeholder) and raw[7] is placeholder and len(raw) == 3


def test_only_canonical_nodes_are_parsed():
    good = {3: b"x" * 32, 130: b"y" * 32}
    assert RawChildren.parse(body(good)) is not None
    for bad in (
        body({3: b"x" * 31}),  # another hash length
        msgpack.packb([1, [[130, b"y" * 32], [3, b"x" * 32]]], use_bin_type=True),  # out of order
        msgpack.packb([1, [[3, b"x" * 32], [3, b"x" * 32]]], use_bin_type=True),  # twice
        body(good) + b"\x00",  # trailing bytes
        body(good)[:-1],  # truncated
        msgpack.packb([1, [[3, "x" * 32]]], use_bin_type=True),  # text, not bytes
        msgpack.packb([2, b"k", b"h"], use_bin_type=True),  # a leaf
        b"",
    ):
        assert RawChildren.parse(bad) is None, bad
