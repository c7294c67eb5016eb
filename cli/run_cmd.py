"""``bearing run --raw-dir DIR``: the whole pipeline as one Prefect flow run."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

HELP = ("Run the whole pipeline (ingest -> validate -> federated training + threshold -> publish -> score -> "
        "evaluate -> report) as one Prefect flow run.")


def _widths(text: str) -> tuple[int, ...]:
    from cli.train_cmd import _widths as parse

    return parse(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help=HELP, description=HELP)
    p.add_argument("--raw-dir", type=Path, default=Path("data/raw/demo"), help="raw IMS directory (default: %(default)s)")
    p.add_argument("--out", dest="out_dir", type=Path, default=None,
                   help="processed dataset dir (default: data/processed/<name of raw dir>)")
    p.add_argument("--partition", choices=("natural", "iid", "quantity", "dirichlet"), default="natural",
                   help="client partition scheme (default: %(default)s = one client per site)")
    p.add_argument("--clients", type=int, default=4, help="clients for iid/quantity/dirichlet (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="federated rounds (default: %(default)s)")
    p.add_argument("--strategy", choices=("fedavg", "fedprox", "fedadam", "fedmedian"), default="fedavg",
                   help="aggregation strategy (default: %(default)s)")
    p.add_argument("--local-epochs", type=int, default=10, help="client epochs per round (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-2, help="client learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default: %(default)s)")
    p.add_argument("--hidden", type=_widths, default=(4, 2, 4), help="hidden widths (default: 4,2,4)")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal term (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: %(default)s)")
    p.add_argument("--feature", default="mean_abs", help="per-channel feature used as model input (default: %(default)s)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--train-fraction", type=float, default=0.2,
                       help="healthy fraction of each site's earliest data (default: %(default)s)")
    group.add_argument("--train-until", type=datetime.fromisoformat, default=None, help="end of the healthy period")
    p.add_argument("--threshold-method", choices=("quantile", "mean_kstd"), default="quantile")
    p.add_argument("--threshold-quantile", type=float, default=0.995)
    p.add_argument("--threshold-k", type=float, default=3.0)
    p.add_argument("--k", dest="alarm_k", type=int, default=3, help="alarm when k of the last n snapshots exceed (3)")
    p.add_argument("--n", dest="alarm_n", type=int, default=3, help="debounce window n (3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="ingest worker processes (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    problems = []
    if not args.raw_dir.is_dir():
        problems.append(f"raw directory not found: {args.raw_dir}")
    for name in ("rounds", "clients", "local_epochs", "batch_size", "alarm_k", "alarm_n"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.alarm_k > args.alarm_n:
        problems.append(f"--k ({args.alarm_k}) cannot exceed --n ({args.alarm_n})")
    if problems:  # fail fast, before any work starts
        print(f"bearing run: error: {problems[0]}", file=sys.stderr)
        return 2
    from bearing_core.validation import ValidationFailed
    from flows.pipeline import pipeline_flow

    try:
        out = pipeline_flow(
            raw_dir=str(args.raw_dir), out_dir=None if args.out_dir is None else str(args.out_dir),
            partition=args.partition, clients=args.clients, rounds=args.rounds, strategy=args.strategy,
            local_epochs=args.local_epochs, lr=args.lr, batch_size=args.batch_size, hidden=args.hidden, mu=args.mu,
            alpha=args.alpha, feature=args.feature, train_fraction=None if args.train_until else args.train_fraction,
            train_until=args.train_until, threshold_method=args.threshold_method,
            threshold_quantile=args.threshold_quantile, threshold_k=args.threshold_k, alarm_k=args.alarm_k,
            alarm_n=args.alarm_n, seed=args.seed, workers=args.workers,
        )
    except ValidationFailed as exc:
        print(f"bearing run: validation failed, nothing was trained:\n{exc}", file=sys.stderr)
        return 1
    width = max(len(k) for k in out)
    print("\nbearing-fl pipeline finished:")
    for key, value in out.items():
        print(f"  {key:<{width}}  {value}")
    return 0
