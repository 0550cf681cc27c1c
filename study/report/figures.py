"""Matplotlib for the report: the file-only backend and a figure as PNG bytes."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["fig_png", "pyplot"]


def pyplot() -> Any:
    """matplotlib.pyplot with the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()
