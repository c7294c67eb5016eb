"""Prefect flows composing the tasks in ``tasks/``."""

from bearing_core.env import configure_environment as _configure_environment

_configure_environment()
