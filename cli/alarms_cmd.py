"""``bearing alarms list`` / ``bearing alarms clear SITE/BEARING``: the alarms of a dataset and their clearances."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

HELP = "List a dataset's alarms per bearing, or clear one (the rolling healthy policy then trains on it again)."
DESCRIPTION = """\
'list' (the default): per site (SITE/BEARING in the per-bearing layout) of the dataset's latest scores, its alarm
snapshots, first and last alarm, and the clearance recorded for it.

'clear SITE/BEARING': an operator records that the site's alarms are dealt with (bearing replaced, false alarm
explained). The rolling healthy policy (pipeline parameter healthy=rolling) keeps a site in alarm out of training
(no new rows) until then; alarms at or before the clearance's --until (default: the site's latest scored
snapshot) are forgotten. Written atomically to <dataset>/alarm_clearances.json with who and when.
Example: bearing alarms clear site_2/B3 --note "bearing 3 replaced" """


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "alarms", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dataset",
        type=Path,
        default=argparse.SUPPRESS,
        help="processed dataset directory (default: data/processed/demo)",
    )
    parser.add_argument(
        "--dataset", type=Path, default=None, help="processed dataset directory (default: data/processed/demo)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", parents=[common], help="alarms per site and their clearances (the default)")
    clear = actions.add_parser(
        "clear",
        parents=[common],
        help="clear the alarms of SITE/BEARING",
        description="Clear the alarms of SITE/BEARING (see bearing alarms --help).",
    )
    clear.add_argument("site", metavar="SITE/BEARING", help="e.g. site_2/B3 (a site of the scores)")
    clear.add_argument(
        "--until",
        type=datetime.fromisoformat,
        default=None,
        help="data time up to which alarms are cleared (default: the site's latest scored snapshot)",
    )
    clear.add_argument("--by", default=None, help="who clears (default: the login name)")
    clear.add_argument("--note", default="", help="why (recorded)")
    parser.set_defaults(func=run)


def _scores_path(dataset: Path) -> Path | None:
    from bearing_core.inputs import PER_BEARING_DIR
    from bearing_core.scoring import SCORES_FILE

    for path in (dataset / PER_BEARING_DIR / SCORES_FILE, dataset / SCORES_FILE):
        if path.is_file():
            return path
    return None


def run(args: argparse.Namespace) -> int:
    """Exit 0; 2 for a dataset without scores or an unknown site."""
    import pandas as pd

    from bearing_core.healthy import clear_alarm, load_clearances

    prog = "bearing alarms"
    dataset = args.dataset or Path("data/processed/demo")
    scores_path = _scores_path(dataset)
    if scores_path is None:
        print(f"{prog}: error: no scores in {dataset} (run bearing run or bearing score first)", file=sys.stderr)
        return 2
    scores = pd.read_parquet(scores_path, columns=["timestamp", "site", "alarm"])
    scores["site"] = scores["site"].astype(str)
    if args.action == "clear":
        rows = scores[scores["site"] == args.site]
        if rows.empty:
            sites = ", ".join(sorted(scores["site"].unique()))
            print(f"{prog}: error: no site {args.site!r} in {scores_path} (sites: {sites})", file=sys.stderr)
            return 2
        until = args.until if args.until is not None else rows["timestamp"].max()
        entry = clear_alarm(dataset, args.site, until, by=args.by, note=args.note)
        print(f"cleared {args.site} up to {entry['until']} (by {entry['by']} at {entry['at']})")
        return 0
    clearances = load_clearances(dataset)
    alarms = scores[scores["alarm"].to_numpy(bool)]
    per_site = alarms.groupby("site")["timestamp"].agg(["size", "min", "max"])
    print(f"{'site':<20} {'alarm snapshots':>15}  {'first alarm':<19}  {'last alarm':<19}  cleared")
    for site in sorted(scores["site"].unique()):
        n, first, last = per_site.loc[site] if site in per_site.index else (0, None, None)
        entry = clearances.get(site)
        cleared = f"until {entry['until']} by {entry['by']} at {entry['at']}" if entry else "-"

        def stamp(t):
            return "-" if t is None else f"{pd.Timestamp(t):%Y-%m-%d %H:%M:%S}"

        print(f"{site:<20} {int(n):>15}  {stamp(first):<19}  {stamp(last):<19}  {cleared}")
    return 0
