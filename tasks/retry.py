"""Retry conditions shared by the tasks: retry what can pass on a second try, fail at once on what cannot."""

from __future__ import annotations

from typing import Any

from prefect.states import State


def transient_io_error(task: Any, task_run: Any, state: State) -> bool:
    """Retry only I/O hiccups; missing inputs and bad parameters fail at once with their message."""
    return isinstance(state.data, OSError) and not isinstance(state.data, FileNotFoundError)
