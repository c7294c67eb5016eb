"""Prefect tasks over bearing_core.registry: publish a trained model as a version, then champion/challenger.

Both are content-cached, so a re-run with nothing changed skips them like every other step:

* publish: key = the model directory + the models root + SHA-256 of its weights + the partition manifest's
  SHA-256 + task source; served only while the published version is still complete with those weights.
* promote: key = the version + its weights' SHA-256 + the holdout manifest's SHA-256 + tolerance + task
  source; served only while its dataset's ``latest`` still names the model the recorded decision left as
  champion (after a manual ``bearing models promote`` the decision is taken again).

A version goes to the registry of the dataset it was trained on (``<models_root>/<dataset>/<version>``, see
:mod:`bearing_core.registry`). Both hold the registry lock (``<models_root>/.registry.lock``) while they write,
so two runs at once never interleave a publication with a swap of a ``latest``. Only transient I/O errors are
retried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import CachePolicy, TaskSource
from prefect.context import TaskRunContext
from prefect.results import get_result_store
from prefect.utilities.hashing import hash_objects

from bearing_core.config import DataPaths
from bearing_core.fingerprint import sha256_file
from bearing_core.locking import REGISTRY_LOCK_FILE, exclusive_lock
from bearing_core.model_io import WEIGHTS_FILE
from bearing_core.registry import (
    COMPLETE_FILE,
    current_champion,
    holdout_data,
    is_complete,
    promote_if_better,
    publish_model,
)
from tasks.results import persisted
from tasks.retry import transient_io_error

REGISTRY_LOCK_TIMEOUT_S = 1800.0
"""How long a publication or promotion waits for another run's registry write (they take seconds)."""


def _served_or_recompute(key: str, still_valid: Any) -> str | None:
    """``key`` if no record exists yet or ``still_valid(record)`` holds; else None (run without caching)."""
    store = get_result_store()
    if not store.exists(key):
        return key
    try:
        if still_valid(store.read(key).result):
            return key
    except Exception:  # noqa: BLE001 - an unreadable record is as good as a stale one
        pass
    return None


@dataclass
class PublishedVersionPolicy(CachePolicy):
    """Key = model directory + models root + weights SHA-256 + manifest SHA-256 + task source; valid while the
    version is."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        try:
            model_dir = Path(inputs["model_dir"]).resolve()
            weights_sha = sha256_file(model_dir / WEIGHTS_FILE)
        except (KeyError, OSError):
            return None  # the task body raises the precise error
        source = TaskSource().compute_key(task_ctx, inputs, flow_parameters)
        models_root = Path(inputs.get("models_root") or DataPaths().models_root).resolve()
        key = hash_objects(
            str(model_dir), str(models_root), weights_sha, inputs["manifest_sha256"], source, raise_on_failure=True
        )

        def still_published(record: dict[str, Any]) -> bool:
            version = Path(record["path"])
            if not is_complete(version):
                return False
            files = json.loads((version / COMPLETE_FILE).read_text(encoding="utf-8")).get("files", {})
            return files.get(WEIGHTS_FILE) == weights_sha

        return _served_or_recompute(key, still_published)


@dataclass
class PromotionPolicy(CachePolicy):
    """Key = version + weights SHA-256 + manifest SHA-256 + tolerance + task source; valid while ``latest`` still
    names the champion the recorded decision left in place."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        try:
            version_dir = Path(inputs["version_dir"]).resolve()
            weights_sha = sha256_file(version_dir / WEIGHTS_FILE)
            manifest_sha = sha256_file(inputs["manifest"])
        except (KeyError, OSError):
            return None
        source = TaskSource().compute_key(task_ctx, inputs, flow_parameters)
        key = hash_objects(
            str(version_dir),
            weights_sha,
            manifest_sha,
            float(inputs.get("tolerance", 0.0)),
            source,
            raise_on_failure=True,
        )

        def champion_unchanged(record: dict[str, Any]) -> bool:
            expected = record["challenger"] if record["promoted"] else record["champion"]
            return current_champion(version_dir.parent.parent, version_dir.parent.name) == expected

        return _served_or_recompute(key, champion_unchanged)


@task(
    name="publish-model",
    task_run_name="publish-model",  # the same name on every run (no -xyz suffix)
    **persisted(PublishedVersionPolicy()),
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=transient_io_error,
)
def publish_task(model_dir: str, manifest: str, manifest_sha256: str, models_root: str | None = None) -> dict[str, Any]:
    """Publish ``model_dir`` (weights, threshold, metrics) as a complete version with its MODEL_CARD.md, in the
    registry of the dataset ``manifest`` partitions (``models_root``, default ``data/models``, ``/<dataset>``).

    Idempotent: publishing the same weights again returns the existing version.
    """
    models_root = Path(models_root) if models_root is not None else DataPaths().models_root
    with exclusive_lock(models_root / REGISTRY_LOCK_FILE, timeout_s=REGISTRY_LOCK_TIMEOUT_S):
        info = publish_model(model_dir, manifest, partition_manifest_sha256=manifest_sha256, models_root=models_root)
    get_run_logger().info("published model version %s of dataset %s", info.version, info.dataset)
    return info.model_dump(mode="json")


@task(
    name="promote-if-better",
    task_run_name="promote-if-better",  # the same name on every run (no -xyz suffix)
    **persisted(PromotionPolicy()),
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=transient_io_error,
)
def promote_task(version_dir: str, manifest: str, tolerance: float = 0.0) -> dict[str, Any]:
    """Promote the version (``<models_root>/<dataset>/<version>``) to its dataset's ``latest`` unless it is worse
    than that dataset's champion on the same healthy holdout rows."""
    eval_data = holdout_data(manifest)
    models_root = Path(version_dir).resolve().parent.parent
    with exclusive_lock(models_root / REGISTRY_LOCK_FILE, timeout_s=REGISTRY_LOCK_TIMEOUT_S):
        decision = promote_if_better(version_dir, eval_data, tolerance=tolerance)
    get_run_logger().info("%s: %s", "promoted" if decision.promoted else "kept the champion", decision.reason)
    return decision.model_dump(mode="json")
