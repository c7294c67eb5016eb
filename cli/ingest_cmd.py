"""``bearing ingest RAW_DIR``: raw IMS files -> processed Parquet dataset (incremental, parallel)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.dataset_lock import add_lock_timeout_argument, dataset_lock, report_lock_timeout

if TYPE_CHECKING:  # type hints only: the real imports stay inside run() so `bearing --help` is fast
    from bearing_core.ingest import IngestProgress

HELP = "Parse raw IMS snapshot files into Parquet samples, features and a quarantine list (incremental)."
DESCRIPTION = """\
Parse every IMS snapshot under RAW_DIR (files at its top, or one sub-folder per site) into OUT_DIR:
samples/<rel>.parquet, features.parquet, quarantine.parquet, manifest.parquet and dataset.json.
Re-runs only parse new or modified files; deleted files disappear from the outputs. Bad files never stop
the run: they are listed in quarantine.parquet with a precise reason, and the exit code stays 0.
Waits while a pipeline run (or validate / score) holds OUT_DIR's dataset lock; exit code 3 if it is still held
after --lock-timeout. Prints one summary line 'ingested N, unchanged M, quarantined Q' on stdout; progress goes to
stderr."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ingest", help=HELP, description=DESCRIPTION)
    parser.add_argument("raw_dir", metavar="RAW_DIR", type=Path, help="directory of raw IMS files")
    parser.add_argument(
        "--out",
        dest="out_dir",
        metavar="OUT_DIR",
        type=Path,
        default=None,
        help="output directory (default: data/processed/<name of RAW_DIR>)",
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=None, help="files per worker task (default: 32)")
    parser.add_argument(
        "--channels",
        type=int,
        choices=(4, 8),
        default=None,
        help="channels per file (default: from an existing dataset.json, else the first valid file)",
    )
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read files that RAW_DIR links to wherever they are (DVC-style folders linking into a cache); each "
        "link is resolved once, its target recorded in manifest.parquet (default: links leaving RAW_DIR are "
        "quarantined, never read)",
    )
    add_lock_timeout_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the ingest with a rich progress bar on stderr; exit 2 on configuration errors, 3 when the dataset stayed
    locked by another run, else 0."""
    from pydantic import ValidationError

    from bearing_core.config import DataPaths, IngestConfig
    from bearing_core.ingest import IngestError, ingest_directory
    from bearing_core.locking import LockTimeout
    from cli.common import validation_message

    overrides = {
        key: value
        for key, value in {"workers": args.workers, "batch_size": args.batch_size, "channels": args.channels}.items()
        if value is not None
    }
    try:
        cfg = IngestConfig(
            raw_dir=args.raw_dir, out_dir=args.out_dir, follow_symlinks=args.follow_symlinks, **overrides
        )
    except ValidationError as exc:
        print(f"bearing ingest: error: {validation_message(exc)}", file=sys.stderr)
        return 2
    out_dir = cfg.resolved_out_dir(DataPaths())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with dataset_lock(out_dir, args.lock_timeout_s, "bearing ingest"), _ProgressBar() as bar:
            report = ingest_directory(cfg, progress=bar.update)
    except LockTimeout as exc:
        return report_lock_timeout(exc, "bearing ingest")
    except IngestError as exc:
        print(f"bearing ingest: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary_line())
    print(f"outputs: {report.out_dir}")
    for name, path in report.outputs.items():
        print(f"  {name:<11}{path}")
    if report.rebuilt_reason:
        print(f"note: everything was re-ingested: {report.rebuilt_reason}", file=sys.stderr)
    return 0


class _ProgressBar:
    """rich progress on stderr: files done/total and MB/s of raw data, refreshed after each batch."""

    def __enter__(self) -> _ProgressBar:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            TextColumn("{task.fields[mb_per_s]:.1f} MB/s"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("ingest", total=None, mb_per_s=0.0)
        return self

    def update(self, p: IngestProgress) -> None:
        elapsed = self._progress.tasks[0].elapsed or 0.0
        mb_per_s = p.bytes_done / 1e6 / elapsed if elapsed > 0 else 0.0
        self._progress.update(self._task, completed=p.files_done, total=p.files_total, mb_per_s=mb_per_s)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
