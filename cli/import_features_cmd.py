"""``bearing import-features TABLE.csv --out DIR``: a features-only processed dataset from a per-file table."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cli.dataset_lock import add_lock_timeout_argument, claimed_output_lock, report_lock_timeout
from cli.per_bearing_cmd import add_layout_arguments, describe, write_layout

if TYPE_CHECKING:
    from bearing_core.features_import import ImportResult
    from bearing_core.per_bearing import PerBearingResult

HELP = "Build a features-only processed dataset from a per-file feature table (file + one column per channel)."
DESCRIPTION = """\
Read TABLE (CSV: a 'file' column holding IMS file names YYYY.MM.DD.hh.mm.ss, then one numeric column per channel,
e.g. ../shared/ims/features/1st_test_mean_abs.csv) and write DIR/features.parquet (timestamp, file, site, path,
<channel>_<feature>), an empty DIR/quarantine.parquet and DIR/dataset.json (features_only: true). Training with
--feature <feature> and scoring then work on DIR like on an ingested dataset.

With --per-bearing, DIR holds the per-bearing layout instead (bearing_core.per_bearing): one row per (snapshot,
bearing), site <site>/<bearing>, inputs <axis>_<feature> (a_mean_abs, b_mean_abs on the IMS 1st test), each bearing
standardised by the moments of its own healthy training rows (--train-fraction, --holdout-mode: use the same values when
training), optionally after a natural log (--log). Train it with --partition natural (one client per bearing); an
alarm's site then names the bearing.

DIR must be new, empty or this command's earlier output of the same layout (an ingested dataset or any other
folder is refused: exit 2); it is rewritten under its dataset lock (DIR/.pipeline.lock)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import-features", help=HELP, description=DESCRIPTION)
    parser.add_argument("table", metavar="TABLE", type=Path, help="per-file feature table (.csv)")
    parser.add_argument(
        "--out",
        dest="out_dir",
        metavar="DIR",
        type=Path,
        required=True,
        help="output dataset dir: new, empty or an earlier import of the same layout",
    )
    parser.add_argument("--site", default=None, help="site name (default: the table's name without _<feature>)")
    parser.add_argument("--feature", default="mean_abs", help="feature the table holds (default: mean_abs)")
    parser.add_argument("--per-bearing", action="store_true", help="write the per-bearing layout (see above)")
    add_layout_arguments(parser.add_argument_group("with --per-bearing"))
    add_lock_timeout_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 2 on a missing or malformed table, a refused --out or bad options, 3 when DIR stayed
    locked by another run for ``--lock-timeout`` seconds."""
    from pydantic import ValidationError

    from bearing_core import features_import, per_bearing
    from bearing_core.features_import import import_features
    from bearing_core.locking import LockTimeout
    from cli.common import validation_message
    from cli.console import printable

    if args.log and not args.per_bearing:
        print("bearing import-features: error: --log needs --per-bearing", file=sys.stderr)
        return 2
    kind = per_bearing.OUTPUT_KIND if args.per_bearing else features_import.OUTPUT_KIND
    try:
        with claimed_output_lock(args.out_dir, kind, args.lock_timeout_s, "bearing import-features"):
            if not args.per_bearing:
                result, layout = import_features(args.table, args.out_dir, site=args.site, feature=args.feature), None
            else:
                result, layout = _import_per_bearing(args)
    except LockTimeout as exc:
        return report_lock_timeout(exc, "bearing import-features")
    except (FileNotFoundError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        message = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
        print(f"bearing import-features: error: {printable(message)}", file=sys.stderr)
        return 2
    print(
        printable(
            f"imported {result.rows} snapshots of site {result.site} ({result.first} .. {result.last}), "
            f"channels {', '.join(result.channels)}, feature {result.feature} -> "
            f"{args.out_dir if layout is None else layout.out_dir}"
        )
    )
    if layout is not None:
        print(printable(describe(layout, args.log)))
    return 0


def _import_per_bearing(args: argparse.Namespace) -> tuple[ImportResult, PerBearingResult]:
    """Import the wide table into a temporary dataset next to ``--out``, then write its per-bearing layout."""
    from bearing_core.features_import import import_features
    from bearing_core.inputs import InputConfig

    InputConfig(feature=args.feature, train_fraction=args.train_fraction, holdout_mode=args.holdout)  # fail early
    args.out_dir.parent.mkdir(parents=True, exist_ok=True)
    wide = Path(tempfile.mkdtemp(prefix=f".{args.out_dir.name}.wide-", dir=args.out_dir.parent))
    try:
        result = import_features(args.table, wide, site=args.site, feature=args.feature)
        layout = write_layout(wide, args)
    finally:
        shutil.rmtree(wide, ignore_errors=True)
    return result, layout
