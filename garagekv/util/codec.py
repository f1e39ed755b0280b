"""Canonical msgpack: the same logical value always encodes to the same bytes.

Change detection, Merkle hashes and GC hash comparisons compare encoded bytes across nodes, so
maps are written with sorted keys and bytes stay bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import msgpack


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [_canonical(x) for x in obj]
    return obj


def encode(obj: Any) -> bytes:
    """Encode ``obj`` canonically (dict keys sorted recursively)."""
    return cast(bytes, msgpack.packb(_canonical(obj), use_bin_type=True))


def encode_lists(obj: Any) -> bytes:
    """Encode a value made only of lists, ints, strings and bytes (no map): already canonical.

    The hot-path entries (K2V items, counters) are built this way, which spares them the
    recursive walk of ``encode``.
    """
    return cast(bytes, msgpack.packb(obj, use_bin_type=True))


def decode(data: bytes) -> Any:
    """Decode msgpack bytes; integer map keys are allowed (DVVS node ids)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def blake2sum(data: bytes) -> bytes:
    """BLAKE2b-512 truncated to 32 bytes, as Garage hashes partitions, keys and values."""
    return hashlib.blake2b(data, digest_size=64).digest()[:32]
