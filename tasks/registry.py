"""Prefect tasks over bearing_core.registry: publish a trained model as a version, then champion/challenger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from bearing_core.registry import holdout_data, promote_if_better, publish_model


@task(name="publish-model", retries=1, retry_delay_seconds=5)
def publish_task(model_dir: str, manifest: str, manifest_sha256: str) -> dict[str, Any]:
    """Publish ``model_dir`` (weights, threshold, metrics) as a complete version with its MODEL_CARD.md.

    Idempotent: publishing the same weights again returns the existing version.
    """
    info = publish_model(model_dir, manifest, partition_manifest_sha256=manifest_sha256,
                         models_root=Path(model_dir).parent)
    get_run_logger().info("published model version %s", info.version)
    return info.model_dump(mode="json")


@task(name="promote-if-better", retries=1, retry_delay_seconds=5)
def promote_task(version_dir: str, manifest: str, tolerance: float = 0.0) -> dict[str, Any]:
    """Promote the version to ``latest`` unless it is worse than the champion on the same healthy holdout rows."""
    decision = promote_if_better(version_dir, holdout_data(manifest), tolerance=tolerance)
    get_run_logger().info("%s: %s", "promoted" if decision.promoted else "kept the champion", decision.reason)
    return decision.model_dump(mode="json")
