"""Shared pytest fixtures: the real IMS excerpt (skipped when absent) and an IMS-format file writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bearing_core.env import configure_environment

configure_environment()  # offline and project-local before any test imports prefect (no analytics, no telemetry)

SHARED_IMS = Path(__file__).resolve().parents[2] / "shared" / "ims"


@pytest.fixture(scope="session")
def shared_ims() -> Path:
    """``/work/shared/ims`` (real NASA IMS files, read-only); the test is skipped when it is not there."""
    if not (SHARED_IMS / "raw" / "1st_test").is_dir():
        pytest.skip(f"real IMS data not available at {SHARED_IMS}")
    return SHARED_IMS


def write_ims_file(path: Path, data: np.ndarray) -> Path:
    """Write ``data`` (n_samples, n_channels) as an IMS snapshot: tab-separated, 3 decimals, no header, ``\\n``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.asarray(data, dtype=np.float64), fmt="%.3f", delimiter="\t", newline="\n")
    return path
