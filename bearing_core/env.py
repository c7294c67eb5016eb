"""Environment defaults that keep every run offline and project-local.

Call :func:`configure_environment` before importing prefect / flwr / great_expectations: several of them read
their settings at import time. Values already set by the user win. (No Ray settings: the simulation runtime,
:mod:`bearing_core.federated.backend`, does not use Ray.)
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_DEFAULTS: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # otherwise `flwr run` pip-installs the app's dependencies (a CUDA torch) on every run
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "true",
    "DO_NOT_TRACK": "1",
    # Prefect's temporary API server (a `bearing run` with no server up) must start within this many seconds; the
    # default 20 s fails a nightly run on a loaded machine
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # cache records as plain JSON, never pickle (tasks/results.py also refuses any record that is not)
    "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",
}

# Prefect's default result storage is ~/.prefect/storage whatever PREFECT_HOME says (its default is computed
# without PREFECT_HOME): every checkout of every user shared one cache. Prefect reads either name below (the first
# wins); the project sets the second, so that a user or a test setting it explicitly replaces the project's value.
_STORAGE_SETTINGS = ("PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH")


def project_root() -> Path:
    """The directory that holds data/, .prefect/ ...: $BEARING_PROJECT_DIR, else the current directory."""
    return Path(os.environ.get("BEARING_PROJECT_DIR", os.getcwd())).resolve()


def configure_environment(root: Path | None = None) -> dict[str, str]:
    """Set offline defaults and project-local homes (PREFECT_HOME, FLWR_HOME) and Prefect's result
    storage ($PREFECT_HOME/storage, where task cache records live).

    Returns the variables this call set (those not already present in the environment).
    """
    root = (root or project_root()).resolve()
    wanted = dict(OFFLINE_DEFAULTS)
    wanted["PREFECT_HOME"] = str(root / ".prefect")
    wanted["FLWR_HOME"] = str(root / ".flwr")
    # Local API only: the Prefect server (when started) binds loopback.
    wanted["PREFECT_SERVER_API_HOST"] = "127.0.0.1"
    set_now: dict[str, str] = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            set_now[key] = value
    if not any(name in os.environ for name in _STORAGE_SETTINGS):
        storage = str(Path(os.environ["PREFECT_HOME"]) / "storage")
        os.environ[_STORAGE_SETTINGS[1]] = set_now[_STORAGE_SETTINGS[1]] = storage
    for key in ("PREFECT_HOME", "FLWR_HOME"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    return set_now
