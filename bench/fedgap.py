"""Federated vs centralized holdout MSE of the pipeline's training, and of a few other aggregation settings.

Each PROJECT is a scratch project where `bearing run` ran on a demo seed (e.g. the ``seed<k>`` projects that
``python -m bench.pipeline_detection margin`` leaves in its work directory): its champion's federated config is
reused, on the same per-bearing natural partition, with each variant's changes; each variant is compared with its
own centralized baseline (same model, scaler, epochs).

    .venv/bin/python -m bench.fedgap /tmp/bearing-margin/seed0 /tmp/bearing-margin/seed1 /tmp/bearing-margin/seed2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "fedavg e10 r20 (pipeline)": {},
    "fedprox mu0.1": {"strategy": "fedprox", "proximal_mu": 0.1},
    "fedavg e2 r20": {"local_epochs": 2},
    "fedavg e5 r40": {"local_epochs": 5, "rounds": 40},
    "fedadam": {"strategy": "fedadam"},
}


def champion_config(project: Path) -> tuple[dict[str, Any], Path]:
    """The federated config of the project's champion and its natural partition's clients directory."""
    from bearing_core.model_io import load_model

    latest = [p for p in (project / "data" / "models").glob("*/latest") if p.is_dir()]
    if len(latest) != 1:
        raise SystemExit(f"{project}: expected one data/models/<dataset>/latest, found {len(latest)}")
    extra = load_model(latest[0]).extra
    fed = dict(extra["federated_config"])
    clients = project / fed.pop("manifest")
    return fed, clients.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fedgap", description=__doc__.split("\n")[0])
    parser.add_argument("projects", nargs="+", type=Path, help="scratch projects of `bearing run` on the demo")
    parser.add_argument("--out", type=Path, required=True, help="new directory for the models and results.json")
    parser.add_argument("--only", default="", help=f"comma-separated variants (default all: {', '.join(VARIANTS)})")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(VARIANTS)
    if unknown := [n for n in names if n not in VARIANTS]:
        parser.error(f"unknown variant {unknown[0]!r}; choose from: {', '.join(VARIANTS)}")
    if args.out.exists():
        parser.error(f"{args.out} exists: pass a new directory")
    args.out.mkdir(parents=True)

    from bearing_core.federated.config import FederatedConfig
    from bearing_core.federated.simulation import run_federated
    from bearing_core.model_io import CENTRALIZED_CLIENT, GLOBAL_CLIENT

    rows = []
    for k, project in enumerate(args.projects):
        fed, clients = champion_config(project.resolve())
        for name in names:
            cfg = FederatedConfig(**{**fed, **VARIANTS[name]})
            result = run_federated(clients, cfg, args.out / f"{k}-{name.split()[0]}-{len(rows)}")
            fl, central = (
                float(result.final(GLOBAL_CLIENT)["eval_mse"]),
                float(result.final(CENTRALIZED_CLIENT)["eval_mse"]),
            )
            rows.append(
                {
                    "project": str(project),
                    "variant": name,
                    "federated_mse": fl,
                    "centralized_mse": central,
                    "ratio": fl / central,
                    "wall_s": result.wall_s,
                }
            )
            (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| project | variant | federated MSE | centralized MSE | ratio |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {Path(r['project']).name} | {r['variant']} | {r['federated_mse']:.4g} | {r['centralized_mse']:.4g} | "
            f"{r['ratio']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
