"""``bearing models``: the published model versions, the champion marked; ``bearing models promote VERSION``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "List published model versions (champion marked) or promote one to 'latest'."
DESCRIPTION = """\
Without an action (or with 'list'): one line per published version under --models-root (default data/models):
version, creation time (UTC), dataset, strategy, final federated holdout MSE, alarm threshold; '*' marks the
champion that data/models/latest points to. Training outputs not yet published (no COMPLETE marker) are not listed.

'promote VERSION' makes VERSION the champion unconditionally (an operator's decision, e.g. after changing the
input features, which automatic champion/challenger promotion refuses to compare); the decision is recorded in
the version's promotion.json."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-root", type=Path, default=None, help="registry directory (default: data/models)")
    # accepted after the action too; SUPPRESS keeps an action's absent flag from overwriting the parent's value
    root_flag = argparse.ArgumentParser(add_help=False)
    root_flag.add_argument("--models-root", type=Path, default=argparse.SUPPRESS, help="registry directory")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", parents=[root_flag], help="list published versions (the default)")
    promote = actions.add_parser("promote", parents=[root_flag], help="make VERSION the champion ('latest')")
    promote.add_argument("version", metavar="VERSION", help="a published version name")
    promote.add_argument("--reason", default="manual promotion", help="recorded in promotion.json")
    parser.set_defaults(func=run)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def run(args: argparse.Namespace) -> int:
    """List (exit 0) or promote (exit 0; 2 if the version is not published)."""
    from bearing_core.config import DataPaths
    from bearing_core.registry import list_versions, promote

    models_root = args.models_root or DataPaths().models_root
    if args.action == "promote":
        try:
            decision = promote(models_root, args.version, reason=args.reason)
        except (FileNotFoundError, ValueError) as exc:
            print(f"bearing models promote: error: {exc}", file=sys.stderr)
            return 2
        before = decision.champion or "none"
        print(f"latest -> {args.version} (was {before}): {decision.reason}")
        return 0
    versions = list_versions(models_root)
    if not versions:
        print(f"no published model versions in {models_root}")
        return 0
    header = ("", "version", "created (UTC)", "dataset", "strategy", "eval MSE", "threshold")
    rows = [
        ("*" if v.is_latest else "", v.version, f"{v.created:%Y-%m-%d %H:%M:%S}", v.dataset, v.strategy,
         _fmt(v.eval_mse), _fmt(v.threshold))
        for v in versions
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    champion = next((v.version for v in versions if v.is_latest), None)
    print(f"\n* champion ({models_root / 'latest'} -> {champion})" if champion else "\nno champion promoted yet")
    return 0
