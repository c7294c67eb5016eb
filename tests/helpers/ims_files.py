"""IMS-format raw files for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ims_file(path: Path, data: np.ndarray) -> Path:
    """Write ``data`` (n_samples, n_channels) as an IMS snapshot: tab-separated, 3 decimals, no header, ``\\n``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.asarray(data, dtype=np.float64), fmt="%.3f", delimiter="\t", newline="\n")
    return path
