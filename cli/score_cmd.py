"""``bearing score DATASET_DIR``: score every valid snapshot with a calibrated model and raise debounced alarms."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.dataset_lock import (
    add_lock_timeout_argument,
    dataset_lock,
    report_lock_timeout,
)

if TYPE_CHECKING:  # type hints only: pandas is imported inside run() so `bearing --help` stays fast
    import pandas as pd

HELP = "Score snapshots with a trained model: anomaly score, top channel, debounced alarms (incremental)."
DESCRIPTION = """\
Score every valid (not quarantined) snapshot of DATASET_DIR with the model's reconstruction error (MSE over its
inputs, scaled units) against the threshold saved with the model (threshold.json). An alarm is raised for a site
when K of its last N snapshots exceed the threshold (default 3 of 3), so single spikes do not alarm.
Incremental: rows already scored by the same model in the output file are reused; only new snapshots are scored.
--model latest (the default) = the champion of DATASET_DIR's own registry, data/models/<dataset>/latest, where
<dataset> is DATASET_DIR's name; --model VERSION = a published version (bearing models lists them); --model DIR =
that model directory as given (config.json, weights.pt, scaler.json: a published version, or a training output
such as bearing train --out DIR). Names never resolve to an unpublished directory. A model without
threshold.json can be calibrated on the fly with --calibrate CLIENTS_DIR (the partition's holdout rows).
Prints an alarm summary per site.
Holds the dataset's lock (DATASET_DIR/.pipeline.lock) while it runs: waits for a pipeline run (or a validate)
on the same dataset to finish. Exit 0 = scored, 1 = nothing or fewer than half of the snapshots valid (not
scored: the data or its validation needs fixing), 2 = bad input, 3 = still locked after --lock-timeout."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help=HELP, description=DESCRIPTION)
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", type=Path, help="processed dataset (bearing ingest)")
    parser.add_argument(
        "--model",
        default="latest",
        help="'latest' (this dataset's champion), a published version, or a model directory (default: latest)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file, Parquet or .csv (default: DATASET_DIR/scores.parquet)",
    )
    add_alarm_arguments(parser)
    parser.add_argument(
        "--calibrate",
        metavar="CLIENTS_DIR",
        type=Path,
        default=None,
        help="(re)calibrate the threshold on this partition's holdout rows first (writes threshold.json)",
    )
    threshold = {  # the names of `bearing run`'s threshold flags; the older spellings stay accepted (hidden)
        ("--threshold-method", "--method"): {
            "dest": "method",
            "choices": ("quantile", "mean_kstd"),
            "default": "quantile",
            "help": "with --calibrate",
        },
        ("--threshold-quantile", "--quantile"): {
            "dest": "quantile",
            "type": float,
            "default": 0.995,
            "metavar": "Q",
            "help": "with --calibrate --threshold-method quantile",
        },
        ("--threshold-k", "--kstd"): {
            "dest": "kstd",
            "type": float,
            "default": 3.0,
            "metavar": "K",
            "help": "with --calibrate --threshold-method mean_kstd: mean + k·σ",
        },
    }
    for (name, alias), kwargs in threshold.items():
        parser.add_argument(name, **kwargs)
        parser.add_argument(alias, **{**kwargs, "help": argparse.SUPPRESS})
    parser.add_argument("--per-site", action="store_true", help="with --calibrate: also per-site thresholds")
    add_lock_timeout_argument(parser)
    parser.set_defaults(func=run)


ALARM_PREFIX = "alarm_"
"""The alarm rule's flags are ``--alarm-<field of AlarmConfig>`` (``bearing score``, ``bearing run``)."""
ALARM_ALIASES = {"alarm_persistence_h": ("--persistence-hours",), "alarm_warmup_h": ("--warmup-hours",)}
"""Older spellings, still accepted (hidden from --help)."""


def add_alarm_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The alarm rule's flags, generated from :class:`bearing_core.alarms.AlarmConfig` (names, defaults, help)."""
    from bearing_core.alarms import AlarmConfig
    from cli.model_flags import add_model_arguments

    add_model_arguments(parser, AlarmConfig.model_fields, ALARM_PREFIX, ALARM_ALIASES)


def alarm_config(args: argparse.Namespace) -> object:
    """The :class:`~bearing_core.alarms.AlarmConfig` the flags give; ``ValueError`` naming the flag when one is out
    of range."""
    from pydantic import ValidationError

    from bearing_core.alarms import AlarmConfig
    from bearing_core.params import error_line
    from cli.model_flags import flag, given

    try:
        return AlarmConfig(**given(args, AlarmConfig.model_fields, ALARM_PREFIX))
    except ValidationError as exc:
        raise ValueError(error_line(exc, flag, key=lambda loc: ALARM_PREFIX + str(loc[0]))) from None


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 1 when too few snapshots are valid to score, 2 on bad input (missing model/threshold/
    dataset, bad parameters), 3 when the dataset stayed locked by another run for ``--lock-timeout`` seconds."""
    from pydantic import ValidationError

    from bearing_core.config import DataPaths
    from bearing_core.locking import LockTimeout
    from bearing_core.registry import dataset_name, is_complete, resolve_model
    from bearing_core.scoring import TooFewValidSnapshots, alarm_summary, update_scores
    from bearing_core.threshold import ThresholdConfig, calibrate_from_clients
    from cli.common import validation_message

    problem = None
    try:
        alarms = alarm_config(args)
    except ValueError as exc:
        problem = str(exc)
    if problem is None and not args.dataset_dir.is_dir():
        problem = f"dataset directory not found: {args.dataset_dir}"
    if problem:  # before the lock and any work
        print(f"bearing score: error: {problem}", file=sys.stderr)
        return 2
    try:
        model_dir = resolve_model(DataPaths().models_root, args.model, dataset=dataset_name(args.dataset_dir))
        if args.calibrate is not None and is_complete(model_dir):
            raise ValueError(
                f"--calibrate would rewrite the published version {model_dir.resolve().name} in place "
                "(its hashes and model card would go stale): calibrate a training output "
                "(`bearing train --out DIR`) and publish that instead"
            )
        with dataset_lock(args.dataset_dir, args.lock_timeout_s, "bearing score"):
            if args.calibrate is not None:
                cfg = ThresholdConfig(method=args.method, quantile=args.quantile, k=args.kstd, per_site=args.per_site)
                record = calibrate_from_clients(model_dir, args.calibrate, cfg)
                print(
                    f"calibrated: threshold {record.threshold:.6g} ({cfg.describe()}, {record.calibration_size} rows)"
                )
            result = update_scores(args.dataset_dir, model_dir, args.out, alarms)
    except LockTimeout as exc:
        return report_lock_timeout(exc, "bearing score")
    except TooFewValidSnapshots as exc:
        print(f"bearing score: error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        print(f"bearing score: error: {validation_message(exc)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"bearing score: error: {exc}", file=sys.stderr)
        return 2
    scores = result.scores
    print(
        f"model {model_dir}: scored {result.n_scored} new snapshots, reused {result.n_reused}; "
        f"{int(scores['is_anomaly'].sum())} over threshold, {int(scores['alarm'].sum())} in alarm"
    )
    print_alarm_summary(alarm_summary(scores))
    print(f"scores: {result.path}")
    return 0


def print_alarm_summary(summary: pd.DataFrame) -> None:
    """One line per site: snapshots, alarm snapshots, first alarm time and file, most frequent top channel."""
    print(f"{'site':<16} {'snapshots':>9} {'alarms':>7}  {'first alarm':<20} {'file':<20} top channel")
    for row in summary.itertuples():
        never = row.first_alarm is None or str(row.first_alarm) == "NaT"
        first = "-" if never else f"{row.first_alarm:%Y-%m-%d %H:%M:%S}"
        print(
            f"{row.site:<16} {row.snapshots:>9} {row.alarm_snapshots:>7}  {first:<20} "
            f"{row.first_alarm_file or '-':<20} {row.top_channel or '-'}"
        )
