"""``bearing run --raw-dir DIR``: the whole pipeline as one Prefect flow run."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

HELP = "Run the whole pipeline (ingest -> validate -> partition -> federated training) as one Prefect flow run."


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help=HELP, description=HELP)
    p.add_argument("--raw-dir", type=Path, default=Path("data/raw/demo"), help="raw IMS directory (default: %(default)s)")
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="processed dataset dir (default: data/processed/<name>)")
    p.add_argument("--partition", choices=("natural", "iid", "quantity", "dirichlet"), default="natural",
                   help="client partition scheme (default: %(default)s = one client per site)")
    p.add_argument("--clients", type=int, default=4, help="clients for iid/quantity/dirichlet (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=10, help="federated rounds (default: %(default)s)")
    p.add_argument("--strategy", choices=("fedavg", "fedprox", "fedadam", "fedmedian"), default="fedavg")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal term")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--feature", default="mean_abs", help="per-channel feature used as model input")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--train-fraction", type=float, default=0.2, help="healthy fraction of each site's data")
    group.add_argument("--train-until", type=datetime.fromisoformat, default=None, help="end of the healthy period")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="ingest worker processes (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.raw_dir.is_dir():
        print(f"bearing run: error: raw directory not found: {args.raw_dir}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.clients < 1:
        print("bearing run: error: --rounds and --clients must be >= 1", file=sys.stderr)
        return 2
    from bearing_core.validation import ValidationFailed
    from flows.pipeline import pipeline_flow

    try:
        out = pipeline_flow(
            raw_dir=str(args.raw_dir), out_dir=None if args.out_dir is None else str(args.out_dir),
            partition=args.partition, clients=args.clients, rounds=args.rounds, strategy=args.strategy,
            local_epochs=args.local_epochs, lr=args.lr, batch_size=args.batch_size, mu=args.mu, alpha=args.alpha,
            feature=args.feature, train_fraction=None if args.train_until else args.train_fraction,
            train_until=args.train_until, seed=args.seed, workers=args.workers,
        )
    except ValidationFailed as exc:
        print(f"bearing run: validation failed, nothing was trained:\n{exc}", file=sys.stderr)
        return 1
    width = max(len(k) for k in out)
    print("\nbearing-fl pipeline finished:")
    for key, value in out.items():
        print(f"  {key:<{width}}  {value}")
    return 0
