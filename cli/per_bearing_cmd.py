"""``bearing per-bearing DATASET_DIR --out DIR``: the per-bearing layout of a processed dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.dataset_lock import add_lock_timeout_argument, claimed_output_lock, report_lock_timeout
from cli.train_cmd import add_holdout_argument

if TYPE_CHECKING:
    from bearing_core.per_bearing import PerBearingResult

HELP = "Write the per-bearing layout of a processed dataset (one row and one site per bearing)."
DESCRIPTION = """\
Read the processed dataset DATASET_DIR (bearing ingest, or bearing import-features) and write DIR: one row per
(snapshot, bearing), site <site>/<bearing>, inputs <axis>_<feature> (a_mean_abs, b_mean_abs on 8-channel IMS data),
each bearing standardised by the moments of its own healthy training rows (--train-fraction, --holdout-mode: use the
same
values when training), optionally after a natural log (--log). Train DIR with --partition natural (one client per
bearing) and a bottleneck narrower than the inputs (--hidden 4,1,4); an alarm's site then names the bearing.
DIR must be new, empty or an earlier per-bearing layout (anything else, the input included, is refused: exit 2);
it is rewritten under its dataset lock (DIR/.pipeline.lock), so a pipeline run on DIR is waited for."""


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the per-bearing layout (shared with ``bearing import-features --per-bearing``)."""
    parser.add_argument("--log", action="store_true", help="natural log of the inputs before standardising")
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.2,
        help="healthy period = earliest fraction of each site's snapshots (default: 0.2)",
    )
    add_holdout_argument(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("per-bearing", help=HELP, description=DESCRIPTION)
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", type=Path, help="processed dataset")
    parser.add_argument(
        "--out",
        dest="out_dir",
        metavar="DIR",
        type=Path,
        required=True,
        help="output dataset dir: new, empty or an earlier per-bearing layout",
    )
    parser.add_argument("--feature", default="mean_abs", help="feature taken for each channel (default: mean_abs)")
    add_layout_arguments(parser)
    add_lock_timeout_argument(parser)
    parser.set_defaults(func=run)


def write_layout(dataset_dir: Path, args: argparse.Namespace) -> PerBearingResult:
    """The per-bearing layout of ``dataset_dir`` in ``args.out_dir``, with the options of :func:`add_layout_arguments`
    (pydantic ``ValidationError``, ``ValueError`` or ``FileNotFoundError`` on bad input)."""
    from bearing_core.inputs import InputConfig
    from bearing_core.per_bearing import PerBearingConfig, write_per_bearing_dataset

    input_cfg = InputConfig(feature=args.feature, train_fraction=args.train_fraction, holdout_mode=args.holdout)
    return write_per_bearing_dataset(
        dataset_dir, args.out_dir, input_cfg, PerBearingConfig(features=(args.feature,), log=args.log)
    )


def describe(layout: PerBearingResult, log: bool) -> str:
    return (
        f"per-bearing layout: sites {', '.join(layout.sites)}, inputs {', '.join(layout.input_columns)}"
        f"{' (ln)' if log else ''}, {layout.rows} rows -> {layout.out_dir}"
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 2 on a missing or unsuitable dataset, a refused --out or bad options, 3 when DIR stayed
    locked by another run for ``--lock-timeout`` seconds."""
    from pydantic import ValidationError

    from bearing_core.locking import LockTimeout
    from bearing_core.per_bearing import OUTPUT_KIND
    from cli.common import validation_message

    try:
        with claimed_output_lock(args.out_dir, OUTPUT_KIND, args.lock_timeout_s, "bearing per-bearing"):
            layout = write_layout(args.dataset_dir, args)
    except LockTimeout as exc:
        return report_lock_timeout(exc, "bearing per-bearing")
    except (FileNotFoundError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        message = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
        print(f"bearing per-bearing: error: {message}", file=sys.stderr)
        return 2
    print(describe(layout, args.log))
    return 0
