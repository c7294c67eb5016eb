"""Robust aggregation benchmark: holdout MSE and threshold of fedavg / fedmedian / fedtrimmedavg / screened fedavg,
honest and under the two poisoning attacks (issue 14).

Run: ``.venv/bin/python -m bench.robust DATASET_DIR [DATASET_DIR ...] --out DIR``, each DATASET_DIR a processed
dataset (``bearing ingest`` / ``bearing import-features``), e.g. the demo and the IMS 1st test per-bearing
layout (README "The real IMS 1st test"). Each is partitioned ``natural`` with ``bearing train``'s defaults
(healthy period = earliest 20 % per site, latest 20 % of it held out), then one Flower simulation per case, with
``bearing train``'s defaults (20 rounds x 10 local epochs, seed 0) and ``--hidden`` per dataset.

Cases (``--cases``, default all):

* ``fedavg``, ``fedmedian``, ``fedtrimmedavg``: the flwr strategies with the server's screening off
  (``outlier_factor=0``: only NaN/inf replies rejected, the behaviour before issue 14);
* ``fedavg+screen``: FedAvg with the default screening (``outlier_factor=10``, clip; manifest known);
* ``+dp<z>`` (e.g. ``fedavg+screen+dp0.1``): central differential privacy, noise multiplier z, clipping norm
  ``--clipping-norm``;
* ``*@attack`` (e.g. ``fedavg@attack``): the same with client 1 sending weights x1e6 and a claimed 1e9 rows in
  the last round (fault ``scale``) and client 2 a calibration sketch of errors 1e6 (fault ``sketch``).

Prints one Markdown table (final global holdout MSE = example-weighted over the clients, threshold, excluded or
adjusted replies) and writes ``results.json`` to ``--out`` (a new directory).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CASES = ("fedavg", "fedmedian", "fedtrimmedavg", "fedavg+screen", "fedavg@attack", "fedavg+screen@attack")


def parse_case(case: str) -> tuple[str, bool, float, bool]:
    """``STRATEGY[+screen][+dp<z>][@attack]`` -> (strategy, screen, noise multiplier, attack); ValueError if bad."""
    from bearing_core.federated.config import STRATEGIES

    name, _, attack = case.partition("@")
    strategy, *mods = name.split("+")
    usage = f"bad case {case!r}: STRATEGY[+screen][+dp<z>][@attack], e.g. {', '.join(CASES)}"
    try:
        noise = [float(m.removeprefix("dp")) for m in mods if m.startswith("dp")]
    except ValueError:
        raise ValueError(usage) from None
    if strategy not in STRATEGIES or attack not in ("", "attack") or len(noise) + mods.count("screen") != len(mods):
        raise ValueError(usage)
    return strategy, "screen" in mods, noise[0] if noise else 0.0, bool(attack)


def run_case(
    dataset: Path,
    case: str,
    hidden: tuple[int, ...],
    out: Path,
    rounds: int,
    clipping_norm: float,
    activation: str = "tanh",
) -> dict[str, object]:
    """One simulation of ``case`` on the natural partition of ``dataset``; final metrics and threshold."""
    from bearing_core.federated.config import FederatedConfig
    from bearing_core.federated.simulation import run_federated
    from bearing_core.model_io import GLOBAL_CLIENT, load_model
    from bearing_core.partition.writer import MANIFEST_FILE, scheme_dir
    from bearing_core.threshold import load_threshold

    strategy, screen, noise, attack = parse_case(case)
    clients_dir = scheme_dir(dataset, "natural")
    cfg = FederatedConfig(
        strategy=strategy,
        rounds=rounds,
        hidden=hidden,
        activation=activation,
        seed=0,
        outlier_factor=10.0 if screen else 0.0,
        manifest=str(clients_dir / MANIFEST_FILE) if screen else "",
        faults=f"1@{rounds}:scale,2@1:sketch" if attack else "",
        dp_noise_multiplier=noise,
        clipping_norm=clipping_norm if noise else 0.0,
    )
    start = time.perf_counter()
    label = f"{dataset.parent.name}-{dataset.name}"  # per-bearing datasets are all named per_bearing
    result = run_federated(clients_dir, cfg, out / f"{label}-{case}", baseline=False)
    threshold = load_threshold(result.model_dir)
    extra_failures = [f"r{f['round']} {f['step']} c{f['client']}" for f in result.failures]
    extra_failures += [f"c{k} calibrate" for k in threshold.rejected_sketches]
    screening = load_model(result.model_dir).extra.get("screening", [])
    adjusted = [f"r{a['round']} {a['step']} c{a['client']}" for a in screening]
    return {
        "dataset": label,
        "case": case,
        "eval_mse": float(result.final(GLOBAL_CLIENT)["eval_mse"]),
        "threshold": float(threshold.threshold),
        "calibration_size": threshold.calibration_size,
        "excluded": extra_failures,
        "adjusted": adjusted,
        "wall_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.robust", description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="processed dataset directories")
    parser.add_argument("--out", type=Path, required=True, help="new directory for the models and results.json")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--hidden", default="", help="per dataset, ';'-separated widths, e.g. '4,2,4;4,1,4'")
    parser.add_argument(
        "--bearing-clients",
        action="store_true",
        help="one client per bearing (per-bearing datasets) instead of one per site, so that a one-site run has "
        "several clients to aggregate",
    )
    parser.add_argument("--rounds", type=int, default=20, help="federated rounds (default: 20)")
    parser.add_argument(
        "--activation",
        default="tanh",
        choices=("tanh", "elu", "relu"),
        help="hidden activation (default: tanh, the pipeline's)",
    )
    parser.add_argument("--clipping-norm", type=float, default=1.0, help="clipping norm of +dp cases (default: 1)")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    try:
        for case in cases:
            parse_case(case)
    except ValueError as exc:
        parser.error(str(exc))
    widths = [tuple(int(w) for w in h.split(",")) for h in args.hidden.split(";")] if args.hidden else []
    if widths and len(widths) != len(args.datasets):
        parser.error(f"--hidden has {len(widths)} entries for {len(args.datasets)} datasets")
    if args.out.exists():
        parser.error(f"{args.out} exists: pass a new directory")
    args.out.mkdir(parents=True)

    from bearing_core.inputs import DATASET_FILE, InputConfig
    from bearing_core.io import write_json_atomic
    from bearing_core.partition.build import partition_dataset
    from bearing_core.partition.natural import natural_clients

    rows = []
    for k, dataset in enumerate(args.datasets):
        clients, params, _ = natural_clients(dataset)  # one client per site (per-bearing layout: per parent site)
        if args.bearing_clients:  # one client per bearing: a one-site run (the 1st test) gets several clients
            clients, params = len(json.loads((dataset / DATASET_FILE).read_text(encoding="utf-8"))["sites"]), {}
        partition_dataset(dataset, "natural", clients, 0, InputConfig(train_fraction=0.2), params)
        for case in cases:
            hidden = widths[k] if widths else (4, 2, 4)
            rows.append(run_case(dataset, case, hidden, args.out, args.rounds, args.clipping_norm, args.activation))
            write_json_atomic(args.out / "results.json", rows)
    print("\n| dataset | case | final holdout MSE | threshold | excluded | adjusted |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['case']} | {r['eval_mse']:.4g} | {r['threshold']:.4g} | "
            f"{', '.join(r['excluded']) or '-'} | {', '.join(r['adjusted']) or '-'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
