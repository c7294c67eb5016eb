"""``bearing evaluate SCORES``: detection numbers of a scores table against a known failure (and a plot)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

HELP = "Detection quality of a scores table: first alarm, lead time before failure, false alarms (and a plot)."
DESCRIPTION = """\
Evaluate SCORES (written by `bearing score`) against a known failure: first alarm after the healthy period,
lead time before --failure-time (hours), alarms in the healthy period (snapshots, events, events per day).
The healthy period is up to --healthy-until (default: everything before the failure is judged only by the first
alarm). With --ground-truth (a demo's ground_truth.json) every site is evaluated against its own onset and
failure instead. Scores of a per-bearing dataset (`bearing per-bearing`) are first folded back to one row per
snapshot with --per-bearing DIR (the per-bearing dataset they came from): each snapshot keeps its bearing that
matters most (in alarm, then over threshold, then the highest score/threshold), named as a source channel
(B2_a). --plot writes a PNG: score over time (log scale) per site, threshold, alarms, onset/failure.
Times are ISO 8601, UTC (e.g. 2003-11-25T23:39:56)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help=HELP, description=DESCRIPTION)
    parser.add_argument("scores", metavar="SCORES", type=Path, help="scores file (.parquet or .csv)")
    parser.add_argument("--failure-time", type=datetime.fromisoformat, default=None, help="known failure time (UTC)")
    parser.add_argument("--healthy-until", type=datetime.fromisoformat, default=None, help="end of healthy period")
    parser.add_argument("--onset", type=datetime.fromisoformat, default=None, help="known defect onset (UTC)")
    parser.add_argument("--site", default=None, help="evaluate only this site")
    parser.add_argument("--ground-truth", type=Path, default=None, help="ground_truth.json of a demo dataset")
    parser.add_argument(
        "--per-bearing",
        metavar="DIR",
        type=Path,
        default=None,
        help="SCORES are of this per-bearing dataset: fold them back to its source's snapshots and sites first",
    )
    parser.add_argument("--plot", type=Path, default=None, help="write the score plot to this PNG")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 2 on bad input."""
    import pandas as pd
    from pydantic import ValidationError

    from bearing_core.evaluation import evaluate_against_ground_truth, evaluate_detection, plot_scores
    from bearing_core.scoring import read_scores
    from bearing_core.synthetic import load_ground_truth
    from cli.common import validation_message
    from cli.console import printable

    if args.failure_time is None and args.ground_truth is None:
        print("bearing evaluate: error: give --failure-time or --ground-truth", file=sys.stderr)
        return 2
    try:
        scores = read_scores(args.scores)
        if args.per_bearing is not None:
            from bearing_core.per_bearing import source_site_scores

            scores = source_site_scores(scores, args.per_bearing)
        if args.site is not None:
            scores = scores[scores["site"].astype(str) == args.site]
            if scores.empty:
                raise ValueError(f"no rows of site {args.site!r} in {args.scores}")
        onset: object = args.onset
        failure: object = args.failure_time
        if args.ground_truth is not None:
            try:
                truth = load_ground_truth(args.ground_truth)
            except ValidationError as exc:  # wrong shape or not JSON: the first problem, not pydantic's dump
                raise ValueError(f"ground truth {args.ground_truth}: {validation_message(exc)}") from None
            table = evaluate_against_ground_truth(scores, truth)
            if args.site is not None:
                table = table[table["site"] == args.site]
            text = table.select_dtypes(include=["object", "string"]).columns
            with pd.option_context("display.width", 200, "display.max_columns", None):
                print(table.assign(**{c: table[c].map(printable) for c in text}).to_string(index=False))
            onset = {s: t.onset for s, t in truth.sites.items()}
            failure = {s: t.failure for s, t in truth.sites.items()}
        else:
            report = evaluate_detection(scores, args.failure_time, args.healthy_until, args.onset)
            print("\n".join(printable(line) for line in report.lines()))
        if args.plot is not None:
            title = f"Anomaly score: {args.scores.name}"
            plot_scores(scores, None, args.plot, onset=onset, failure=failure, title=title)
            print(f"plot: {printable(args.plot)}")
    except ValidationError as exc:
        print(f"bearing evaluate: error: {printable(validation_message(exc))}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"bearing evaluate: error: {printable(exc)}", file=sys.stderr)
        return 2
    return 0
