"""Shared pytest fixtures: the project-local environment and the real IMS excerpt (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bearing_core.env import configure_environment

configure_environment()  # offline and project-local before any test imports prefect (no analytics, no telemetry)


def _find_shared_ims() -> Path:
    """``$BEARING_SHARED_IMS``, else ``shared/ims`` beside the checkout or beside one of its parent directories
    (``/work/shared/ims`` for ``/work/main`` and for a worktree ``/work/wt/<name>`` alike)."""
    if os.environ.get("BEARING_SHARED_IMS"):
        return Path(os.environ["BEARING_SHARED_IMS"])
    repo = Path(__file__).resolve().parents[1]
    for parent in repo.parents:
        if (parent / "shared" / "ims").is_dir():
            return parent / "shared" / "ims"
    return repo.parent / "shared" / "ims"


SHARED_IMS = _find_shared_ims()


@pytest.fixture(scope="session")
def shared_ims() -> Path:
    """The real NASA IMS excerpt (read-only; the only way tests locate it); the test is skipped when it is absent."""
    if not (SHARED_IMS / "raw" / "1st_test").is_dir():
        pytest.skip(f"real IMS data not available at {SHARED_IMS}")
    return SHARED_IMS
