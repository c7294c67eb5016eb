"""Thin Prefect tasks over bearing_core: cache policies, retries, logging, artifacts.

Tasks take and return paths plus content hashes, never DataFrames.
"""

from bearing_core.env import configure_environment as _configure_environment

_configure_environment()
