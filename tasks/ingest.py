"""Prefect task: raw IMS directory -> processed Parquet dataset (thin wrapper over bearing_core.ingest).

The cache key is the raw tree's fingerprint (path, size, mtime of every file) + the ingest settings + this task's
source, so a second run on an unchanged directory is served from cache while a new raw file or changed settings
re-run it. A cached result is only served while ``features.parquet`` on disk is still the one it describes (same
SHA-256): outputs deleted, or rewritten by an ingest of other raw content since (raw files changed, then restored
with their old mtimes), make the task run again (see :class:`IngestOutputsPolicy`). The core ingest is itself
incremental: when it does run, only new or changed files are parsed.

Retries (with backoff) cover what can clear by itself: transient I/O errors and another ingest holding the output
directory's lock. Bad settings or a missing raw directory fail at once with their message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.results import get_result_store
from prefect.states import State
from prefect.utilities.hashing import hash_objects

from bearing_core.config import IngestConfig
from bearing_core.fingerprint import sha256_file, sha256_files
from bearing_core.ingest import IngestError, IngestProgress, ingest_directory
from bearing_core.run_report import relative
from tasks.results import persisted
from tasks.retry import is_transient


def dataset_fingerprint(out_dir: str | Path) -> str:
    """Content hash of a processed dataset's tables (features, quarantine): what downstream caches key on."""
    out = Path(out_dir)
    return sha256_files([out / "features.parquet", out / "quarantine.parquet"])


@dataclass
class IngestOutputsPolicy(CachePolicy):
    """Key = raw fingerprint + settings + task source (``INPUTS + TASK_SOURCE``), served only while valid.

    A record is valid while the output's ``features.parquet`` has the SHA-256 it recorded. Prefect cannot delete
    a stale record, so the policy walks *generations* of the key (``key``, ``hash(key, 1)``, ...) and returns the
    first that is valid (a cache hit) or free (ingest and cache there): after outputs were lost or overwritten,
    one run re-ingests and the next is served from cache again.
    """

    max_generations: int = 100

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        base = (INPUTS + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if base is None:
            return None
        features = Path(inputs["out_dir"]) / "features.parquet"
        current = sha256_file(features) if features.is_file() else None
        store = get_result_store()
        for generation in range(self.max_generations):
            key = base if generation == 0 else hash_objects(base, generation, raise_on_failure=True)
            if not store.exists(key):
                return key
            try:
                if current is not None and store.read(key).result.get("features_sha256") == current:
                    return key
            except Exception:  # noqa: BLE001 - an unreadable record counts as stale
                continue
        return None


def retry_ingest(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry transient I/O errors and a lock held by another ingest of the same output directory."""
    return isinstance(state.data, IngestError) or is_transient(state.data)


@task(
    name="ingest",
    task_run_name="ingest",  # the same name on every run (no -xyz suffix)
    **persisted(IngestOutputsPolicy()),
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_ingest,
)
def ingest_task(
    raw_dir: str,
    out_dir: str,
    raw_fingerprint: str,
    workers: int | None = None,
    batch_size: int = 32,
    channels: int | None = None,
    follow_symlinks: bool = False,
) -> dict[str, Any]:
    """Ingest ``raw_dir`` into ``out_dir``; returns output paths and their content hashes (never DataFrames).

    ``raw_fingerprint`` is only part of the cache key (computed by the caller).
    """
    logger = get_run_logger()
    kwargs: dict[str, Any] = {
        "raw_dir": raw_dir,
        "out_dir": out_dir,
        "batch_size": batch_size,
        "channels": channels,
        "follow_symlinks": follow_symlinks,
    }
    if workers:
        kwargs["workers"] = workers
    cfg = IngestConfig(**kwargs)
    artifact_id = create_progress_artifact(progress=0.0, description=f"Ingesting {relative(raw_dir)}")

    last_pct = -1.0

    def on_progress(p: IngestProgress) -> None:
        nonlocal last_pct
        pct = 100.0 * p.files_done / max(p.files_total, 1)
        if pct - last_pct >= 5.0 or p.files_done == p.files_total:
            update_progress_artifact(artifact_id=artifact_id, progress=pct)
            last_pct = pct

    report = ingest_directory(cfg, progress=on_progress)
    update_progress_artifact(artifact_id=artifact_id, progress=100.0)
    logger.info("%s -> %s", report.summary_line(), relative(report.out_dir))
    features = Path(report.out_dir) / "features.parquet"
    return {
        "out_dir": str(report.out_dir),
        "summary": report.summary_line(),
        "ingested": report.ingested,
        "unchanged": report.unchanged,
        "quarantined": report.quarantined,
        "features": str(features),
        "features_sha256": sha256_file(features) if features.exists() else None,
        "dataset_sha256": dataset_fingerprint(report.out_dir),
    }
