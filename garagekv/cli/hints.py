"""Command hints in the CLI's output name the config file the command was run with.

The node writes hints such as ``garagekv layout apply --version 2`` into its messages; it does
not know how the operator reaches it. An operator who ran ``garagekv -c node1.toml layout show``
must be able to copy the hint as printed, so the CLI inserts its own ``-c FILE`` before printing.
"""

from __future__ import annotations

import re
import shlex

_COMMANDS = ("layout", "repair", "node", "key", "bucket", "status", "stats", "worker", "meta")
_HINT = re.compile(r"\bgaragekv (?=(?:" + "|".join(_COMMANDS) + r")\b)")

_config: str | None = None


def use_config(path: str | None) -> None:
    """Remember the ``-c`` path of this invocation (None: the default config, nothing to add)."""
    global _config
    _config = path


def with_config(text: str) -> str:
    if not _config:
        return text
    return _HINT.sub(f"garagekv -c {shlex.quote(_config)} ", text)
