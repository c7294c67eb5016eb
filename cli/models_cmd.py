"""``bearing models``: the published model versions by dataset, each dataset's champion marked;
``bearing models promote DATASET VERSION``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "List published model versions by dataset (champions marked) or promote one to its dataset's 'latest'."
DESCRIPTION = """\
Each dataset has its own registry: data/models/<dataset>/<version>/ and data/models/<dataset>/latest, its
champion (<dataset> = the processed dataset directory's name, e.g. demo for data/processed/demo). A model is
only ever compared with, and replaces, the champion of the dataset it was trained on, and bearing score
DATASET_DIR --model latest uses DATASET_DIR's champion.

Without an action (or with 'list'): the published versions under --models-root (default data/models), grouped by
dataset: version, creation time (UTC), strategy, final federated holdout MSE, alarm threshold; '*' marks the
dataset's champion. Training outputs not yet published (no COMPLETE marker) are not listed.

'promote DATASET VERSION' makes VERSION (a published version of DATASET) that dataset's champion
unconditionally, an operator's decision (e.g. to go back to an earlier version); it is recorded in the
version's promotion.json. Example: bearing models promote demo 20260101T020000Z-1a2b3c4d

A registry of the earlier flat layout (data/models/<version>/ and data/models/latest) is moved into the
per-dataset layout the first time any command reads it, one printed line per move."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-root", type=Path, default=None, help="registry directory (default: data/models)")
    # accepted after the action too; SUPPRESS keeps an action's absent flag from overwriting the parent's value
    root_flag = argparse.ArgumentParser(add_help=False)
    root_flag.add_argument("--models-root", type=Path, default=argparse.SUPPRESS, help="registry directory")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", parents=[root_flag], help="list published versions by dataset (the default)")
    promote = actions.add_parser(
        "promote",
        parents=[root_flag],
        help="make VERSION the champion ('latest') of DATASET",
        description="Make VERSION, a published version of DATASET, the champion of DATASET "
        "(data/models/DATASET/latest). Example: bearing models promote demo 20260101T020000Z-1a2b3c4d",
    )
    promote.add_argument("dataset", metavar="DATASET", help="the dataset's name (data/processed/DATASET)")
    promote.add_argument("version", metavar="VERSION", help="a published version of DATASET (bearing models)")
    promote.add_argument("--reason", default="manual promotion", help="recorded in promotion.json")
    parser.set_defaults(func=run)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def run(args: argparse.Namespace) -> int:
    """List (exit 0) or promote (exit 0; 2 if the version is not a published version of the dataset)."""
    from bearing_core.config import DataPaths
    from bearing_core.registry import LATEST, list_versions, promote, registry_dir

    models_root = args.models_root or DataPaths().models_root
    if args.action == "promote":
        try:
            decision = promote(models_root, args.dataset, args.version, reason=args.reason)
        except (FileNotFoundError, ValueError) as exc:
            print(f"bearing models promote: error: {exc}", file=sys.stderr)
            return 2
        before = decision.champion or "none"
        print(f"{registry_dir(models_root, args.dataset) / LATEST} -> {args.version} (was {before}): {decision.reason}")
        return 0
    versions = list_versions(models_root)
    if not versions:
        print(f"no published model versions in {models_root}")
        return 0
    header = ("", "version", "created (UTC)", "strategy", "eval MSE", "threshold")
    rows = {
        v.path: (
            "*" if v.is_latest else "",
            v.version,
            f"{v.created:%Y-%m-%d %H:%M:%S}",
            v.strategy,
            _fmt(v.eval_mse),
            _fmt(v.threshold),
        )
        for v in versions
    }
    widths = [max(len(str(r[i])) for r in (header, *rows.values())) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()

    for i, dataset in enumerate(dict.fromkeys(v.dataset for v in versions)):
        group = [v for v in versions if v.dataset == dataset]
        champion = next((v.version for v in group if v.is_latest), None)
        link = registry_dir(models_root, dataset) / LATEST
        print(
            ("\n" if i else "")
            + f"dataset {dataset}: "
            + (f"champion {champion} ({link})" if champion else "no champion promoted yet")
        )
        print(line(header))
        for v in group:
            print(line(rows[v.path]))
    return 0
