"""Prefect flow: score a processed dataset with a calibrated model and publish the alarms as an artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from bearing_core.alarms import AlarmConfig
from bearing_core.config import DataPaths
from bearing_core.registry import dataset_name, resolve_model
from bearing_core.run_report import relative
from tasks.score import score_task


def _artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@flow(name="score", log_prints=True)
def score_flow(
    dataset_dir: str,
    model: str = "latest",
    alarms: AlarmConfig | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Score ``dataset_dir`` with ``model``: ``latest`` (the champion of this dataset), a published version name,
    or a model directory (see :func:`bearing_core.registry.resolve_model`); alarm when a site (a bearing, in the
    per-bearing layout) stays over the threshold for ``alarms.persistence_h`` hours, with a warm-up after stops (see
    :mod:`bearing_core.alarms`). Writes ``out`` (default ``<dataset_dir>/scores.parquet``) and publishes an
    ``alarms-<dataset>`` table artifact (one row per site). Returns the task's result (paths, hashes, counts, alarm
    summary).
    """
    model_dir = resolve_model(DataPaths().models_root, model, dataset=dataset_name(dataset_dir))
    alarms = alarms or AlarmConfig()
    result = score_task(dataset_dir, str(model_dir), alarms.model_dump(), out)
    name = _artifact_key(f"alarms-{dataset_dir.rstrip('/').split('/')[-1]}")
    create_table_artifact(
        key=name or "alarms",
        table=result["alarms"],
        description=(
            f"Alarms ({alarms.describe()}) of {relative(dataset_dir)} scored with "
            f"{relative(model_dir)}: "
            f"{result['alarm_snapshots']} alarm snapshots of {result['rows']}"
        ),
    )
    print(
        f"scores: {result['path']} ({result['n_scored']} scored, {result['n_reused']} reused, "
        f"{result['alarm_snapshots']} alarm snapshots)"
    )
    return result
