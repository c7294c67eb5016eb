"""Prefect task: one experiment of a grid (:func:`bearing_core.experiments.run_experiment`), content-cached.

The flow first writes the grid's evaluation split to ``<out>/split/`` (:func:`write_split`: T and E as Parquet and
a ``manifest.json`` holding their SHA-256s and those of the other data the experiments read: the dataset's
features / quarantine tables and the ground truth). Each experiment is then one run of :func:`experiment_task`,
cached with the training tasks' :class:`~tasks.train.TrainedModelPolicy`: key = the split manifest's SHA-256 +
the experiment's parameters (the grid's recipe with this experiment's spec only, and the output directory) + the
task's source. A re-run on unchanged data is served from the cache; changing one experiment, the recipe or the
data re-runs only what changed. A cached result is only served while its model directory is complete.

Like every task it returns paths and hashes: the :class:`~bearing_core.experiments.ExperimentResult` is written
beside the model (``experiment.json`` + Parquet tables, :func:`save_experiment_result`) and read back by the flow
(:func:`load_experiment_result`, which refuses files changed since they were recorded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.logging import get_run_logger

from bearing_core.experiments import (
    EvaluationSplit,
    ExperimentResult,
    ExperimentSpec,
    GridConfig,
    run_experiment,
)
from bearing_core.federated.logs import flower_log_to
from bearing_core.fingerprint import sha256_file, sha256_files
from bearing_core.inputs import FEATURES_FILE, QUARANTINE_FILE
from bearing_core.io import write_json_atomic, write_parquet_atomic
from bearing_core.model_io import METRICS_FILE
from tasks.results import persisted
from tasks.train import TrainedModelPolicy, retry_on_transient

SPLIT_MANIFEST = "manifest.json"
RESULT_FILE = "experiment.json"
_POSITION = "_position"  # the rows' positions in the healthy series (EvaluationSplit.*_position), stored per row


def write_split(split: EvaluationSplit, split_dir: Path) -> Path:
    """Write ``split`` to ``split_dir`` (``train``/``eval``/``faulty`` Parquet + manifest); returns the manifest.

    Same split, same bytes: the manifest's SHA-256 is the content key of every experiment on this split.
    """
    tables = {
        "train": split.train.assign(**{_POSITION: split.train_position}),
        "eval": split.eval.assign(**{_POSITION: split.eval_position}),
    }
    if split.faulty is not None:
        tables["faulty"] = split.faulty
    files = {
        name: sha256_file(write_parquet_atomic(split_dir / f"{name}.parquet", frame)) for name, frame in tables.items()
    }
    sources: dict[str, str] = {}
    if split.dataset_dir is not None:  # detection scores every snapshot of the dataset, not only T and E
        sources["dataset"] = sha256_files(Path(split.dataset_dir) / f for f in (FEATURES_FILE, QUARANTINE_FILE))
    if split.ground_truth is not None:
        sources["ground_truth"] = sha256_file(split.ground_truth)
    manifest = {
        "columns": list(split.columns),
        "description": split.description,
        "files": files,
        "sources": sources,
        "dataset_dir": None if split.dataset_dir is None else str(Path(split.dataset_dir).resolve()),
        "ground_truth": None if split.ground_truth is None else str(Path(split.ground_truth).resolve()),
    }
    return write_json_atomic(split_dir / SPLIT_MANIFEST, manifest)


def _checked(path: Path, sha256: str, what: str) -> Path:
    """``path`` if it still has the recorded SHA-256; ``ValueError`` (changed) or ``FileNotFoundError`` otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing")
    if sha256_file(path) != sha256:
        raise ValueError(f"{what} {path} changed since it was recorded (sha256 mismatch)")
    return path


def read_split(manifest_path: str | Path, manifest_sha256: str) -> EvaluationSplit:
    """The split written by :func:`write_split`, after checking the manifest and every table against their hashes."""
    manifest_path = _checked(Path(manifest_path), manifest_sha256, "split manifest")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    frames = {
        name: pd.read_parquet(_checked(manifest_path.parent / f"{name}.parquet", sha, "split table"))
        for name, sha in manifest["files"].items()
    }
    train, evaluation = frames["train"], frames["eval"]
    return EvaluationSplit(
        train=train.drop(columns=_POSITION),
        eval=evaluation.drop(columns=_POSITION),
        columns=manifest["columns"],
        description=manifest["description"],
        train_position=train[_POSITION].to_numpy(),
        eval_position=evaluation[_POSITION].to_numpy(),
        dataset_dir=None if manifest["dataset_dir"] is None else Path(manifest["dataset_dir"]),
        ground_truth=None if manifest["ground_truth"] is None else Path(manifest["ground_truth"]),
        faulty=frames.get("faulty"),
    )


