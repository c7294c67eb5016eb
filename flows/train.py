"""Prefect flow: partition -> federated training (Flower simulation) -> centralized baseline -> artifacts.

The flow publishes the per-round metrics (every client, the weighted global row and the centralized baseline) as
a table artifact and a markdown summary (final MSE federated vs centralized, where the model is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bearing_core import markdown as md
from bearing_core.alarms import AlarmConfig
from bearing_core.config import DataPaths
from bearing_core.federated.config import FaultInjection, FederatedConfig, SimulationResources
from bearing_core.federated.simulation import model_version, partition_params
from bearing_core.inputs import InputConfig
from bearing_core.model_io import CENTRALIZED_CLIENT, GLOBAL_CLIENT
from bearing_core.partition.natural import natural_clients
from bearing_core.registry import dataset_name, resolve_model
from bearing_core.run_report import relative
from tasks.partition import partition_task
from tasks.train import train_centralized_task, train_federated_task


def _champion(dataset_dir: str) -> str:
    """The champion model directory of ``dataset_dir`` (warm start), or "" when there is none yet."""
    try:
        return str(resolve_model(DataPaths().models_root, "latest", dataset=dataset_name(dataset_dir)))
    except FileNotFoundError as exc:
        print(f"warm start: no champion yet, training from scratch ({exc})")
        return ""


def _artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@flow(name="train", log_prints=True)
def train_flow(
    dataset_dir: str,
    config: FederatedConfig = FederatedConfig(num_clients=4),  # noqa: B008 - frozen: one shared default is safe
    inputs: InputConfig = InputConfig(),  # noqa: B008
    partition: Literal["iid", "quantity", "dirichlet", "natural"] = "iid",
    alpha: float = 0.5,
    model_dir: str | None = None,
    fail_client: int | None = None,
    alarms: AlarmConfig | None = None,
    warm_start: bool = False,
    centralized_baseline: bool = True,
    healthy_file: str | None = None,
) -> dict[str, Any]:
    """Train a federated autoencoder on ``dataset_dir`` and its centralized baseline.

    ``config`` is the training configuration (the pipeline's :meth:`~bearing_core.params.PipelineParams.
    federated_config`): model, strategy, rounds (a maximum when ``patience`` > 0), threshold calibration,
    screening, privacy; ``inputs`` the model inputs and healthy period; ``partition`` / ``alpha`` how the healthy rows
    are split into ``config.num_clients`` clients ('natural': one per site, the count comes from the data).
    ``warm_start``: round 1 starts from the weights of the dataset's champion (``latest``) when its inputs and
    architecture match this run's (fine-tuning), else from the seed's. ``centralized_baseline`` off skips the
    centralized baseline (the nightly deployment: it measures the cost of federation, not needed every night); the
    result then says so. ``healthy_file``: the healthy rows chosen by a policy (:mod:`bearing_core.healthy`) instead
    of the healthy period of ``inputs``.

    With ``alarms``, the threshold is calibrated on the alarm rule's statistic (see
    :func:`bearing_core.alarms.window_statistic`) instead of single snapshots. ``model_dir`` defaults to
    ``data/models/<dataset>/<UTC timestamp>-<hash>`` (in the dataset's registry,
    unpublished until :func:`tasks.registry.publish_task` publishes it in place). ``fail_client`` makes that
    client raise in round 1 (to exercise fault tolerance). Returns paths, hashes and final metrics.
    """
    update: dict[str, Any] = {"warm_start": _champion(dataset_dir) if warm_start else ""}
    if fail_client is not None:
        update["fault"] = FaultInjection(partition_id=fail_client, round=1)
    if alarms is not None:
        update.update(
            calibrate_persistence_h=alarms.persistence_h,
            calibrate_fraction=alarms.fraction,
            calibrate_warmup_h=alarms.warmup_h,
        )
    cfg = config.model_copy(update=update)
    clients = cfg.num_clients
    params = partition_params(partition, clients, alpha)
    left_out: list[str] = []
    if partition == "natural":  # one client per site: the count comes from the data
        clients, natural, left_out = natural_clients(dataset_dir, healthy_file)
        params.update(natural)
        if left_out:
            get_run_logger().warning(
                "sites left out of this training (no healthy row: every bearing in alarm or "
                "outside the healthy window): %s",
                ", ".join(left_out),
            )
        cfg = cfg.model_copy(update={"num_clients": clients})
    parts = partition_task(
        dataset_dir, partition, clients, cfg.seed, inputs.model_dump(mode="json"), params, healthy_file=healthy_file
    )
    registry = DataPaths().models_root / dataset_name(dataset_dir)
    target = model_dir or str(registry / model_version(parts["sha256"], cfg))
    cfg_dict = cfg.model_dump(mode="json")
    federated = train_federated_task(
        parts["path"], parts["sha256"], target, cfg_dict, SimulationResources().model_dump(mode="json")
    )
    baseline = (
        train_centralized_task(parts["path"], parts["sha256"], federated["model_dir"], cfg_dict)
        if centralized_baseline
        else None
    )
    central = f"{baseline['final_eval_mse']:.6f}" if baseline else "skipped (centralized_baseline off)"

    metrics = pd.read_parquet(federated["metrics_path"])
    key = _artifact_key(f"train-{Path(dataset_dir).name}-{partition}-{cfg.strategy}")
    create_table_artifact(
        key=f"{key}-metrics",
        table=metrics.round(6).to_dict(orient="records"),
        description=f"Per-round metrics: clients, '{GLOBAL_CLIENT}' (weighted) and '{CENTRALIZED_CLIENT}' baseline",
    )
    summary = (
        f"# Federated training: {md.text(Path(dataset_dir).name)}\n\n"
        + md.table(
            ["", "value"],
            [
                ["partition", md.cell(f"{partition} ({clients} clients)")],
                ["sites left out (no healthy row)", md.cell(", ".join(left_out) or "none")],
                ["strategy", md.cell(cfg.strategy)],
                ["rounds x local epochs", f"{federated['rounds_run']} (at most {cfg.rounds}) x {cfg.local_epochs}"],
                ["why training stopped", md.cell(str(federated["stop_reason"]))],
                ["initial weights", md.cell(str(federated["warm_start"] or "from scratch (seeded)"))],
                ["final federated eval MSE", f"{federated['final_eval_mse']:.6f}"],
                ["final centralized eval MSE", md.cell(central)],
                [
                    "alarm threshold",
                    md.cell(
                        f"{federated['threshold']:.6g} ({federated['threshold_method']}, "
                        f"{federated['calibration_size']} healthy holdout rows, federated sketches)"
                    ),
                ],
                ["failed client replies", str(federated["failures"])],
                ["seconds", md.cell(", ".join(f"{k} {v:.1f}" for k, v in federated["timings_s"].items()))],
                ["model", md.code(relative(federated["model_dir"]))],
                ["metrics", md.code(relative(federated["metrics_path"]))],
            ],
        )
        + "\n"
    )
    create_markdown_artifact(key=f"{key}-summary", markdown=summary, description="Federated vs centralized")
    return {
        "manifest": parts["path"],
        "manifest_sha256": parts["sha256"],
        "model_dir": federated["model_dir"],
        "metrics_path": federated["metrics_path"],
        "weights_sha256": federated["weights_sha256"],
        "federated_eval_mse": federated["final_eval_mse"],
        "centralized_eval_mse": baseline["final_eval_mse"] if baseline else None,
        "rounds_run": federated["rounds_run"],
        "stop_reason": federated["stop_reason"],
        "warm_start": federated["warm_start"],
        "timings_s": federated["timings_s"],
        "failures": federated["failures"],
        "threshold": federated["threshold"],
        "clients": clients,
        "sites_left_out": left_out,
        "privacy": federated.get("privacy"),
    }
