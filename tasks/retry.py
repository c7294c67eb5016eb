"""Retry conditions shared by the tasks: retry what can pass on a second try, fail at once on what cannot.

A retry only helps when the cause can go away by itself (an NFS hiccup, a disk briefly full, a file briefly held
by a backup). A missing input, a path that is a file instead of a directory, missing permissions, bad parameters
and data errors are the same on every attempt: retrying them only delays the failure message.
"""

from __future__ import annotations

from typing import Any

from prefect.states import State

from bearing_core.locking import LockTimeout

PERMANENT_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
    LockTimeout,  # the run already waited the whole timeout for the other run
)
"""OSError subclasses that describe the set-up, not a hiccup."""


def is_transient(exc: BaseException | None) -> bool:
    """True for I/O errors that may pass on a second attempt (any OSError not in :data:`PERMANENT_OS_ERRORS`)."""
    return isinstance(exc, OSError) and not isinstance(exc, PERMANENT_OS_ERRORS)


def transient_io_error(task: Any, task_run: Any, state: State) -> bool:
    """Prefect ``retry_condition_fn`` (``state.data`` is the exception): retry only transient I/O errors."""
    return is_transient(state.data)