def save_experiment_result(result: ExperimentResult) -> Path:
    """Write ``result`` into its model directory: per-round ``metrics.parquet`` (the centralized baseline writes
    none of its own), ``experiment_*.parquet`` tables and ``experiment.json`` (scalars + the tables' SHA-256s)."""
    errors = pd.concat(
        [
            pd.DataFrame({"split": "train", "mse": result.train_errors}),
            pd.DataFrame({"split": "eval", "mse": result.eval_errors}),
        ],
        ignore_index=True,
    )
    tables = {
        METRICS_FILE: result.metrics,
        "experiment_errors.parquet": errors,
        "experiment_clients.parquet": result.clients,
        "experiment_detection.parquet": result.detection,
        "experiment_scores.parquet": result.scores,
    }
    files = {
        name: sha256_file(write_parquet_atomic(result.model_dir / name, frame))
        for name, frame in tables.items()
        if frame is not None
    }
    record = {
        "spec": result.spec.model_dump(mode="json"),
        "clients_dir": str(result.clients_dir),
        "wall_s": result.wall_s,
        "threshold": result.threshold,
        "failures": result.failures,
        "files": files,
    }
    return write_json_atomic(result.model_dir / RESULT_FILE, record)


def load_experiment_result(record_path: str | Path, record_sha256: str) -> ExperimentResult:
    """The result saved by :func:`save_experiment_result`; refuses any file changed or deleted since."""
    record_path = _checked(Path(record_path), record_sha256, "experiment record")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    model_dir = record_path.parent
    tables = {
        name: pd.read_parquet(_checked(model_dir / name, sha, "experiment table"))
        for name, sha in record["files"].items()
    }
    errors = tables["experiment_errors.parquet"]
    return ExperimentResult(
        spec=ExperimentSpec.model_validate(record["spec"]),
        metrics=tables[METRICS_FILE],
        model_dir=model_dir,
        clients_dir=Path(record["clients_dir"]),
        wall_s=float(record["wall_s"]),
        threshold=float(record["threshold"]),
        train_errors=errors.loc[errors["split"] == "train", "mse"].to_numpy(),
        eval_errors=errors.loc[errors["split"] == "eval", "mse"].to_numpy(),
        clients=tables["experiment_clients.parquet"],
        failures=list(record["failures"]),
        detection=tables.get("experiment_detection.parquet"),
        scores=tables.get("experiment_scores.parquet"),
    )


@task(
    name="experiment",
    task_run_name="experiment {name}",
    **persisted(TrainedModelPolicy()),
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_transient,
)
def experiment_task(name: str, manifest_path: str, manifest_sha256: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run experiment ``name`` on the split of ``manifest_path`` and save its result beside its model.

    ``cfg`` = ``{"grid": GridConfig holding only this experiment (JSON), "work_dir": output directory}``: the
    experiment's model goes to ``work_dir/models/<name>``, its client files to ``work_dir/clients/<name>``.
    Returns the model directory and the result record's path and SHA-256 (for :func:`load_experiment_result`).
    """
    grid = GridConfig.model_validate(cfg["grid"])
    if [e.name for e in grid.experiments] != [name]:
        raise ValueError(f"cfg['grid'] must hold exactly experiment {name!r}, got {[e.name for e in grid.experiments]}")
    logger = get_run_logger()
    with flower_log_to(logger.log):  # Flower's log once, one line a round (bearing_core.federated.logs)
        result = run_experiment(grid.experiments[0], grid, read_split(manifest_path, manifest_sha256), cfg["work_dir"])
    record = save_experiment_result(result)
    logger.info(
        "%s: final eval MSE %.6g, threshold %.6g, %.1f s", name, result.final_eval_mse, result.threshold, result.wall_s
    )
    return {
        "name": name,
        "model_dir": str(result.model_dir),
        "record": str(record),
        "record_sha256": sha256_file(record),
    }
