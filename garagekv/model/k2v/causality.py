"""Causality tokens: the vector clock a client hands back to say which values it has seen.

The text form is Garage's, so tokens from any K2V client round-trip: URL-safe base64 *without*
padding of ``be64(checksum) ‖ (be64(node) ‖ be64(time))*``, pairs sorted by node, checksum = XOR of
every node id and time. URL-safety matters because some clients put the token into a query string
without percent-encoding it (a ``+`` would come back as a space).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from garagekv.util.errors import BadRequest, InvalidCausalityToken
from garagekv.util.time import now_ms

U64_MAX = 2**64 - 1
#: Most (node, time) pairs a token or an item's causal context may hold: one per node that ever
#: coordinated a write of the item, so far more than any real cluster has, yet small enough that
#: a token stays a reasonable header (16 KiB of binary) and parsing one costs little.
MAX_CONTEXT_ENTRIES = 1024
#: Longest token text with that many pairs (base64 of 8 + 16 * MAX_CONTEXT_ENTRIES bytes).
MAX_TOKEN_CHARS = -(-(8 + 16 * MAX_CONTEXT_ENTRIES) * 4 // 3)

# ---- bounds on clocks that come from clients (docs/k2v-compat.md, "Hostile input") ------------
#
# A node's time for an item is max(its last time + 1, wall-clock ms): it runs ahead of the wall
# clock only by the writes it coordinates faster than one per millisecond. CLOCK_HORIZON_MS is how
# far ahead of its wall clock a coordinator lets a client-supplied time be recorded (a token's
# time for another node; its own entry is never pushed past its own clock). Tokens and seen
# markers are refused beyond twice that, so a node pushed to the horizon by a forged token and
# then loaded for real still hands out tokens that are accepted: to run a further horizon ahead,
# it would have to coordinate 2^47 (1.4e14) writes beyond one per millisecond, 4.5 years at a
# sustained million writes a second. And a clock at the bound is still 2^64 - 2^48 writes away
# from overflowing a u64.
CLOCK_HORIZON_MS = 2**47
MAX_CLOCK_AHEAD_MS = 2 * CLOCK_HORIZON_MS
# Entries per token or seen-marker clock: a token of 256 entries is 5,472 characters, inside
# aiohttp's 8,190-byte header line. Coordinators stop adding entries a client names for nodes
# an item does not know once it has ITEM_CLOCK_SOFT_CAP of them, so concurrent writes merging
# on replicas cannot grow an item's own token past the bound.
MAX_CLOCK_ENTRIES = 256
ITEM_CLOCK_SOFT_CAP = 64
_MAX_TOKEN_CHARS = -(-(8 + 16 * MAX_CLOCK_ENTRIES) * 4 // 3)

# Only the URL-safe alphabet, no padding, no whitespace: anything else is not a token we issued.
_URLSAFE_RE = re.compile(r"[A-Za-z0-9_-]*")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def max_client_time(now: int | None = None) -> int:
    """The largest time a client-supplied clock may carry at wall-clock ``now`` (ms)."""
    return (now_ms() if now is None else now) + MAX_CLOCK_AHEAD_MS


def check_client_clock(vclock: Mapping[int, int], what: str, now: int | None = None) -> None:
    """Refuse (400 ``InvalidRequest``) a clock no node could have issued: too many entries, or
    a time beyond :func:`max_client_time`. Such a clock would push a node's timestamps toward
    the u64 limit or hide later writes behind it."""
    if len(vclock) > MAX_CLOCK_ENTRIES:
        raise BadRequest(f"Invalid {what}: {len(vclock)} clock entries (at most {MAX_CLOCK_ENTRIES})")
    limit = max_client_time(now)
    for node, t in vclock.items():
        if t > limit:
            raise BadRequest(f"Invalid {what}: time {t} for node {node:016x} is beyond any node's clock")


def vclock_gt(a: Mapping[int, int], b: Mapping[int, int]) -> bool:
    """True when ``a`` has seen something ``b`` has not (∃n: a[n] > b[n], missing = 0).

    ``not vclock_gt(a, b)`` reads "a is covered by b".
    """
    return any(t > b.get(n, 0) for n, t in a.items())


def vclock_max(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    """Pointwise maximum: the clock that has seen everything either side has seen."""
    out = dict(a)
    for n, t in b.items():
        out[n] = max(t, out.get(n, 0))
    return out


def is_u64(x: object) -> bool:
    """A genuine int (not bool) in [0, 2**64): what node ids, times and timestamps must be."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= U64_MAX


