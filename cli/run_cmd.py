"""``bearing run --raw-dir DIR``: the whole pipeline as one Prefect flow run.

On failure it prints the cause and how to retry that very flow run once the cause is fixed (completed steps come
back as Cached, the failed step and what follows run again); re-running ``bearing run`` with the same arguments
does the same as a new flow run.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from bearing_core.threshold import PIPELINE_MARGIN
from cli.score_cmd import add_alarm_arguments, alarm_config
from cli.train_cmd import add_holdout_argument

HELP = ("Run the whole pipeline (ingest -> validate -> federated training + threshold -> publish -> score -> "
        "evaluate -> report) as one Prefect flow run.")


def _widths(text: str) -> tuple[int, ...]:
    from cli.train_cmd import _widths as parse

    return parse(text)


def _retry_hint(state: object) -> str:
    """How to re-run the failed flow run once its cause is fixed (see README, "Re-running a failed run")."""
    import os

    import flows.pipeline
    from bearing_core.run_report import relative

    run_id = getattr(getattr(state, "state_details", None), "flow_run_id", None)
    module = Path(flows.pipeline.__file__).resolve()
    root = module.parents[1]
    entrypoint = f"{relative(module) if module.is_relative_to(Path.cwd()) else module}:pipeline_flow"
    home = relative(os.environ["PREFECT_HOME"]) if "PREFECT_HOME" in os.environ else ".prefect"
    pythonpath = "." if root == Path.cwd().resolve() else str(root)
    return (
        "fix the cause, then retry this flow run (completed steps are served from cache, the failed step and the "
        "ones after it run again):\n"
        f"  PREFECT_HOME={home} PYTHONPATH={pythonpath} prefect flow-run retry {run_id} --entrypoint {entrypoint}\n"
        "or run the same `bearing run ...` command again (a new flow run, same cached steps)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help=HELP, description=HELP)
    p.add_argument("--raw-dir", type=Path, default=Path("data/raw/demo"), help="raw IMS directory (default: %(default)s)")
    p.add_argument("--out", dest="out_dir", type=Path, default=None,
                   help="processed dataset dir (default: data/processed/<name of raw dir>)")
    p.add_argument("--layout", choices=("per_bearing", "snapshot"), default="per_bearing",
                   help="model rows: one per snapshot and bearing, each bearing standardised by its own healthy rows "
                   "(default), or one per snapshot with every channel")
    p.add_argument("--relative", dest="relative_inputs", choices=("off", "add", "only"), default="off",
                   help="per_bearing: add / use only each bearing's level relative to the rig's other bearings "
                   "(default: %(default)s)")
    p.add_argument("--min-level-std", type=float, default=0.1,
                   help="per_bearing: floor of a bearing's healthy std of ln level (default: %(default)s)")
    p.add_argument("--partition", choices=("natural", "iid", "quantity", "dirichlet"), default="natural",
                   help="client partition scheme (default: %(default)s = one client per site)")
    p.add_argument("--clients", type=int, default=4, help="clients for iid/quantity/dirichlet (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="federated rounds (default: %(default)s)")
    p.add_argument("--strategy", choices=("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"),
                   default="fedavg",
                   help="aggregation strategy (default: %(default)s)")
    p.add_argument("--local-epochs", type=int, default=10, help="client epochs per round (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-2, help="client learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default: %(default)s)")
    p.add_argument("--hidden", type=_widths, default=None,
                   help="hidden widths (default: 4,1,4 per bearing, 4,2,4 per snapshot)")
    p.add_argument("--activation", choices=("tanh", "elu", "relu"), default="tanh",
                   help="hidden activation (default: %(default)s: a bounded code)")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx proximal term (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: %(default)s)")
    p.add_argument("--feature", default="mean_abs", help="per-channel feature used as model input (default: %(default)s)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--train-fraction", type=float, default=0.2,
                       help="healthy fraction of each site's earliest data (default: %(default)s)")
    group.add_argument("--train-until", type=datetime.fromisoformat, default=None, help="end of the healthy period")
    add_holdout_argument(p)
    p.add_argument("--threshold-method", choices=("max", "quantile", "mean_kstd"), default="max",
                   help="threshold over the healthy period's alarm statistic (default: %(default)s)")
    p.add_argument("--threshold-quantile", type=float, default=0.99)
    p.add_argument("--threshold-k", type=float, default=3.0)
    p.add_argument("--threshold-margin", type=float, default=PIPELINE_MARGIN,
                   help="margin in healthy std of the inputs on top of the threshold: (sqrt(t) + margin)^2 "
                   "(default: %(default)s)")
    add_alarm_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="ingest worker processes (default: all cores)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="follow symbolic links in the raw directory (each resolved once, recorded in the manifest)")
    p.add_argument("--lock-timeout", dest="lock_timeout_s", type=float, default=3600.0,
                   help="seconds to wait for another run on the same dataset to finish (default: %(default)s)")
    p.set_defaults(func=run)


def _config_problems(args: argparse.Namespace) -> list[str]:
    """Validate every setting with the same typed configs the steps use, before Prefect or any step starts."""
    from pydantic import ValidationError

    from bearing_core.config import IngestConfig
    from bearing_core.federated.config import FederatedConfig
    from bearing_core.inputs import InputConfig
    from cli.train_cmd import validation_message

    checks = [
        lambda: IngestConfig(raw_dir=args.raw_dir, **({"workers": args.workers} if args.workers is not None else {})),
        lambda: FederatedConfig(
            strategy=args.strategy, rounds=args.rounds, local_epochs=args.local_epochs, lr=args.lr,
            batch_size=args.batch_size, proximal_mu=args.mu, seed=args.seed, num_clients=args.clients,
            hidden=args.hidden or (4, 1, 4), activation=args.activation, threshold_method=args.threshold_method,
            threshold_quantile=args.threshold_quantile, threshold_k=args.threshold_k, threshold_margin=args.threshold_margin,
        ).threshold_config(),
        lambda: InputConfig(feature=args.feature, train_until=args.train_until,
                            train_fraction=None if args.train_until else args.train_fraction,
                            holdout_mode=args.holdout),
    ]
    if args.alpha <= 0:
        return [f"--alpha must be > 0, got {args.alpha}"]
    try:
        alarm_config(args)
    except ValueError as exc:
        return [str(exc)]
    for check in checks:
        try:
            check()
        except ValidationError as exc:
            return [validation_message(exc)]
    return []


def run(args: argparse.Namespace) -> int:
    problems = []
    if not args.raw_dir.is_dir():
        problems.append(f"raw directory not found: {args.raw_dir}")
    for name in ("rounds", "clients", "local_epochs", "batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lock_timeout_s < 0:
        problems.append(f"--lock-timeout must be >= 0, got {args.lock_timeout_s}")
    if not problems:
        problems.extend(_config_problems(args))
    if problems:  # fail fast, before any work starts
        print(f"bearing run: error: {problems[0]}", file=sys.stderr)
        return 2
    from bearing_core.locking import LockTimeout
    from bearing_core.validation import ValidationFailed
    from flows.pipeline import pipeline_flow

    state = pipeline_flow(
        raw_dir=str(args.raw_dir), out_dir=None if args.out_dir is None else str(args.out_dir),
        layout=args.layout, relative_inputs=args.relative_inputs, min_level_std=args.min_level_std, activation=args.activation,
        partition=args.partition, clients=args.clients, rounds=args.rounds, strategy=args.strategy,
        local_epochs=args.local_epochs, lr=args.lr, batch_size=args.batch_size, hidden=args.hidden, mu=args.mu,
        alpha=args.alpha, feature=args.feature, train_fraction=None if args.train_until else args.train_fraction,
        train_until=args.train_until, threshold_method=args.threshold_method,
        threshold_quantile=args.threshold_quantile, threshold_k=args.threshold_k, threshold_margin=args.threshold_margin,
        persistence_h=args.persistence_h, alarm_fraction=args.alarm_fraction, warmup_h=args.warmup_h, holdout=args.holdout, seed=args.seed, workers=args.workers,
        follow_symlinks=args.follow_symlinks, lock_timeout_s=args.lock_timeout_s,
        return_state=True,
    )
    try:
        out = state.result()
    except ValidationFailed as exc:
        print(f"bearing run: validation failed, nothing was trained:\n{exc}", file=sys.stderr)
        print(_retry_hint(state), file=sys.stderr)
        return 1
    except LockTimeout as exc:
        print(f"bearing run: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - any failed step: report it with the retry procedure, exit 1
        print(f"bearing run: the pipeline failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(_retry_hint(state), file=sys.stderr)
        return 1
    width = max(len(k) for k in out)
    print("\nbearing-fl pipeline finished:")
    for key, value in out.items():
        print(f"  {key:<{width}}  {value}")
    return 0
