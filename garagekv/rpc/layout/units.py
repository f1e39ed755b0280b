"""How sizes are shown to operators (shared by the role table and the layout reports)."""

from __future__ import annotations

import math

_PREFIXES = "KMGTPE"


def format_bytes(n: int) -> str:
    """Garage's size display (``bytesize`` 1.3 ``to_string_as(false)``).

    1000-based values with an exponent taken in base 1024 (a quirk Garage's docs show:
    1 GB prints as ``1000.0 MB``, 2 GB as ``2.0 GB``).
    """
    if n < 1000:
        return f"{n} B"
    exp = max(1, min(int(math.log(n) / math.log(1024)), len(_PREFIXES)))
    return f"{n / 1000**exp:.1f} {_PREFIXES[exp - 1]}B"