@dataclass
class CausalContext:
    """A vector clock ``node id -> time`` (both u64), as carried by a causality token."""

    vclock: dict[int, int] = field(default_factory=dict)

    def get(self, node: int, default: int = 0) -> int:
        return self.vclock.get(node, default)

    def items(self) -> Iterator[tuple[int, int]]:
        """Pairs in node order (the order of the binary token)."""
        return iter(sorted(self.vclock.items()))

    def __len__(self) -> int:
        return len(self.vclock)

    def is_newer_than(self, other: CausalContext) -> bool:
        """True when this clock has an event ``other`` has not seen (PollItem's wake-up test)."""
        return vclock_gt(self.vclock, other.vclock)

    def serialize(self) -> str:
        """The token text: URL-safe base64 without padding (never contains ``+``, ``/`` or ``=``)."""
        checksum = 0
        flat: list[int] = []
        for node, time in sorted(self.vclock.items()):
            if not (is_u64(node) and is_u64(time)):
                raise ValueError(f"clock entry {node!r}: {time!r} is not a pair of u64")
            checksum ^= node ^ time
            flat += (node, time)
        raw = struct.pack(f">{len(flat) + 1}Q", checksum, *flat)
        return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")

    @classmethod
    def parse(cls, s: str) -> CausalContext:
        """Parse a token; any malformation raises :class:`InvalidCausalityToken`.

        Rejected: characters outside the URL-safe alphabet (standard ``+``/``/``, ``=`` padding,
        whitespace, non-ASCII), base64 that does not decode or has non-zero trailing bits, a length
        other than 8 + 16k bytes, more than ``MAX_CONTEXT_ENTRIES`` pairs, a checksum mismatch and a
        node listed twice. Pairs need not be sorted (a hand-built token is still unambiguous).
        """
        if not isinstance(s, str) or len(s) > MAX_TOKEN_CHARS:
            raise InvalidCausalityToken(
                f"Invalid causality token: longer than the {MAX_CONTEXT_ENTRIES} (node, time) pairs a token may hold"
                if isinstance(s, str)
                else "Invalid causality token"
            )
        if not _URLSAFE_RE.fullmatch(s) or len(s) % 4 == 1:
            raise InvalidCausalityToken()
        try:
            raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
        except ValueError:
            raise InvalidCausalityToken()
        # Python ignores non-zero padding bits; insist on the one canonical spelling.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != s:
            raise InvalidCausalityToken()
        if len(raw) < 8 or (len(raw) - 8) % 16 != 0:
            raise InvalidCausalityToken()
        (checksum,) = struct.unpack_from(">Q", raw, 0)
        vclock: dict[int, int] = {}
        for off in range(8, len(raw), 16):
            node, time = struct.unpack_from(">QQ", raw, off)
            if node in vclock:
                raise InvalidCausalityToken()
            vclock[node] = time
            checksum ^= node ^ time
        if checksum != 0:
            raise InvalidCausalityToken()
        return cls(vclock)

    @classmethod
    def parse_client(cls, s: str, now: int | None = None) -> CausalContext:
        """Parse a token a client sent: :meth:`parse`, then :func:`check_client_clock`.

        An over-long token is refused before it is decoded.
        """
        if isinstance(s, str) and len(s) > _MAX_TOKEN_CHARS:
            raise BadRequest(f"Invalid causality token: more than {MAX_CLOCK_ENTRIES} clock entries")
        ctx = cls.parse(s)
        check_client_clock(ctx.vclock, "causality token", now)
        return ctx
