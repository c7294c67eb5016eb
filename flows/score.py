"""Prefect flow: score a processed dataset with a calibrated model and publish the alarms as an artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from bearing_core.config import DataPaths
from bearing_core.run_report import relative
from bearing_core.registry import dataset_name, resolve_model
from tasks.score import score_task


def _artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@flow(name="score", log_prints=True)
def score_flow(
    dataset_dir: str,
    model: str = "latest",
    k: int = 3,
    n: int = 3,
    out: str | None = None,
    warmup_h: float = 0.0,
) -> dict[str, Any]:
    """Score ``dataset_dir`` with ``model``: ``latest`` (the champion of this dataset), a published version name,
    or a model directory (see :func:`bearing_core.registry.resolve_model`); alarm when ``k`` of the last ``n``
    snapshots of a site exceed the threshold; with ``warmup_h`` > 0, snapshots in the first ``warmup_h`` hours
    after a stop of at least that long do not count (see :mod:`bearing_core.scoring`). Writes ``out`` (default
    ``<dataset_dir>/scores.parquet``) and publishes an ``alarms-<dataset>`` table artifact (one row per site).
    Returns the task's result (paths, hashes, counts, alarm summary).
    """
    model_dir = resolve_model(DataPaths().models_root, model, dataset=dataset_name(dataset_dir))
    result = score_task(dataset_dir, str(model_dir), k, n, out, warmup_h)
    name = _artifact_key(f"alarms-{dataset_dir.rstrip('/').split('/')[-1]}")
    create_table_artifact(
        key=name or "alarms",
        table=result["alarms"],
        description=(
            f"Alarms ({k} of the last {n} snapshots over threshold"
            f"{f', {warmup_h:g} h warm-up after stops' if warmup_h else ''}) of {relative(dataset_dir)} scored with "
            f"{relative(model_dir)}: "
            f"{result['alarm_snapshots']} alarm snapshots of {result['rows']}"
        ),
    )
    print(
        f"scores: {result['path']} ({result['n_scored']} scored, {result['n_reused']} reused, "
        f"{result['alarm_snapshots']} alarm snapshots)"
    )
    return result
