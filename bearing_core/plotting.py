"""Shared matplotlib plumbing: a headless backend and atomic PNG writes (the plots themselves live with their data)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bearing_core.io import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported on first use only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, out_png: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` to ``out_png`` atomically and close it."""
    out_png = Path(out_png)
    try:
        with atomic_path(out_png, suffix=".png.tmp") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return out_png
