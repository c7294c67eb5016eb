"""Waiting exclusive locks for writers that share a directory (overlapping pipeline runs, the model registry).

Two runs at once (the nightly run and a manual ``bearing run``) would otherwise interleave read-modify-write
updates of one dataset (``quarantine.parquet``, ``scores.parquet``) or of the registry's ``latest``. The lock is
an advisory ``flock`` on a file in the shared directory: the OS releases it when the holder exits, even if it is
killed, so a crashed run never leaves a stale lock behind. Unlike the ingest lock (which fails at once), these
locks *wait* for the holder to finish, up to a timeout, and then fail with a message naming the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PIPELINE_LOCK_FILE = ".pipeline.lock"
"""Held by a pipeline run for its whole duration, in the processed dataset directory."""
REGISTRY_LOCK_FILE = ".registry.lock"
"""Held while a version is published or ``latest`` is swapped, in the models root."""


class LockTimeout(TimeoutError):
    """The lock was still held by another process or thread when the timeout expired."""


@contextlib.contextmanager
def exclusive_lock(
    lock_path: str | os.PathLike[str],
    timeout_s: float = 3600.0,
    poll_s: float = 0.5,
    on_wait: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_path`` (created with its parent directory if missing) for the block.

    Waits while another holder has it, polling every ``poll_s`` seconds; ``on_wait(lock_path)`` is called once
    when the first attempt finds the lock taken (e.g. to log that this run waits). Raises :class:`LockTimeout`
    after ``timeout_s`` seconds. Each call opens its own file description, so the lock also excludes other
    threads of the same process; it is not re-entrant.
    """
    if timeout_s < 0 or poll_s <= 0:
        raise ValueError(f"timeout_s must be >= 0 and poll_s > 0, got {timeout_s} and {poll_s}")
    path = Path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+b") as fh:
        waited = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{path} is still held by another run after {timeout_s:g} s: wait for it to finish "
                        "(or raise the timeout) and run again"
                    ) from None
                if not waited and on_wait is not None:
                    on_wait(path)
                waited = True
                time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        try:
            yield path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
