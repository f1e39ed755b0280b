"""The one error type of the layout layer.

Layout problems are operator problems (too few nodes, a wrong ``--version``, a tampered layout
received from a peer), so they are admin errors: the admin API and the CLI show the message as is.
"""

from __future__ import annotations

from garagekv.util.errors import AdminError


class LayoutError(AdminError):
    """A layout that cannot be computed, applied, decoded or trusted; the message says why."""
