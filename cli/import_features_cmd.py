"""``bearing import-features TABLE.csv --out DIR``: a features-only processed dataset from a per-file table."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cli.train_cmd import HOLDOUT_HELP

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
standardised by the moments of its own healthy training rows (--train-fraction, --holdout: use the same values when
training), optionally after a natural log (--log). Train it with --partition natural (one client per bearing); an
alarm's site then names the bearing."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import-features", help=HELP, description=DESCRIPTION)
    parser.add_argument("table", metavar="TABLE", type=Path, help="per-file feature table (.csv)")
    parser.add_argument("--out", dest="out_dir", metavar="DIR", type=Path, required=True, help="output dataset dir")
    parser.add_argument("--site", default=None, help="site name (default: the table's name without _<feature>)")
    parser.add_argument("--feature", default="mean_abs", help="feature the table holds (default: mean_abs)")
    parser.add_argument("--per-bearing", action="store_true", help="write the per-bearing layout (see above)")
    parser.add_argument("--log", action="store_true", help="with --per-bearing: natural log of the inputs first")
    parser.add_argument(
        "--train-fraction", type=float, default=0.2,
        help="with --per-bearing: healthy period = earliest fraction of the snapshots (default: 0.2)",
    )
    parser.add_argument("--holdout", choices=("last", "interleaved"), default="last", help=HOLDOUT_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 2 on a missing or malformed table or bad options."""
    from pydantic import ValidationError

    from bearing_core.features_import import import_features

    if args.log and not args.per_bearing:
        print("bearing import-features: error: --log needs --per-bearing", file=sys.stderr)
        return 2
    try:
        if not args.per_bearing:
            result, layout = import_features(args.table, args.out_dir, site=args.site, feature=args.feature), None
        else:
            result, layout = _import_per_bearing(args)
    except ValidationError as exc:
        error = exc.errors()[0]
        print(f"bearing import-features: error: {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"bearing import-features: error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {result.rows} snapshots of site {result.site} ({result.first} .. {result.last}), "
          f"channels {', '.join(result.channels)}, feature {result.feature} -> "
          f"{args.out_dir if layout is None else layout.out_dir}")
    if layout is not None:
        print(f"per-bearing layout: sites {', '.join(layout.sites)}, inputs {', '.join(layout.input_columns)}"
              f"{' (ln)' if args.log else ''}, {layout.rows} rows")
    return 0


def _import_per_bearing(args: argparse.Namespace) -> tuple[ImportResult, PerBearingResult]:
    """Import the wide table into a temporary dataset next to ``--out``, then write its per-bearing layout."""
    from bearing_core.features_import import import_features
    from bearing_core.inputs import InputConfig
    from bearing_core.per_bearing import PerBearingConfig, write_per_bearing_dataset

    input_cfg = InputConfig(feature=args.feature, train_fraction=args.train_fraction, holdout_mode=args.holdout)
    args.out_dir.parent.mkdir(parents=True, exist_ok=True)
    wide = Path(tempfile.mkdtemp(prefix=f".{args.out_dir.name}.wide-", dir=args.out_dir.parent))
    try:
        result = import_features(args.table, wide, site=args.site, feature=args.feature)
        layout = write_per_bearing_dataset(
            wide, args.out_dir, input_cfg, PerBearingConfig(features=(args.feature,), log=args.log)
        )
    finally:
        shutil.rmtree(wide, ignore_errors=True)
    return result, layout
