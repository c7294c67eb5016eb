"""Thin Prefect tasks over bearing_core: cache policies, retries, logging, artifacts.

Tasks take and return paths plus content hashes, never DataFrames.
"""

import os as _os
import sys as _sys

from bearing_core.env import configure_environment as _configure_environment

_configure_environment()

if "prefect.context" in _sys.modules:
    # Prefect reads its settings once, when first imported. When that came first (`prefect flow-run retry
    # --entrypoint ...`, a worker's flow-run process), reload them so that this process's results go to the
    # project's storage set just above, like every other run's.
    from prefect.context import refresh_global_settings_context as _refresh
    from prefect.settings import get_current_settings as _settings

    _wanted = _os.environ.get("PREFECT_RESULTS_LOCAL_STORAGE_PATH") or _os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    if _wanted and str(_settings().results.local_storage_path) != _wanted:
        _refresh()
