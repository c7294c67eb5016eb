"""Project-local runtime directories (bearing_core.env)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bearing_core.env import configure_environment


def test_configure_environment_sets_the_homes_and_keeps_the_users_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("PREFECT_HOME", "FLWR_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "mine"))
    set_now = configure_environment(tmp_path)
    assert os.environ["PREFECT_HOME"] == set_now["PREFECT_HOME"] == str(tmp_path.resolve() / ".prefect")
    assert os.environ["FLWR_HOME"] == str(tmp_path / "mine") and "FLWR_HOME" not in set_now
    assert all(Path(os.environ[key]).is_dir() for key in ("PREFECT_HOME", "FLWR_HOME"))
    assert not [key for key in set_now if key.startswith("RAY_")]  # the simulation runtime does not use Ray
    assert not (tmp_path / ".ray").exists()
