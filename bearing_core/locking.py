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
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

PIPELINE_LOCK_FILE = ".pipeline.lock"
"""Held by a pipeline run for its whole duration, in the processed dataset directory."""
REGISTRY_LOCK_FILE = ".registry.lock"
"""Held while a version is published or ``latest`` is swapped, in the models root."""


class LockTimeout(OSError):
    """The lock was still held by another process or thread when the timeout expired.

    Not a ``TimeoutError``: Prefect turns a flow's TimeoutError into a ``TimedOut`` state that reads "Flow run
    failed due to timeout", as if the run itself had been too slow."""


def lock_holder(lock_path: str | os.PathLike[str]) -> str:
    """Who holds (or last held) ``lock_path``: "pid 1234 on host, since 2026-01-02 03:04:05 UTC", as its holder
    wrote it into the lock file; "holder unknown" when the file is empty or unreadable."""
    try:
        text = Path(lock_path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0][:200] if text else "holder unknown"


@contextlib.contextmanager
def exclusive_lock(
    lock_path: str | os.PathLike[str],
    timeout_s: float = 3600.0,
    poll_s: float = 0.5,
    on_wait: Callable[[Path], None] | None = None,
    label: str | None = None,
) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_path`` (created with its parent directory if missing) for the block.

    Waits while another holder has it, polling every ``poll_s`` seconds; ``on_wait(lock_path)`` is called once
    when the first attempt finds the lock taken (e.g. to log that this run waits). Raises :class:`LockTimeout`
    after ``timeout_s`` seconds, naming the holder (:func:`lock_holder`) and, when given, ``label`` (what the lock
    protects, e.g. "dataset data/processed/demo"). Each call opens its own file description, so the lock also
    excludes other threads of the same process; it is not re-entrant. The holder writes its pid, host and start
    time into the lock file.
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
                    holder = lock_holder(path)
                    subject = f"{label} is locked by another run ({holder}): " if label else ""
                    raise LockTimeout(  # with a label: the lock file's name only (no machine path in the UI)
                        f"{subject}{path.name if label else path} is still held by another run after {timeout_s:g} s"
                        f"{'' if label else f' ({holder})'}: wait for it to finish (or raise the timeout) and "
                        "run again"
                    ) from None
                if not waited and on_wait is not None:
                    on_wait(path)
                waited = True
                time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        fh.seek(0)
        fh.truncate()
        since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode())
        fh.flush()
        try:
            yield path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
