"""Other processes for tests: a dataset-lock holder, free loopback ports, the `bearing` command line."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_HOLDER = """\
import sys, time
from pathlib import Path
from bearing_core.locking import exclusive_lock
with exclusive_lock(sys.argv[1], timeout_s=0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    Path(sys.argv[1] + ".released").touch()
"""


@contextlib.contextmanager
def lock_held_by_another_process(lock: Path, hold_s: float = 120.0) -> Iterator[Path]:
    """Another Python process holds ``lock`` (``exclusive_lock``) for ``hold_s`` seconds, then touches and yields
    ``<lock>.released`` just before letting go; it is killed when the block exits."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock), str(hold_s)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield lock.with_name(lock.name + ".released")
    finally:
        holder.kill()
        holder.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bearing(*argv: str) -> list[str]:
    """The ``bearing`` command line (this interpreter, so the test's venv)."""
    return [sys.executable, "-m", "cli.main", *argv]
