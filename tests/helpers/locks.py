"""A file lock held by another thread for the length of a block: what a concurrent run looks like to a test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bearing_core.locking import exclusive_lock


@contextmanager
def lock_held_elsewhere(lock: Path, hold_s: float = 60.0) -> Iterator[None]:
    """Hold ``lock`` (:func:`bearing_core.locking.exclusive_lock`) in another thread while the block runs (at most
    ``hold_s``); released and joined on exit."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with exclusive_lock(lock):
            held.set()
            release.wait(hold_s)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        if not held.wait(10):
            raise RuntimeError(f"could not take {lock} within 10 s")
        yield
    finally:
        release.set()
        thread.join()
