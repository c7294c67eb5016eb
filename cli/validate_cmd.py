"""`bearing validate DATASET_DIR`: run the data-validation suites on a processed dataset.

Prints one line per check (PASS/WARN/FAIL, passed per-column checks grouped) with details of failures, writes
the Data Docs to DATASET_DIR/validation/index.html and quarantines snapshots failing sample-level checks.
It holds the dataset's pipeline lock while it runs (see :mod:`cli.dataset_lock`), so it never rewrites
``quarantine.parquet`` or ``validation/`` under a running pipeline.
Exit code: 0 when nothing blocks (warnings allowed), 1 when an error expectation fails, 2 on bad arguments or
a missing/unreadable dataset, 3 when another run still held the dataset lock after ``--lock-timeout``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.dataset_lock import (
    add_lock_timeout_argument,
    dataset_lock,
    report_lock_timeout,
)


def register(subparsers: Any) -> None:
    """Add the ``validate`` sub-command."""
    p = subparsers.add_parser(
        "validate",
        help="validate a processed dataset (Great Expectations): samples, features, timeline",
        description=(
            "Validate a processed dataset with Great Expectations. Sample-level failures quarantine the snapshot "
            "(quarantine.parquet, stage 'validate'); features-table errors stop the pipeline. Waits while a "
            "pipeline run (or another validate / score) holds the dataset's lock. Exit 0 = OK (maybe with "
            "warnings), 1 = an error expectation failed, 2 = bad arguments or missing dataset, 3 = the dataset "
            "was still locked after --lock-timeout. Defaults of the thresholds: see ValidationConfig."
        ),
    )
    p.add_argument("dataset_dir", type=Path, metavar="DATASET_DIR", help="processed dataset (output of bearing ingest)")
    p.add_argument("--expected-samples", type=int, help="samples per snapshot (default: dataset.json, 20480)")
    p.add_argument(
        "--channels",
        help="comma-separated expected channel names, in file order: must be the dataset's own (default: dataset.json)",
    )
    p.add_argument("--range", dest="sensor_range_g", type=float, metavar="G", help="sensor range +-G g (default 10)")
    p.add_argument("--flat-std", dest="flat_std_floor_g", type=float, metavar="G",
                   help="std below this (g) = dead sensor (default 1e-4)")  # fmt: skip
    p.add_argument("--max-clip-fraction", type=float, metavar="F",
                   help="max fraction of samples at a channel's max |x| (default 1e-3)")  # fmt: skip
    p.add_argument("--max-gap-factor", type=float, metavar="F",
                   help="warn on gaps longer than F x the site's median interval (default 3)")  # fmt: skip
    p.add_argument("--shutdown-ratio", dest="shutdown_rms_ratio", type=float, metavar="R",
                   help="warn on snapshots with rms below R x the site's median (default 0.1)")  # fmt: skip
    p.add_argument("--max-quarantine-fraction", type=float, metavar="F",
                   help="error when more than F of the snapshots are quarantined (default 0.2)")  # fmt: skip
    p.add_argument("--workers", type=int, help="threads reading samples files (default 4)")
    p.add_argument("--no-docs", dest="build_docs", action="store_false", default=None,
                   help="skip building the Data Docs HTML site")  # fmt: skip
    add_lock_timeout_argument(p)
    p.set_defaults(func=run)


_CONFIG_FIELDS = (
    "expected_samples",
    "sensor_range_g",
    "flat_std_floor_g",
    "max_clip_fraction",
    "max_gap_factor",
    "shutdown_rms_ratio",
    "max_quarantine_fraction",
    "workers",
    "build_docs",
)


def _channels_problem(dataset_dir: Path, text: str, channels: tuple[str, ...]) -> str | None:
    """Why ``--channels`` cannot apply to the dataset, or None.

    The samples files hold exactly the channels ``dataset.json`` declares (ingest writes both), so any other list
    would fail every snapshot's schema check and quarantine the whole dataset: a typo (``--channels 3``) would stop
    monitoring. Such a list is a bad argument. Without declared channels, ``--channels`` is the only source.
    """
    import json

    try:
        declared = tuple(json.loads((dataset_dir / "dataset.json").read_text(encoding="utf-8")).get("channels") or ())
    except (OSError, ValueError, AttributeError):  # missing or unreadable: validate_dataset reports it
        return None
    if not declared or channels == declared:
        return None
    unknown = [c for c in channels if c not in declared]
    what = f"{', '.join(unknown)} not among them" if unknown else "not in that order or not all of them"
    return (
        f"--channels {text}: {dataset_dir} has {len(declared)} channels ({', '.join(declared)}), {what}; "
        "name exactly those, in file order, or omit --channels"
    )


def run(args: argparse.Namespace) -> int:
    """Validate, print the summary, return the exit code."""
    from pydantic import ValidationError

    from bearing_core.locking import LockTimeout
    from bearing_core.validation import ValidationConfig, validate_dataset
    from bearing_core.validation.runner import DataDocsError

    if not args.dataset_dir.is_dir():
        print(f"error: dataset directory not found: {args.dataset_dir}", file=sys.stderr)
        return 2
    overrides = {f: getattr(args, f) for f in _CONFIG_FIELDS if getattr(args, f) is not None}
    if args.channels:
        overrides["channels"] = tuple(c.strip() for c in args.channels.split(",") if c.strip())
        problem = _channels_problem(args.dataset_dir, args.channels, overrides["channels"])
        if problem:
            print(f"bearing validate: error: {problem}", file=sys.stderr)
            return 2
    try:
        cfg = ValidationConfig(**overrides)
    except ValidationError as exc:
        print(f"error: invalid validation settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        with dataset_lock(args.dataset_dir, args.lock_timeout_s, "bearing validate"):
            report = validate_dataset(args.dataset_dir, cfg)
    except LockTimeout as exc:
        return report_lock_timeout(exc, "bearing validate")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataDocsError as exc:  # e.g. a full disk while writing a page: the previous report is kept
        print(f"bearing validate: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary_text())
    return 0 if report.success else 1
