"""The processed dataset's lock for commands that write into a dataset outside the pipeline (validate, score,
and per-bearing / import-features, which write a whole features-only dataset: :func:`claimed_output_lock`).

A pipeline run holds ``<dataset>/.pipeline.lock`` (:data:`bearing_core.locking.PIPELINE_LOCK_FILE`) for its whole
duration and rewrites ``quarantine.parquet``, ``validation/`` and ``scores.parquet``. ``bearing validate`` and
``bearing score`` take the same lock, so a manual command waits for a running pipeline (and vice versa) instead
of interleaving writes. Only the CLI takes it: the flows run under the pipeline's own lock, and the lock is not
re-entrant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bearing_core.locking import PIPELINE_LOCK_FILE, LockTimeout, exclusive_lock

LOCK_TIMEOUT_S = 3600.0
"""Default wait: as long as ``bearing run`` waits for another run on the same dataset."""
LOCKED_EXIT_CODE = 3
"""Exit code when another run still held the dataset lock after ``--lock-timeout``."""


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_lock_timeout_argument(parser: argparse.ArgumentParser) -> None:
    """``--lock-timeout S`` (``args.lock_timeout_s``): how long to wait for another run holding the lock."""
    parser.add_argument(
        "--lock-timeout",
        dest="lock_timeout_s",
        type=_seconds,
        default=LOCK_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait while another run (e.g. the pipeline) holds the dataset's {PIPELINE_LOCK_FILE}; "
        f"exit code {LOCKED_EXIT_CODE} after that (default: %(default)g)",
    )


@contextmanager
def dataset_lock(dataset_dir: Path, timeout_s: float, prog: str) -> Iterator[Path]:
    """Hold ``dataset_dir/.pipeline.lock`` for the block; says once on stderr when it has to wait.

    ``dataset_dir`` must exist (the lock file is created in it). Raises :class:`LockTimeout` after ``timeout_s``.
    """
    with exclusive_lock(
        dataset_dir / PIPELINE_LOCK_FILE,
        timeout_s=timeout_s,
        on_wait=lambda lock: print(f"{prog}: another run holds {lock}: waiting up to {timeout_s:g} s", file=sys.stderr),
    ) as lock:
        yield lock


def report_lock_timeout(exc: LockTimeout, prog: str) -> int:
    """Print the one-line error of a lock wait that timed out; return :data:`LOCKED_EXIT_CODE`."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return LOCKED_EXIT_CODE


@contextmanager
def claimed_output_lock(out_dir: Path, kind: str, timeout_s: float, prog: str) -> Iterator[Path]:
    """Claim ``out_dir`` for ``kind`` (:func:`bearing_core.io.claim_output_dir`: refused unless new, empty or
    ``kind``'s earlier output), then hold its dataset lock while the block rewrites it. A directory created here is
    removed again when the block fails before writing anything into it."""
    from bearing_core.io import OUTPUT_MARKER, claim_output_dir

    created = not out_dir.exists()
    claim_output_dir(out_dir, kind)  # marked before the lock file is created in it
    try:
        with dataset_lock(out_dir, timeout_s, prog) as lock:
            yield lock
    except BaseException:
        if created and {p.name for p in out_dir.iterdir()} <= {OUTPUT_MARKER, PIPELINE_LOCK_FILE}:
            for name in (OUTPUT_MARKER, PIPELINE_LOCK_FILE):
                (out_dir / name).unlink(missing_ok=True)
            with suppress(OSError):
                out_dir.rmdir()
        raise
