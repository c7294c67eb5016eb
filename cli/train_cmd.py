"""``bearing train DATASET_DIR``: partition, federated training (Flower simulation), centralized baseline."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: heavy imports stay inside run() so `bearing --help` is fast
    import pandas as pd

    from bearing_core.federated.config import FederatedConfig

HELP = "Federated training (Flower simulation) of the autoencoder, with its centralized baseline."
DESCRIPTION = """\
Partition DATASET_DIR's healthy period into --clients client files (DATASET_DIR/clients/<partition>/), run
--rounds federated rounds with --strategy in a Flower simulation on this machine (federated feature scaling
first: clients share only count/sum/sum-of-squares), train the same model centrally on the union of the same
train rows for the same number of epochs, and print a per-round table (train loss, holdout MSE/RMSE).
The model (weights, config, scaler, input columns) and metrics.parquet go to --out
(default: data/models/<dataset>/<UTC timestamp>-<hash>/, unpublished: score it with bearing score --model DIR).
A client failing in a round is left out of that round."""

PARTITIONS = ("iid", "quantity", "dirichlet", "natural")


def add_holdout_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--holdout-mode last|interleaved`` (``InputConfig.holdout_mode``; the pipeline's flag has the same name),
    shared by train, per-bearing and import-features; ``--holdout`` is its older spelling (hidden)."""
    kwargs = {"dest": "holdout", "choices": ("last", "interleaved"), "default": "last"}
    parser.add_argument(
        "--holdout-mode",
        **kwargs,
        help="healthy rows held back for calibration: 'last' = the latest 20 %% of each client's; 'interleaved' = "
        "every 5th, spread over the healthy period (default: last)",
    )
    parser.add_argument("--holdout", **kwargs, help=argparse.SUPPRESS)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``bearing train`` and ``bearing federate`` (they map onto FederatedConfig)."""
    from bearing_core.federated.config import STRATEGIES  # light module: pydantic only

    parser.add_argument("--rounds", type=int, default=20, help="federated rounds (default: 20)")
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="fedavg", help="aggregation strategy (default: fedavg)"
    )
    parser.add_argument("--local-epochs", type=int, default=10, help="client epochs per round (default: 10)")
    parser.add_argument("--lr", type=float, default=1e-2, help="client learning rate (default: 1e-2)")
    parser.add_argument("--batch-size", type=int, default=32, help="client mini-batch size (default: 32)")
    parser.add_argument(
        "--proximal-mu", dest="mu", type=float, default=0.01, help="FedProx proximal weight (default: 0.01)"
    )
    parser.add_argument("--mu", type=float, default=0.01, help=argparse.SUPPRESS)  # older spelling
    parser.add_argument("--seed", type=int, default=0, help="seed of partitioning, init and shuffling (default: 0)")
    parser.add_argument(
        "--hidden", type=_widths, default=(4, 2, 4), help="autoencoder hidden widths, e.g. 16,4,16 (default: 4,2,4)"
    )
    parser.add_argument(
        "--activation", choices=("elu", "relu", "tanh"), default="elu", help="hidden activation (default: elu)"
    )
    parser.add_argument(
        "--threshold-method",
        choices=("quantile", "mean_kstd", "max"),
        default="quantile",
        help="alarm threshold from healthy holdout errors (default: quantile)",
    )
    parser.add_argument("--threshold-quantile", type=float, default=0.995, help="quantile q (default: 0.995)")
    parser.add_argument("--threshold-k", type=float, default=3.0, help="k of mean + k*std (default: 3)")
    parser.add_argument(
        "--threshold-margin",
        type=float,
        default=0.0,
        help="margin in healthy std of the inputs: threshold (sqrt(t) + margin)^2 (default: 0)",
    )
    parser.add_argument("--min-fit-fraction", type=float, default=0.5, help="successful replies needed per round")
    parser.add_argument("--round-timeout", type=float, default=600.0, help="seconds to wait for replies per step")
    parser.add_argument(
        "--outlier-factor",
        type=float,
        default=10.0,
        help="screening of client replies against the median over clients: updates with a norm above this x the "
        "round's median, row counts, scaler moments and calibration sketches far outside the others'; 0 = off "
        "(default: 10)",
    )
    parser.add_argument(
        "--norm-action",
        choices=("reject", "clip"),
        default="reject",
        help="an update above the norm bound is left out or scaled down onto it (default: reject)",
    )
    parser.add_argument(
        "--clipping-norm",
        type=float,
        default=0.0,
        help="absolute bound on every update's L2 norm, also the clipping norm of --dp-noise-multiplier (default: 0 = "
        "none)",
    )
    parser.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=0.0,
        help="central differential privacy: Gaussian noise of std this x clipping norm / clients on every aggregate "
        "(default: 0 = off; needs --clipping-norm)",
    )


def federated_config(args: argparse.Namespace) -> FederatedConfig:
    """The FederatedConfig of the parsed flags (pydantic ValidationError on bad values)."""
    from bearing_core.federated.config import FederatedConfig

    return FederatedConfig(
        strategy=args.strategy,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        proximal_mu=args.mu,
        seed=args.seed,
        num_clients=args.clients,
        min_fit_fraction=args.min_fit_fraction,
        round_timeout_s=args.round_timeout,
        hidden=args.hidden,
        activation=args.activation,
        threshold_method=args.threshold_method,
        threshold_quantile=args.threshold_quantile,
        threshold_k=args.threshold_k,
        threshold_margin=args.threshold_margin,
        outlier_factor=args.outlier_factor,
        norm_action=args.norm_action,
        clipping_norm=args.clipping_norm,
        dp_noise_multiplier=args.dp_noise_multiplier,
    )


def _widths(text: str) -> tuple[int, ...]:
    """``"4,2,4"`` -> ``(4, 2, 4)`` (argparse type)."""
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return widths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=DESCRIPTION)
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", type=Path, help="processed dataset (bearing ingest)")
    parser.add_argument("--partition", choices=PARTITIONS, default="iid", help="how rows are split among clients")
    parser.add_argument(
        "--clients",
        type=int,
        default=4,
        help="number of simulated clients (default: 4; natural: one per site, from the data)",
    )
    add_training_arguments(parser)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: 0.5)")
    parser.add_argument("--feature", default="mean_abs", help="feature used per channel (default: mean_abs)")
    period = parser.add_mutually_exclusive_group()
    period.add_argument(
        "--train-fraction", type=float, default=None, help="healthy period = earliest fraction per site (default: 0.2)"
    )
    period.add_argument(
        "--train-until", type=datetime.fromisoformat, default=None, help="healthy period = up to this UTC time"
    )
    add_holdout_argument(parser)
    parser.add_argument(
        "--out",
        dest="model_dir",
        type=Path,
        default=None,
        help="model directory: new, empty or an earlier model (anything else is refused)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Partition + train + baseline; exit 2 on configuration/data errors, 1 if training fails, else 0."""
    from pydantic import ValidationError

    from bearing_core.config import DataPaths
    from bearing_core.federated.simulation import model_version, partition_params, run_federated
    from bearing_core.fingerprint import sha256_file
    from bearing_core.inputs import InputConfig
    from bearing_core.io import check_output_dir
    from bearing_core.model_io import CENTRALIZED_CLIENT, GLOBAL_CLIENT, MODEL_KIND
    from bearing_core.partition.build import partition_dataset
    from bearing_core.partition.natural import natural_clients
    from bearing_core.partition.writer import MANIFEST_FILE, scheme_dir
    from bearing_core.registry import check_training_output, dataset_name
    from cli.common import validation_message
    from cli.console import printable

    try:
        if args.model_dir is not None:  # before partitioning: a directory the model may not replace stops the run
            check_output_dir(check_training_output(args.model_dir), MODEL_KIND)  # registry first: its hint is exact
        cfg = federated_config(args)
        period = {"train_until": args.train_until} if args.train_until is not None else {}
        if args.train_fraction is not None:  # 0 is refused by InputConfig, not replaced by the default
            period["train_fraction"] = args.train_fraction
        input_cfg = InputConfig(feature=args.feature, holdout_mode=args.holdout, **period)
        clients, params = args.clients, partition_params(args.partition, args.clients, args.alpha)
        if args.partition == "natural":  # one client per site: the count comes from the data (as in flows/train.py)
            clients, natural, _ = natural_clients(args.dataset_dir)
            params.update(natural)
            cfg = cfg.model_copy(update={"num_clients": clients})
        manifest = partition_dataset(args.dataset_dir, args.partition, clients, args.seed, input_cfg, params)
        clients_dir = scheme_dir(args.dataset_dir, args.partition)
        model_dir = check_training_output(
            args.model_dir
            or (  # default: in the dataset's registry, unpublished
                DataPaths().models_root
                / dataset_name(args.dataset_dir)
                / model_version(sha256_file(clients_dir / MANIFEST_FILE), cfg)
            )
        )
    except ValidationError as exc:
        print(f"bearing train: error: {printable(validation_message(exc))}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"bearing train: error: {printable(exc)}", file=sys.stderr)
        return 2
    print(
        f"partition {args.partition}: {manifest.num_clients} clients, train rows "
        f"{[c.train_rows for c in manifest.clients]}, holdout rows {[c.holdout_rows for c in manifest.clients]}"
    )
    try:
        result = run_federated(clients_dir, cfg, model_dir)
    except Exception as exc:  # noqa: BLE001 - report any training failure as one line + exit code
        print(f"bearing train: training failed: {printable(exc)}", file=sys.stderr)
        return 1
    print_table(result.metrics, GLOBAL_CLIENT, f"federated ({cfg.strategy})")
    print_table(result.metrics, CENTRALIZED_CLIENT, "centralized baseline")
    for failure in result.failures:
        print(
            printable(
                f"excluded: round {failure['round']} {failure['step']} client {failure['client']}: {failure['reason']}"
            )
        )
    from bearing_core.threshold import load_threshold

    threshold = load_threshold(result.model_dir)
    print(
        f"threshold: {threshold.threshold:.6g} ({threshold.config.describe()} of {threshold.calibration_size} "
        "healthy holdout errors, merged from the clients' sketches)"
    )
    print(f"model:     {printable(result.model_dir)}")
    print(f"metrics:   {printable(result.model_dir / 'metrics.parquet')}")
    return 0


def print_table(metrics: pd.DataFrame, client: str, title: str) -> None:
    """One line per round: round, train loss, eval MSE, eval RMSE."""
    rows = metrics[metrics["client"] == client].sort_values("round")
    print(f"\n{title}\n{'round':>5}  {'train loss':>12}  {'eval MSE':>12}  {'eval RMSE':>12}")
    for row in rows.itertuples():
        print(f"{row.round:>5}  {row.train_loss:>12.6f}  {row.eval_mse:>12.6f}  {row.eval_rmse:>12.6f}")
