"""The whole chain as one flow: ingest -> validate -> partition + federated training (+ centralized baseline).

Each step is a sub-flow over cached tasks keyed on content, so re-running on unchanged data skips the work that is
already done, and a run that failed can be retried from the Prefect UI. Calibration, scoring and alarms join this
flow in the next step of the plan.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.ingest import ingest_flow
from flows.train import train_flow
from flows.validate import artifact_key, validate_flow


def _sites(dataset_dir: str) -> list[str]:
    meta = Path(dataset_dir) / "dataset.json"
    return list(json.loads(meta.read_text()).get("sites", [])) if meta.is_file() else []


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
    raw_dir: str = "data/raw/demo",
    out_dir: str | None = None,
    partition: Literal["natural", "iid", "quantity", "dirichlet"] = "natural",
    clients: int = 4,
    rounds: int = 10,
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedmedian"] = "fedavg",
    local_epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 32,
    mu: float = 0.01,
    alpha: float = 0.5,
    feature: str = "mean_abs",
    train_fraction: float | None = 0.2,
    train_until: datetime | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, Any]:
    """Raw IMS files -> validated dataset -> federated model + centralized baseline.

    Args:
        raw_dir: raw IMS directory (one sub-folder per site, or files at its top).
        out_dir: processed dataset directory; default data/processed/<name of raw_dir>.
        partition: how the healthy period is split into clients; 'natural' = one client per site (clients ignored).
        clients: number of clients for iid / quantity / dirichlet.
        rounds: federated rounds.
        strategy: Flower strategy.
        local_epochs: epochs per client per round.
        lr: Adam learning rate.
        batch_size: mini-batch size.
        mu: FedProx proximal term (fedprox only).
        alpha: Dirichlet concentration (dirichlet only; smaller = more skewed).
        feature: per-channel feature used as model input (mean_abs -> 8 inputs on an 8-channel dataset).
        train_fraction: fraction of each site's earliest data treated as healthy training data.
        train_until: alternatively, the end of the healthy period (overrides train_fraction).
        seed: seed for partitioning and training.
        workers: ingest worker processes (default: all cores).
    """
    ingested = ingest_flow(raw_dir=raw_dir, out_dir=out_dir, workers=workers)
    dataset_dir = ingested["out_dir"]
    report = validate_flow(dataset_dir=dataset_dir)
    n_clients = len(_sites(dataset_dir)) if partition == "natural" else clients
    trained = train_flow(
        dataset_dir=dataset_dir,
        partition=partition,
        clients=n_clients,
        rounds=rounds,
        strategy=strategy,
        local_epochs=local_epochs,
        lr=lr,
        batch_size=batch_size,
        mu=mu,
        alpha=alpha,
        seed=seed,
        feature=feature,
        train_fraction=None if train_until is not None else train_fraction,
        train_until=train_until,
    )
    outputs = {
        "dataset_dir": dataset_dir,
        "ingest": ingested["summary"],
        "validation": report.headline(),
        "validation_docs": str(Path(dataset_dir) / "validation" / "index.html"),
        "model_dir": trained["model_dir"],
        "metrics": trained["metrics_path"],
        "federated_eval_mse": trained["federated_eval_mse"],
        "centralized_eval_mse": trained["centralized_eval_mse"],
    }
    create_markdown_artifact(
        key=f"pipeline-{artifact_key(dataset_dir).removeprefix('validation-')}",
        markdown="# bearing-fl pipeline\n\n| output | value |\n|---|---|\n"
        + "".join(f"| {k} | `{v}` |\n" for k, v in outputs.items()),
        description="Where this run's outputs are",
    )
    return outputs
