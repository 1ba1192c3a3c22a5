"""The bottom of the report: how numbers and tables look, how figures are saved (the one backend choice).

Every other report module imports from here; this module imports no other report module.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: the one backend choice of the package
import matplotlib.pyplot as plt  # noqa: E402

from ..core.files import atomic_write_bytes  # noqa: E402

DPI = 150


def fmt(x, digits: int = 4) -> str:
    """How every number appears in the report (tests parse the same format)."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; numbers through :func:`fmt`, strings as they are."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |")
    return "\n".join(lines)


def cell(text: str) -> str:
    """Free text made safe for one table cell."""
    return text.replace("|", "\\|").replace("\n", "⏎")


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as a PNG at :data:`DPI` (written atomically) and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


__all__ = ["DPI", "cell", "fmt", "plt", "save_figure", "table"]
