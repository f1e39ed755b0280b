"""Argument types shared by the CLI's commands."""

from __future__ import annotations

import argparse

U64_MAX = 2**64 - 1


def u64(text: str) -> int:
    """A whole number a node can be sent (layout versions, worker ids): 0 to 2^64 - 1.

    argparse turns the ValueError of a bigger one into the usual one-line usage error, instead
    of a message the node could not even encode.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0 <= value <= U64_MAX:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0 to {U64_MAX})")
    return value
