"""``bearing experiments``: the experiments grid on one dataset and its report (as a Prefect flow run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Experiments grid (centralized, FedAvg IID/non-IID, FedProx, FedAdam) on one dataset, with a report."
DESCRIPTION = """\
Train every experiment of a grid on the same data with the same seeds, epochs and evaluation set, then write
OUT/report.html (self-contained), OUT/report.md (PNGs beside it) and OUT/summary.csv.
--preset seed reproduces the reference notebook: raw samples of the real IMS 1st-test files 2003.10.22.12.14.13
and 2003.10.22.12.19.13 (from --raw-dir, default ../shared/ims/raw/1st_test), 10 clients, 8-16-4-16-8 ReLU,
Adam 1e-3, batch 128, 1 local epoch, 20 rounds, and compares with the notebook's reported MSEs.
--preset demo runs the grid on synthetic multi-site data (generated into OUT/data unless --raw-dir is given)
plus a natural (site = client) experiment, and evaluates detection against the ground truth."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiments", help=HELP, description=DESCRIPTION)
    parser.add_argument("--preset", choices=("seed", "demo"), default="demo", help="data and recipe (default: demo)")
    parser.add_argument("--raw-dir", type=Path, default=None, help="raw IMS directory (see above)")
    parser.add_argument(
        "--out", type=Path, default=None, help="report directory (default: reports/experiments/<preset>)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (default: 20)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only these experiments (e.g. centralized fedavg-iid fedavg-quantity)",
    )
    parser.add_argument("--clients", type=int, default=10, help="demo: clients of non-natural partitions (default: 10)")
    parser.add_argument("--sites", type=int, default=4, help="demo: sites of generated data (default: 4)")
    parser.add_argument("--files", type=int, default=60, help="demo: files per generated site (default: 60)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 2 on bad input or configuration (found before Prefect starts), 1 when a run fails."""
    from pydantic import ValidationError

    from cli.common import validation_message
    from cli.console import printable

    try:
        problem = check_arguments(args)
    except ValidationError as exc:
        problem = validation_message(exc)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        print(f"bearing experiments: error: {printable(problem)}", file=sys.stderr)
        return 2

    from flows.experiments import experiments_flow

    try:
        result = experiments_flow(
            preset=args.preset,
            raw_dir=None if args.raw_dir is None else str(args.raw_dir),
            out=None if args.out is None else str(args.out),
            rounds=args.rounds,
            experiments=args.only,
            clients=args.clients,
            demo_sites=args.sites,
            demo_files=args.files,
        )
    except ValidationError as exc:
        print(f"bearing experiments: error: {printable(validation_message(exc))}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"bearing experiments: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a failed run is one line + exit code, the flow logged the traceback
        print(f"bearing experiments: failed: {printable(str(exc))}", file=sys.stderr)
        return 1
    print(
        f"summary: {printable(result['summary_csv'])}\nreport:  {printable(result['report_html'])}\n"
        f"         {printable(result['report_md'])}"
    )
    return 0


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, checked without Prefect (whose server takes seconds to start): the
    grid (rounds, clients, ``--only`` names), the demo's size and the raw directory. ``None`` when all is well;
    pydantic's ValidationError / ValueError for values the grid or demo configuration refuses."""
    from bearing_core.experiments import demo_grid, seed_grid
    from bearing_core.synthetic import DemoConfig

    if args.rounds is not None and args.rounds < 1:
        return f"--rounds must be >= 1, got {args.rounds}"
    if args.clients < 1:
        return f"--clients must be >= 1, got {args.clients}"
    if args.only is not None and not args.only:
        return "--only needs at least one experiment name"
    grid = seed_grid(args.rounds) if args.preset == "seed" else demo_grid(args.rounds, num_clients=args.clients)
    grid.select(args.only)  # ValueError naming the unknown experiments and the grid's
    if args.preset == "demo" and args.raw_dir is None:
        DemoConfig(sites=args.sites, files_per_site=args.files)
    if args.raw_dir is None and args.preset == "seed":
        from flows.experiments import DEFAULT_SEED_RAW_DIR  # imports prefect; starts nothing

        raw_dir: Path | None = DEFAULT_SEED_RAW_DIR
    else:
        raw_dir = args.raw_dir
    if raw_dir is not None and not raw_dir.is_dir():
        return f"raw directory not found: {raw_dir}"
    return None
