"""Column layout shared by the layout texts (``layout show``, ``layout history``, apply reports)."""

from __future__ import annotations


def format_table(rows: list[str]) -> str:
    """Tab-separated rows to aligned columns (each but the last padded to max width + 2)."""
    cells = [r.split("\t") for r in rows]
    ncols = max((len(c) for c in cells), default=0)
    widths = [0] * ncols
    for c in cells:
        for i, cell in enumerate(c[:-1]):
            widths[i] = max(widths[i], len(cell))
    out = []
    for c in cells:
        line = "".join(cell.ljust(widths[i] + 2) for i, cell in enumerate(c[:-1])) + (c[-1] if c else "")
        out.append(line.rstrip())
    return "\n".join(out)


def short_id(node: bytes) -> str:
    return node.hex()[:16]


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}" if whole else "0.0"
