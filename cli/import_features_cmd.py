"""``bearing import-features TABLE.csv --out DIR``: a features-only processed dataset from a per-file table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Build a features-only processed dataset from a per-file feature table (file + one column per channel)."
DESCRIPTION = """\
Read TABLE (CSV: a 'file' column holding IMS file names YYYY.MM.DD.hh.mm.ss, then one numeric column per channel,
e.g. ../shared/ims/features/1st_test_mean_abs.csv) and write DIR/features.parquet (timestamp, file, site, path,
<channel>_<feature>), an empty DIR/quarantine.parquet and DIR/dataset.json (features_only: true). Training with
--feature <feature> and scoring then work on DIR like on an ingested dataset."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import-features", help=HELP, description=DESCRIPTION)
    parser.add_argument("table", metavar="TABLE", type=Path, help="per-file feature table (.csv)")
    parser.add_argument("--out", dest="out_dir", metavar="DIR", type=Path, required=True, help="output dataset dir")
    parser.add_argument("--site", default=None, help="site name (default: the table's name without _<feature>)")
    parser.add_argument("--feature", default="mean_abs", help="feature the table holds (default: mean_abs)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 2 on a missing or malformed table."""
    from bearing_core.features_import import import_features

    try:
        result = import_features(args.table, args.out_dir, site=args.site, feature=args.feature)
    except (FileNotFoundError, ValueError) as exc:
        print(f"bearing import-features: error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {result.rows} snapshots of site {result.site} ({result.first} .. {result.last}), "
          f"channels {', '.join(result.channels)}, feature {result.feature} -> {result.out_dir}")
    return 0
